"""Console and file output shared by the commands: the paired-run summary, JSON results, the CPU kernel notice."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path


def fmt_db(x: float) -> str:
    """A PSNR as "12.34 dB", or "inf (identical)"."""
    return "inf (identical)" if x == float("inf") else f"{x:.2f} dB"


def print_paired(report: dict, out: Path) -> None:
    """Summary of a dense vs sparse run (`runs.paired_run` report written to `out`)."""
    q, sparse = report["quality"], report["sparse_report"]
    print(f"model: {report['model']} (weights: {report['weights']})")
    reasons = dense_reasons(sparse)
    print(
        f"steps: {report['dense_steps']} dense warm-up + {report['sparse_steps']} sparse"
        + (f" + {sparse['dense_fallback_steps']} ran dense" if sparse["dense_fallback_steps"] else "")
    )
    if reasons:
        print(f"attention calls run dense after the warm-up: {reasons}")
    print(
        f"quality vs dense: PSNR {fmt_db(q['mean_psnr'])}, SSIM {q['mean_ssim']:.4f} (float frames, before encoding)"
    )
    density, planned = report["density"], sparse["planned_density"]
    if density is not None:
        effective = report["effective_density"]
        print(
            f"attention density {density:.3f} over sparse calls, {effective:.3f} over all calls after the dense "
            "warm-up (calls that ran full attention, such as re-plans, count as 1)"
        )
    else:
        print(f"attention density n/a: no sparse call (planned density {planned}; {reasons or 'no plan'})")
    ratio = f"{report['end_to_end_speedup']:.2f}x" if report["sparse_steps"] else "no step ran sparse"
    print(
        f"wall time: dense {report['wall_time_s']['dense']:.2f} s, sparse {report['wall_time_s']['sparse']:.2f} s "
        f"({ratio}); attention alone: dense {report['attention_time_s']['dense']:.2f} s, "
        f"sparse {report['attention_time_s']['sparse']:.2f} s ({report['timing_note']})"
    )
    if "judged" in report:
        from ..testing.shapes import MAX_SPREAD, MAX_STEP

        for name, j in report["judged"].items():
            print(
                f"{name} clip vs its prompt: {j['colour']} colour match {j['colour_match']:.2f}, moved "
                f"{j['moved_along']:+.2f} of the frame {j['direction']} ({j['moved_across']:+.2f} across): "
                + ("follows it" if j["follows_prompt"] else "does not follow it")
                + (
                    f" (jumps {j['largest_step']:.2f} of the frame in one step)"
                    if j.get("largest_step", 0) > MAX_STEP
                    else ""
                )
                + (
                    f" (spread {j['spread']:.1f}x a single disc: more than one object)"
                    if j.get("spread", 0) > MAX_SPREAD
                    else ""
                )
            )
    print("wrote " + ", ".join(str(out / name) for name in report["files"]))


def dense_reasons(sparse: dict) -> str:
    """Re-plans and fallbacks of a sparse report as "N x reason" (attention calls, all layers), "" when none."""
    fallbacks: Counter[str] = Counter()
    for item in sparse["fallbacks"]:
        fallbacks[item["reason"]] += item["count"]
    parts = [f"{n} re-planned ({reason})" for reason, n in sorted(sparse["replans"].items())]
    parts += [f"{n} fell back ({reason})" for reason, n in sorted(fallbacks.items())]
    return "; ".join(parts)


def write_json(path: str | None, result: dict) -> None:
    """Write `result` to `path` (parent folders created); nothing when `path` is empty."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2))


def prepare_cpu_kernel() -> None:
    """Load (or build) the native CPU kernel; call after the arguments are validated."""
    from ..kernels.cpu import launch as cpu_kernel

    if not cpu_kernel.is_built():
        print("preparing the native CPU kernel (compiled on first use, about 30 s; cached afterwards)", flush=True)
    error = cpu_kernel.build_error()
    if error:
        print(f"note: {error}; the gather backend serves instead", flush=True)
