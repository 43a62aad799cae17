"""Video and image reading and writing, and pictures of block-sparse masks.

Videos are written as H.264 (``libx264``, ``yuv420p``) with the ffmpeg binary shipped in the
``imageio-ffmpeg`` wheel, so no system ffmpeg is needed. Still images and GIFs go through
``imageio`` (Pillow plugin). Everything is returned as ``uint8`` RGB arrays.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sparse_diffusion.errors import SparseDiffusionError


logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
WRITE_VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_PANEL_MIN_PX = 128
_SEPARATOR_PX = 2
_SEPARATOR_GRAY = 128


def _to_rgb_uint8(frame: Any, where: str) -> np.ndarray:
    """One picture -> uint8 [H, W, 3]. Floats are taken as [0, 1] and clipped; gray/RGBA are converted."""
    if hasattr(frame, "convert") and hasattr(frame, "mode"):  # a PIL image (palette, gray, RGBA ...)
        frame = frame.convert("RGB")
    arr = np.asarray(frame)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise SparseDiffusionError(
            f"{where}: a frame has shape {tuple(arr.shape)}; expected [H, W, 3] (RGB), [H, W, 4] (RGBA) or [H, W]."
        )
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr.astype(np.uint8) * 255)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise SparseDiffusionError(
                f"{where}: a float frame holds {int((~np.isfinite(arr)).sum())} non-finite values; "
                "replace NaN/inf (e.g. np.nan_to_num) before writing."
            )
        return np.ascontiguousarray(np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8))
    if arr.dtype == np.uint16:
        return np.ascontiguousarray((arr.astype(np.uint32) * 255 // 65535).astype(np.uint8))
    raise SparseDiffusionError(
        f"{where}: frame dtype {arr.dtype} is not supported; pass uint8 in [0, 255] or float in [0, 1]."
    )


def _frames_to_array(frames: Any, where: str) -> np.ndarray:
    """Array [F, H, W, C] or a sequence of pictures -> uint8 [F, H, W, 3]."""
    if hasattr(frames, "detach"):  # a torch tensor
        frames = frames.detach().cpu().numpy()
    if isinstance(frames, np.ndarray):
        arr = np.asarray(frames)
        if arr.ndim == 5:
            raise SparseDiffusionError(
                f"{where}: got a batch of videos with shape {tuple(arr.shape)}; pass one video [F, H, W, 3], "
                "e.g. pipe(...).frames[0]."
            )
        if arr.ndim not in (3, 4):
            raise SparseDiffusionError(
                f"{where}: frames have shape {tuple(arr.shape)}; expected [F, H, W, 3] or a list of images."
            )
        frames = list(arr)
    if not isinstance(frames, (list, tuple)) or len(frames) == 0:
        raise SparseDiffusionError(
            f"{where}: got {type(frames).__name__} with no frames; pass a non-empty [F, H, W, 3] array or list."
        )
    out = [_to_rgb_uint8(f, where) for f in frames]
    first = out[0].shape
    for i, f in enumerate(out):
        if f.shape != first:
            raise SparseDiffusionError(
                f"{where}: frame {i} has shape {f.shape} but frame 0 has {first}; all frames must be one size."
            )
    return np.stack(out)


def write_video(frames: Any, path: str | Path, fps: float = 8, *, quality: float = 8.0) -> Path:
    """Writes frames as an H.264 video (libx264, yuv420p) and returns the path.

    Args:
        frames: one video as an array [F, H, W, 3] (also [F, H, W] gray or [F, H, W, 4] RGBA),
            either uint8 in [0, 255] or float in [0, 1] (clipped, rounded to uint8), or a list of
            PIL images / [H, W, 3] arrays of one size. ``pipe(...).frames[0]`` fits.
        path: ``.mp4`` (``.mov``/``.mkv`` also work). Parent folders are created.
        fps: frames per second, > 0.
        quality: 1 (worst) .. 10 (best); mapped by imageio-ffmpeg to ``crf = int((1 - q/10) * 51)``,
            so the default 8 is crf 10 (near visually lossless).

    yuv420p needs even width and height: an odd side is padded by repeating the last row/column,
    so the file (and ``read_frames``) is then one pixel larger on that side (logged at INFO).
    yuv420p also halves colour resolution: sharp edges between saturated colours come back at
    ~30 dB PSNR even at quality 10, so compute quality metrics on the arrays, not on decoded files.

    Raises:
        SparseDiffusionError: bad frames (shape, dtype, NaN, mixed sizes), suffix, fps or quality,
            or ffmpeg failing to write.
    """
    import imageio_ffmpeg

    path = Path(path)
    if path.suffix.lower() not in WRITE_VIDEO_SUFFIXES:
        raise SparseDiffusionError(
            f"write_video: path {str(path)!r} has suffix {path.suffix!r}; use one of {WRITE_VIDEO_SUFFIXES}."
        )
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise SparseDiffusionError(f"write_video: fps={fps!r} must be a positive number, e.g. fps=8.")
    if isinstance(quality, bool) or not isinstance(quality, (int, float)) or not 1 <= quality <= 10:
        raise SparseDiffusionError(f"write_video: quality={quality!r} must be a number in [1, 10], e.g. 8.")
    video = _frames_to_array(frames, "write_video")
    _, h, w, _ = video.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        logger.info("write_video: padding %dx%d frames to %dx%d for yuv420p", h, w, h + pad_h, w + pad_w)
        video = np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (video.shape[2], video.shape[1]),
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        fps=float(fps),
        quality=float(quality),
        codec="libx264",
        macro_block_size=1,
    )
    try:
        try:
            writer.send(None)
            for frame in video:
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()  # also stops the ffmpeg process after a failure
    except (OSError, RuntimeError) as exc:
        raise SparseDiffusionError(f"write_video: ffmpeg could not write {str(path)!r}: {_first_line(exc)}") from exc
    logger.debug("wrote %d frames %dx%d to %s", video.shape[0], video.shape[1], video.shape[2], path)
    return path


def _first_line(exc: BaseException) -> str:
    """ffmpeg errors carry the whole ffmpeg log; keep the first line for the message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _read_image(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    try:
        arr = iio.imread(path)
    except Exception as exc:  # imageio raises many types for unreadable files
        raise SparseDiffusionError(f"read_frames: cannot read image {str(path)!r}: {_first_line(exc)}") from exc
    return _to_rgb_uint8(arr, f"read_frames({str(path)!r})")


def _read_gif(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    try:
        arr = iio.imread(path, index=None, mode="RGB")
    except Exception as exc:
        raise SparseDiffusionError(f"read_frames: cannot read GIF {str(path)!r}: {_first_line(exc)}") from exc
    if arr.ndim == 3:  # a one-frame GIF
        arr = arr[None]
    return _frames_to_array(arr, f"read_frames({str(path)!r})")


def _read_video(path: Path) -> np.ndarray:
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
        w, h = meta["size"]
        frames = [np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3) for buf in reader]
    except (OSError, RuntimeError, StopIteration, ValueError) as exc:
        raise SparseDiffusionError(f"read_frames: ffmpeg cannot read video {str(path)!r}: {_first_line(exc)}") from exc
    if not frames:
        raise SparseDiffusionError(f"read_frames: video {str(path)!r} has no frames.")
    return np.stack(frames)


def read_frames(path: str | Path) -> np.ndarray:
    """Reads a video, a GIF, a folder of images or one image as uint8 RGB frames [F, H, W, 3].

    Args:
        path: a video file (``.mp4 .mov .mkv .avi .webm .m4v``, decoded by imageio-ffmpeg), a
            ``.gif``, a single image (``.png .jpg .jpeg .bmp .tif .tiff .webp``, F = 1), or a folder
            whose image files (those suffixes) are the frames, in natural name order
            (``frame_2.png`` before ``frame_10.png``). Gray and RGBA pictures become RGB.

    Returns:
        ``np.ndarray`` uint8 [F, H, W, 3].

    Raises:
        SparseDiffusionError: the path does not exist, has an unknown suffix, is a folder without
            images or with images of different sizes, or cannot be decoded.
    """
    path = Path(path)
    if not path.exists():
        raise SparseDiffusionError(f"read_frames: {str(path)!r} does not exist; pass a video, image or folder path.")
    if path.is_dir():
        files = sorted(
            (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda p: _natural_key(p.name),
        )
        if not files:
            raise SparseDiffusionError(
                f"read_frames: folder {str(path)!r} holds no images with suffixes {IMAGE_SUFFIXES}."
            )
        frames = [_read_image(p) for p in files]
        for p, f in zip(files, frames):
            if f.shape != frames[0].shape:
                raise SparseDiffusionError(
                    f"read_frames: {p.name} is {f.shape[1]}x{f.shape[0]} but {files[0].name} is "
                    f"{frames[0].shape[1]}x{frames[0].shape[0]}; all frames in a folder must be one size."
                )
        return np.stack(frames)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        return _read_gif(path)
    if suffix in VIDEO_SUFFIXES:
        return _read_video(path)
    if suffix in IMAGE_SUFFIXES:
        return _read_image(path)[None]
    raise SparseDiffusionError(
        f"read_frames: {str(path)!r} has unknown suffix {path.suffix!r}; use a video {VIDEO_SUFFIXES}, "
        f".gif, an image {IMAGE_SUFFIXES} or a folder of images."
    )


def _mask_panel(name: str, mask: Any) -> np.ndarray:
    if hasattr(mask, "detach"):  # a torch tensor
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.size == 0:
        raise SparseDiffusionError(
            f"save_mask_grid: mask {name!r} has shape {tuple(arr.shape)}; expected a non-empty 2-D [QB, KB] array "
            "(pick one batch/head, e.g. mask[0, h])."
        )
    if arr.dtype != np.bool_:
        if not np.issubdtype(arr.dtype, np.integer) or not np.isin(arr, (0, 1)).all():
            raise SparseDiffusionError(
                f"save_mask_grid: mask {name!r} has dtype {arr.dtype}; pass bool (or 0/1 integers), "
                "e.g. block_mass > threshold."
            )
        arr = arr.astype(bool)
    scale = max(1, math.ceil(_PANEL_MIN_PX / max(arr.shape)))
    return np.kron(arr.astype(np.uint8) * 255, np.ones((scale, scale), dtype=np.uint8))


def save_mask_grid(
    masks: Sequence[tuple[str, Any]], path: str | Path, *, titles_fontless: bool = True, columns: int | None = None
) -> list[str]:
    """Writes block masks side by side as one gray-scale PNG and returns the names in panel order.

    Each mask is a black/white picture, one pixel block per (query block, key block): kept = white,
    dropped = black, query blocks down, key blocks across. A panel is upscaled by nearest neighbour
    with one integer factor so its longer side is at least 128 px. Panels fill a grid row by row
    (``columns`` per row, default ``ceil(sqrt(n))``), each at the top-left of a cell as large as the
    largest panel, on a gray (128) background that also forms the 2 px separators.

    Args:
        masks: ``(name, mask)`` pairs; ``mask`` is a 2-D bool (or 0/1 integer) numpy array or tensor
            [QB, KB].
        path: the ``.png`` to write; parent folders are created.
        titles_fontless: must be True: names are not drawn (no font rendering); use the returned
            list to label the panels in a report.
        columns: panels per row, a positive int, or None for ``ceil(sqrt(len(masks)))``.

    Returns:
        The names, in panel order (row-major).

    Raises:
        SparseDiffusionError: no masks, a mask that is not 2-D bool/0-1, a bad suffix, columns or
            ``titles_fontless=False``.
    """
    import imageio.v3 as iio

    path = Path(path)
    if not titles_fontless:
        raise SparseDiffusionError(
            "save_mask_grid: titles_fontless=False is not supported (no font rendering); label panels with "
            "the returned names instead."
        )
    if path.suffix.lower() != ".png":
        raise SparseDiffusionError(f"save_mask_grid: path {str(path)!r} must end in .png.")
    masks = list(masks)
    if not masks:
        raise SparseDiffusionError("save_mask_grid: got no masks; pass a list of (name, 2-D bool array) pairs.")
    names, panels = [], []
    for item in masks:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise SparseDiffusionError(f"save_mask_grid: expected (name, mask) pairs, got {type(item).__name__}.")
        names.append(str(item[0]))
        panels.append(_mask_panel(str(item[0]), item[1]))
    n = len(panels)
    if columns is None:
        columns = math.ceil(math.sqrt(n))
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise SparseDiffusionError(f"save_mask_grid: columns={columns!r} must be a positive int or None.")
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    cell_h = max(p.shape[0] for p in panels)
    cell_w = max(p.shape[1] for p in panels)
    sep = _SEPARATOR_PX
    canvas = np.full(
        (rows * cell_h + (rows + 1) * sep, columns * cell_w + (columns + 1) * sep), _SEPARATOR_GRAY, dtype=np.uint8
    )
    for i, panel in enumerate(panels):
        r, c = divmod(i, columns)
        y, x = sep + r * (cell_h + sep), sep + c * (cell_w + sep)
        canvas[y : y + panel.shape[0], x : x + panel.shape[1]] = panel
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, canvas)
    logger.debug("wrote %d mask panels (%d x %d grid) to %s", n, rows, columns, path)
    return names
