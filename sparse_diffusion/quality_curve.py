"""Quality against speed: sweep density, dense warm-up and quality levers on fixed prompts and seeds.

Each point of the sweep is one `SparseAttentionConfig` (the base config with a few fields replaced). Every prompt
is run once dense (through the same hooks with `dense_steps` = all steps, so attention time is measured the same
way) and once per point with the same seed; PSNR/SSIM compare each sparse video with its dense video (float frames
in [0, 1], `metrics.compare_videos`), and speed-ups are dense wall time / sparse wall time measured in the same
process. Figures are means over the prompts. `plot_curve` draws PSNR against attention density and against the
end-to-end speed-up (matplotlib).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .api import accelerate_pipeline
from .config import SparseAttentionConfig
from .metrics import compare_videos
from .runs import generate


logger = logging.getLogger(__name__)

#: (label, config fields replaced on top of the base config): the warm-up x top-k grid (with the default LSE-driven
#: re-planning), then levers around warm-up 40%: re-planning off, complement caching, token tiles, dense first and
#: last layers, the mass policy and a longer warm-up.
_TOPK = {"policy": "topk"}
_FIXED = {"refresh_threshold": 0.0}  # the mask built at the end of the warm-up serves every later step
DEFAULT_POINTS: list[tuple[str, dict]] = [
    *[
        (f"warm-up {int(ds * 100)}%, top-k {ratio:.2f}", {"dense_steps": ds, **_TOPK, "topk_ratio": ratio})
        for ds in (0.1, 0.25, 0.4)
        for ratio in (0.1, 0.2, 0.3, 0.45)
    ],
    *[
        (
            f"warm-up 40%, top-k {ratio:.2f}, no re-planning",
            {"dense_steps": 0.4, **_TOPK, "topk_ratio": ratio, **_FIXED},
        )
        for ratio in (0.3, 0.45)
    ],
    *[
        (
            f"warm-up 40%, top-k {ratio:.2f}, complement cache, no re-planning",
            {"dense_steps": 0.4, **_TOPK, "topk_ratio": ratio, "cache_complement": True, **_FIXED},
        )
        for ratio in (0.3, 0.45)
    ],
    (
        "warm-up 40%, top-k 0.30, token tiles (2,8,8)",
        {"dense_steps": 0.4, **_TOPK, "topk_ratio": 0.3, "token_tile": (2, 8, 8)},
    ),
    (
        "warm-up 40%, top-k 0.30, dense first+last layer",
        {"dense_steps": 0.4, **_TOPK, "topk_ratio": 0.3, "dense_layers": (0, -1)},
    ),
    *[
        (f"warm-up 40%, mass {thr:.2f}", {"dense_steps": 0.4, "policy": "mass", "mass_threshold": thr})
        for thr in (0.9, 0.95)
    ],
    ("warm-up 50%, top-k 0.30", {"dense_steps": 0.5, **_TOPK, "topk_ratio": 0.3}),
    # the demo's config (cli.DEMO_CONFIG: warm-up 50%, top-k 0.40, 64-token blocks) and its neighbours, all with the
    # mask fixed and complement caching
    (
        "warm-up 40%, top-k 0.40, complement cache, no re-planning",
        {"dense_steps": 0.4, **_TOPK, "topk_ratio": 0.4, "cache_complement": True, **_FIXED},
    ),
    (
        "warm-up 40%, top-k 0.40, complement cache, token tiles, no re-planning",
        {"dense_steps": 0.4, **_TOPK, "topk_ratio": 0.4, "cache_complement": True, "token_tile": (2, 8, 8), **_FIXED},
    ),
    (
        "warm-up 40%, mass 0.80, complement cache, no re-planning",
        {"dense_steps": 0.4, "policy": "mass", "mass_threshold": 0.8, "cache_complement": True, **_FIXED},
    ),
    (
        "warm-up 50%, top-k 0.30, complement cache, no re-planning",
        {"dense_steps": 0.5, **_TOPK, "topk_ratio": 0.3, "cache_complement": True, **_FIXED},
    ),
    (
        "warm-up 50%, top-k 0.40, complement cache, no re-planning",
        {"dense_steps": 0.5, **_TOPK, "topk_ratio": 0.4, "cache_complement": True, **_FIXED},
    ),
    (
        "warm-up 50%, top-k 0.40, complement cache, token tiles, no re-planning",
        {"dense_steps": 0.5, **_TOPK, "topk_ratio": 0.4, "cache_complement": True, "token_tile": (2, 8, 8), **_FIXED},
    ),
    *[
        (
            f"warm-up {int(ds * 100)}%, top-k {ratio:.2f}, complement cache, 64-token blocks{tiles}, no re-planning",
            {
                "dense_steps": ds,
                **_TOPK,
                "topk_ratio": ratio,
                "cache_complement": True,
                "block_size": 64,
                **_FIXED,
                **({"token_tile": (1, 8, 8)} if tiles else {}),
            },
        )
        for ds, ratio, tiles in (
            (0.5, 0.4, ""),
            (0.5, 0.4, " + tiles (1,8,8)"),
            (0.5, 0.45, " + tiles (1,8,8)"),
            (0.6, 0.4, " + tiles (1,8,8)"),
        )
    ],
]

QUICK_POINTS = [
    p
    for p in DEFAULT_POINTS
    if p[0]
    in (
        "warm-up 25%, top-k 0.20",
        "warm-up 40%, top-k 0.30",
        "warm-up 40%, mass 0.90",
        "warm-up 50%, top-k 0.40, complement cache, 64-token blocks, no re-planning",  # cli.DEMO_CONFIG
    )
]


def run_quality_curve(
    pipe,
    calls: list[dict],
    seeds: list[int],
    points: list[tuple[str, dict]] | None = None,
    base: SparseAttentionConfig | None = None,
    progress: bool = True,
) -> dict:
    """Dense and sparse runs of `pipe` for every (call kwargs, seed) and every point.

    Args:
        pipe: a diffusers pipeline (any `accelerate_pipeline` supports).
        calls: keyword arguments for `pipe(...)` (prompt, sizes, `num_inference_steps`, `output_type="np"`).
        seeds: one seed per call.
        points: (label, config overrides); `DEFAULT_POINTS` when None.
        base: the config the overrides apply to (defaults: `SparseAttentionConfig()`).

    Returns:
        `{"dense": [...per call: wall_s, attention_s], "points": [{label, config, density, sparse_density, kept_mass,
        mean_psnr, min_psnr, mean_ssim, wall_s, speedup, attention_speedup, sparse_steps}]}`; PSNR in dB. `density`
        is the report's `effective_density` (every call after the warm-up, full-attention calls such as re-plans
        counting 1), `sparse_density` its `density` (sparse calls only).
    """
    from tqdm.auto import tqdm

    points = DEFAULT_POINTS if points is None else points
    base = base or SparseAttentionConfig()
    bar = tqdm(total=len(calls) * (len(points) + 1), desc="quality curve", disable=not progress)
    dense = []
    for kwargs, seed in zip(calls, seeds):
        with accelerate_pipeline(pipe, base.replace(dense_steps=kwargs["num_inference_steps"])) as handle:
            frames, wall = generate(pipe, kwargs, seed)
            attn = sum(handle.report()["attention_time_s"].values())
        dense.append({"frames": frames, "wall_s": wall, "attention_s": attn})
        bar.update()
    rows = []
    for label, overrides in points:
        config = base.replace(**overrides)
        per_call = []
        for (kwargs, seed), ref in zip(zip(calls, seeds), dense):
            with accelerate_pipeline(pipe, config) as handle:
                frames, wall = generate(pipe, kwargs, seed)
                report = handle.report()
            quality = compare_videos(ref["frames"], frames, data_range=1.0)
            attn = sum(report["attention_time_s"].values())
            per_call.append(
                {
                    "psnr": quality["mean_psnr"],
                    "ssim": quality["mean_ssim"],
                    "density": report["effective_density"],
                    "sparse_density": report["density"],
                    "kept_mass": report["kept_mass"],
                    "wall_s": wall,
                    "speedup": ref["wall_s"] / wall,
                    "attention_speedup": ref["attention_s"] / attn if attn else None,
                    "sparse_steps": report["sparse_steps"],
                    "complement_cache_mib": report["complement_cache_mib"],
                }
            )
            bar.update()

        rows.append(
            {
                "label": label,
                "config": config.to_dict(),
                "overrides": _jsonable(overrides),
                "density": _mean(per_call, "density"),
                "sparse_density": _mean(per_call, "sparse_density"),
                "kept_mass": _mean(per_call, "kept_mass"),
                "mean_psnr": _mean(per_call, "psnr"),
                "min_psnr": round(min(c["psnr"] for c in per_call), 4),
                "mean_ssim": _mean(per_call, "ssim"),
                "wall_s": _mean(per_call, "wall_s"),
                "speedup": _mean(per_call, "speedup"),
                "attention_speedup": _mean(per_call, "attention_speedup"),
                "sparse_steps": per_call[0]["sparse_steps"],
                "complement_cache_mib": _mean(per_call, "complement_cache_mib"),
            }
        )
        logger.info("%s: %s", label, rows[-1])
    bar.close()
    return {
        "dense": [{"wall_s": round(d["wall_s"], 3), "attention_s": round(d["attention_s"], 3)} for d in dense],
        "points": rows,
    }


def _mean(per_call: list[dict], key: str) -> float | None:
    values = [c[key] for c in per_call if c[key] is not None]
    return round(float(np.mean(values)), 4) if values else None


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=list))


def plot_curve(result: dict, path: str | Path, title: str = "") -> Path:
    """PNG with PSNR vs attention density and PSNR vs end-to-end speed-up, one marker per point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    groups: dict[str, list[dict]] = {}
    for row in result["points"]:
        if row["density"] is None:
            continue
        key = (
            row["label"].split(",")[0] if "top-k" in row["label"] and row["label"].count(",") == 1 else "levers / mass"
        )
        groups.setdefault(key, []).append(row)
    for name, rows in groups.items():
        style = "o-" if name != "levers / mass" else "s"
        rows = sorted(rows, key=lambda r: r["density"])
        axes[0].plot([r["density"] for r in rows], [r["mean_psnr"] for r in rows], style, label=name)
        axes[1].plot([r["speedup"] for r in rows], [r["mean_psnr"] for r in rows], style.replace("-", ""), label=name)
    axes[0].set_xlabel("attention density after warm-up (kept key blocks / all; re-plans count 1)")
    axes[1].set_xlabel("end-to-end speed-up vs dense (same process)")
    for ax in axes:
        ax.set_ylabel("mean PSNR vs dense run (dB)")
        ax.grid(alpha=0.3)
        ax.axhline(30, color="gray", lw=0.8, ls="--")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
