"""Image and video quality metrics: PSNR and SSIM, computed in float64.

These compare a sparse run with the dense run of the same seed. PSNR is the textbook
``10 * log10(data_range**2 / MSE)`` in dB over all pixels and channels; SSIM is
``skimage.metrics.structural_similarity`` (Wang et al. 2004, "Image quality assessment: from error
visibility to structural similarity") with its default 7x7 uniform window, averaged over channels.

``data_range`` is the span of the pixel values: 255 for uint8 frames, 1.0 for float frames in
[0, 1]. ``data_range=None`` infers it from the dtype (uint8 -> 255, other unsigned ints -> their
maximum, floats -> 1.0); both inputs must then have the same dtype.

Identical inputs have PSNR ``float("inf")``. ``json.dumps`` writes it as ``Infinity``, which
Python's ``json.loads`` reads back; strict JSON parsers (e.g. JavaScript's ``JSON.parse``) reject it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from sparse_diffusion.errors import SparseDiffusionError


logger = logging.getLogger(__name__)


def _as_array(x: Any, name: str, where: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise SparseDiffusionError(
            f"{where}: {name} has dtype {arr.dtype}; pass uint8 in [0, 255] or float in [0, 1]."
        )
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise SparseDiffusionError(
            f"{where}: {name} holds {int((~np.isfinite(arr)).sum())} non-finite values (NaN/inf); "
            "a diverged run cannot be scored, check the generation first."
        )
    return arr


def _resolve_range(a: np.ndarray, b: np.ndarray, data_range: float | None, where: str) -> float:
    if data_range is None:
        if a.dtype != b.dtype:
            raise SparseDiffusionError(
                f"{where}: cannot infer data_range from mixed dtypes {a.dtype} and {b.dtype}; convert both to "
                "one dtype or pass data_range (255.0 for uint8 values, 1.0 for [0, 1] floats)."
            )
        if np.issubdtype(a.dtype, np.unsignedinteger):
            return float(np.iinfo(a.dtype).max)
        if np.issubdtype(a.dtype, np.floating):
            return 1.0
        raise SparseDiffusionError(
            f"{where}: cannot infer data_range for dtype {a.dtype}; pass data_range explicitly."
        )
    if (
        isinstance(data_range, bool)
        or not isinstance(data_range, (int, float))
        or not (math.isfinite(data_range) and data_range > 0)
    ):
        raise SparseDiffusionError(
            f"{where}: data_range={data_range!r} must be a positive finite number (255.0 for uint8, 1.0 for "
            "[0, 1] floats) or None to infer it from the dtype."
        )
    return float(data_range)


def _pair(a: Any, b: Any, data_range: float | None, where: str) -> tuple[np.ndarray, np.ndarray, float]:
    a = _as_array(a, "a", where)
    b = _as_array(b, "b", where)
    if a.shape != b.shape:
        raise SparseDiffusionError(
            f"{where}: shapes differ, a is {tuple(a.shape)} and b is {tuple(b.shape)}; compare frames of one size "
            "(same height, width, channels and frame count)."
        )
    if a.size == 0:
        raise SparseDiffusionError(f"{where}: inputs are empty (shape {tuple(a.shape)}).")
    rng = _resolve_range(a, b, data_range, where)
    return a.astype(np.float64), b.astype(np.float64), rng


def _psnr64(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    mse = float(np.mean(np.square(a - b)))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * math.log10(data_range * data_range / mse))


def psnr(a: Any, b: Any, data_range: float | None = 255.0) -> float:
    """Peak signal-to-noise ratio in dB between two arrays of one shape.

    ``PSNR = 10 * log10(data_range**2 / mean((a - b)**2))`` over every element, in float64.

    Args:
        a, b: arrays of the same shape and any layout, uint8 or float (or torch tensors).
        data_range: value span, 255.0 (default, uint8) or 1.0 for [0, 1] floats; None infers it
            from the dtype.

    Returns:
        PSNR in dB; ``float("inf")`` when the inputs are identical.

    Raises:
        SparseDiffusionError: shapes differ, an input is empty, non-numeric or holds NaN/inf, or
            ``data_range`` is not positive.
    """
    a64, b64, rng = _pair(a, b, data_range, "psnr")
    return _psnr64(a64, b64, rng)


def _ssim64(a: np.ndarray, b: np.ndarray, data_range: float, where: str) -> float:
    from skimage.metrics import structural_similarity

    if a.ndim not in (2, 3):
        raise SparseDiffusionError(
            f"{where}: a frame has shape {tuple(a.shape)}; SSIM takes one frame [H, W, C] or [H, W]."
        )
    side = min(a.shape[0], a.shape[1])
    if side < 3:
        raise SparseDiffusionError(
            f"{where}: frame {a.shape[0]}x{a.shape[1]} is too small for SSIM (needs at least 3x3 pixels)."
        )
    win = 7 if side >= 7 else (side if side % 2 else side - 1)
    if win != 7:
        logger.debug("%s: %dx%d frame, SSIM window shrunk to %d", where, a.shape[0], a.shape[1], win)
    channel_axis = -1 if a.ndim == 3 else None
    value = structural_similarity(a, b, data_range=data_range, channel_axis=channel_axis, win_size=win)
    return float(value)


def ssim(a: Any, b: Any, data_range: float | None = 255.0) -> float:
    """Structural similarity of one frame, via ``skimage.metrics.structural_similarity``.

    Inputs are cast to float64. The 7x7 uniform window is skimage's default; for frames whose
    smaller side is below 7 px the window shrinks to the largest odd size <= min(H, W) (a 4x9
    frame uses 3x3), which makes values on tiny frames less comparable with larger ones.

    Args:
        a, b: one frame each, [H, W, C] (channels last, averaged) or [H, W], uint8 or float.
        data_range: 255.0 (default, uint8), 1.0 for [0, 1] floats, or None to infer from the dtype.

    Returns:
        Mean SSIM in [-1, 1]; 1.0 for identical frames.

    Raises:
        SparseDiffusionError: shapes differ, a frame is not 2-D/3-D or smaller than 3x3, an input
            holds NaN/inf, or ``data_range`` is not positive.
    """
    a64, b64, rng = _pair(a, b, data_range, "ssim")
    return _ssim64(a64, b64, rng, "ssim")


def compare_videos(a: Any, b: Any, *, data_range: float | None = None) -> dict[str, Any]:
    """Per-frame and mean PSNR/SSIM between two videos of one shape [F, H, W, C].

    Args:
        a, b: videos [F, H, W, C] (e.g. ``pipe(...).frames[0]`` of the dense and the sparse run,
            or ``media.read_frames`` output), uint8 in [0, 255] or float in [0, 1].
        data_range: value span; None (default) infers 255 for uint8 and 1.0 for floats.

    Returns:
        A JSON-friendly dict (``json.dumps`` writes inf as ``Infinity``):
        ``per_frame_psnr`` (list of float dB, inf for identical frames), ``per_frame_ssim`` (list of
        float), ``mean_psnr`` (mean over the frames that differ, i.e. the finite ones; inf only when
        every frame is identical), ``mean_ssim`` (mean over all frames), ``frames`` (F),
        ``data_range`` (the value used), ``identical_frames`` (count of inf-PSNR frames) and
        ``note`` (a sentence saying how the means were taken).

    Raises:
        SparseDiffusionError: the inputs are not 4-D, their shapes differ (both are named), they
            hold NaN/inf, or ``data_range`` cannot be inferred.
    """
    where = "compare_videos"
    a_arr = _as_array(a, "a", where)
    b_arr = _as_array(b, "b", where)
    for name, arr in (("a", a_arr), ("b", b_arr)):
        if arr.ndim != 4:
            raise SparseDiffusionError(
                f"{where}: {name} has shape {tuple(arr.shape)}; expected one video [F, H, W, C] "
                "(for a pipeline output use .frames[0])."
            )
    a64, b64, rng = _pair(a_arr, b_arr, data_range, where)
    per_psnr = [_psnr64(x, y, rng) for x, y in zip(a64, b64)]
    per_ssim = [_ssim64(x, y, rng, where) for x, y in zip(a64, b64)]
    finite = [p for p in per_psnr if math.isfinite(p)]
    identical = len(per_psnr) - len(finite)
    frames = len(per_psnr)
    if identical == frames:
        mean_psnr = float("inf")
        note = f"inputs identical: PSNR is inf for all {frames} frames"
    elif identical:
        mean_psnr = float(np.mean(finite))
        note = (
            f"{identical} of {frames} frames identical (PSNR inf); mean_psnr is over the {len(finite)} "
            "frames that differ"
        )
    else:
        mean_psnr = float(np.mean(finite))
        note = f"mean over all {frames} frames"
    return {
        "per_frame_psnr": per_psnr,
        "per_frame_ssim": per_ssim,
        "mean_psnr": mean_psnr,
        "mean_ssim": float(np.mean(per_ssim)),
        "frames": frames,
        "data_range": rng,
        "identical_frames": identical,
        "note": note,
    }
