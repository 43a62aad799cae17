"""Paired dense / sparse generations with the same seed: timing, quality metrics and the files the CLI writes."""

from __future__ import annotations

import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .api import accelerate_pipeline
from .config import SparseAttentionConfig
from .media import save_mask_grid, write_video
from .metrics import compare_videos


logger = logging.getLogger(__name__)

_MAX_MASK_PANELS = 16


def call_kwargs(pipe, *, prompt: str, steps: int, height: int | None, width: int | None, frames: int | None, **extra):
    """Keyword arguments for `pipe(...)`, passing only what its `__call__` accepts (image pipelines take no frames)."""
    accepted = inspect.signature(type(pipe).__call__).parameters
    wanted = dict(prompt=prompt, num_inference_steps=steps, height=height, width=width, num_frames=frames, **extra)
    kwargs = {k: v for k, v in wanted.items() if v is not None and k in accepted}
    kwargs["output_type"] = "np"
    return kwargs


def generate(pipe, kwargs: dict, seed: int) -> tuple[np.ndarray, float]:
    """One seeded call; returns frames float32 [F, H, W, 3] in [0, 1] (images as F=1) and wall seconds."""
    start = time.perf_counter()
    out = pipe(**kwargs, generator=torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - start
    frames = out.frames[0] if hasattr(out, "frames") else out.images
    frames = np.asarray(frames, dtype=np.float32)
    return (frames[None] if frames.ndim == 3 else frames), seconds


def write_frames(frames: np.ndarray, out_dir: Path, stem: str, fps: int) -> Path:
    """`<stem>.mp4` for a video, `<stem>.png` for a single image (F = 1)."""
    if frames.shape[0] == 1:
        import imageio.v3 as iio

        path = out_dir / f"{stem}.png"
        iio.imwrite(path, (np.clip(frames[0], 0, 1) * 255).round().astype(np.uint8))
        return path
    return write_video(frames, out_dir / f"{stem}.mp4", fps=fps)


def _call_record(kwargs: dict, frames: np.ndarray) -> dict:
    record = {k: v for k, v in kwargs.items() if isinstance(v, (str, int, float))}
    record["output_shape"] = list(frames.shape)  # [F, H, W, 3]: the size actually generated
    return record


TIMING_NOTE = "one run each; wall times on a shared CPU vary with machine load"


def mask_panels(masks: dict, limit: int = _MAX_MASK_PANELS) -> list[tuple[str, np.ndarray]]:
    """(name, bool [QB, KB]) for batch element 0 of each layer's heads, at most `limit` panels."""
    panels = []
    for layer, mask in masks.items():
        dense = mask.to_dense()[0]
        for head in range(dense.shape[0]):
            if len(panels) < limit:
                panels.append((f"{layer} head {head}", dense[head].numpy()))
    return panels


def paired_run(
    pipe,
    kwargs: dict,
    config: SparseAttentionConfig,
    seed: int,
    out_dir: Path,
    fps: int = 8,
    extra: dict | None = None,
    judge=None,
) -> dict:
    """Dense run, then sparse run with the same seed; writes dense/sparse videos, masks.png and report.json.

    The dense run goes through the same hooks with `dense_steps` = all steps (bit-identical to the untouched
    pipeline) so the attention time of both runs is measured the same way. `judge(frames) -> dict`, when given,
    scores each video on its own (e.g. whether it shows the prompt); the report keeps both under `judged`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = kwargs["num_inference_steps"]
    handle = accelerate_pipeline(pipe, config.replace(dense_steps=steps))
    logger.info("dense run (%d steps)", steps)
    dense, dense_s = generate(pipe, kwargs, seed)
    dense_report = handle.report()
    handle = accelerate_pipeline(pipe, config)
    logger.info("sparse run (%d steps)", steps)
    sparse, sparse_s = generate(pipe, kwargs, seed)
    sparse_report = handle.report()
    panels = mask_panels(handle.masks())
    handle.remove()

    files = [write_frames(dense, out_dir, "dense", fps).name, write_frames(sparse, out_dir, "sparse", fps).name]
    mask_names = save_mask_grid(panels, out_dir / "masks.png") if panels else []
    quality = compare_videos(dense, sparse, data_range=1.0)
    dense_attn = sum(dense_report["attention_time_s"].values())
    sparse_attn = sum(sparse_report["attention_time_s"].values())
    report = {
        "model": sparse_report["model"],
        "weights": sparse_report["weights"],
        **(extra or {}),
        "call": _call_record(kwargs, dense),
        "seed": seed,
        "files": files + (["masks.png"] if mask_names else []) + ["report.json"],
        "quality": {
            **{k: quality[k] for k in ("mean_psnr", "mean_ssim", "per_frame_psnr", "per_frame_ssim", "data_range")},
            "psnr_unit": "dB",
            "note": quality["note"] + "; computed on the float frames in [0, 1] before video encoding (PSNR of the "
            "decoded mp4 files, e.g. from `sparse-diffusion compare`, is lower: yuv420p halves colour resolution)",
        },
        "density": sparse_report["density"],
        "effective_density": sparse_report["effective_density"],
        "kept_mass": sparse_report["kept_mass"],
        "build_kept_mass": sparse_report["build_kept_mass"],
        "dense_steps": sparse_report["dense_steps"],
        "sparse_steps": sparse_report["sparse_steps"],
        "wall_time_s": {"dense": round(dense_s, 3), "sparse": round(sparse_s, 3)},
        "timing_note": TIMING_NOTE,
        "end_to_end_speedup": round(dense_s / sparse_s, 3),
        "attention_time_s": {"dense": round(dense_attn, 3), "sparse": round(sparse_attn, 3)},
        "attention_speedup": round(dense_attn / sparse_attn, 3) if sparse_attn else None,
        "mask_picture": {"file": "masks.png", "panels": mask_names},
        **({"judged": {"dense": judge(dense), "sparse": judge(sparse)}} if judge else {}),
        "config": config.to_dict(),
        "sparse_report": sparse_report,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def single_run(
    pipe,
    kwargs: dict,
    config: SparseAttentionConfig | None,
    seed: int,
    out_dir: Path,
    fps: int = 8,
    extra: dict | None = None,
) -> dict:
    """One run (sparse with `config`, or untouched dense when `config` is None); writes `video.mp4` (or
    `image.png`) and report.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    handle = accelerate_pipeline(pipe, config) if config is not None else None
    frames, seconds = generate(pipe, kwargs, seed)
    report: dict[str, Any] = {
        "mode": "sparse" if handle else "dense",
        "model": type(pipe.transformer).__name__,
        **(extra or {}),
        "seed": seed,
        "wall_time_s": round(seconds, 3),
        "timing_note": TIMING_NOTE,
        "call": _call_record(kwargs, frames),
    }
    if handle is not None:
        report["sparse_report"] = handle.report()
        handle.remove()
    path = write_frames(frames, out_dir, "image" if frames.shape[0] == 1 else "video", fps)
    report["output"] = path.name
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report
