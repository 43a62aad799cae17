"""Argument types and the help formatter of the command line, public for scripts that parse the same values."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..config import SparseAttentionConfig
from ..errors import SparseDiffusionError


DTYPES = ["float32", "bfloat16", "float16"]


def torch_dtype(name: str):
    """The torch dtype of one of `DTYPES`; KeyError for any other name (argparse `choices` rules those out)."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_config(text: str | None, default: dict | None = None) -> SparseAttentionConfig:
    """Config from a JSON file or inline JSON (empty: `default`); SparseDiffusionError if missing or not a JSON object."""
    if not text:
        return SparseAttentionConfig(**(default or {}))
    path = Path(text)
    looks_like_path = not text.lstrip().startswith(("{", "[")) and (
        text.endswith(".json") or "/" in text or os.sep in text
    )
    if looks_like_path and not path.is_file():
        raise SparseDiffusionError(f"--config file {text!r} was not found; give an existing JSON file or inline JSON.")
    try:
        data = json.loads(path.read_text() if path.is_file() else text)
    except json.JSONDecodeError as exc:
        raise SparseDiffusionError(f"--config {text!r} is neither a JSON file nor inline JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SparseDiffusionError(f"--config must hold a JSON object of SparseAttentionConfig fields, got {data!r}.")
    return SparseAttentionConfig.from_dict(data)


def positive_int(text: str) -> int:
    """argparse type: an int >= 1; ArgumentTypeError "is not an integer" or "must be a positive integer (>= 1)"."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer (>= 1)")
    return value


def int_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated positive ints ("1024,2048"); ArgumentTypeError "in '<text>': <item's error>"."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r} holds no number; give comma-separated positive integers")
    try:
        return tuple(positive_int(x) for x in items)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"in {text!r}: {exc}") from None


def wan_frames(text: str) -> int:
    """argparse type: frames of the tiny Wan models, 4k+1 (their VAE); ArgumentTypeError naming a valid count."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1 or (value - 1) % 4:
        raise argparse.ArgumentTypeError(
            f"{value} frames: the Wan VAE needs a positive 4k+1 (1, 5, 9, ..., 33), e.g. {max(1, (value - 1) // 4 * 4 + 1)}"
        )
    return value


def wan_pixels(text: str) -> int:
    """argparse type: a tiny Wan height or width, a multiple of 16 (VAE x8, patch x2); ArgumentTypeError naming one."""
    value = positive_int(text)
    if value % 16:
        raise argparse.ArgumentTypeError(
            f"{value} pixels must be a multiple of 16 for the Wan model, e.g. {max(16, value // 16 * 16)}"
        )
    return value


def config_field(name: str, parse=float):
    """argparse type: SparseAttentionConfig field `name` via `parse`; ArgumentTypeError: the config's message."""

    def check(text: str):
        try:
            value = parse(text)
            SparseAttentionConfig(**{name: value})
        except ValueError as exc:  # SparseDiffusionError included
            raise argparse.ArgumentTypeError(
                str(exc) if isinstance(exc, SparseDiffusionError) else f"{text!r} is not a number"
            ) from None
        return value

    check.__name__ = name
    return check


def steps_or_fraction(text: str) -> int | float:
    """`config_field` parser: a float if the text holds ".", else an int; ValueError ("is not a number") otherwise."""
    return float(text) if "." in text else int(text)


def device(text: str) -> str:
    """argparse type: a torch device this torch build can use; ArgumentTypeError if unknown or CUDA is unavailable."""
    import torch

    try:
        parsed = torch.device(text)
    except RuntimeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device: {exc}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"{text!r}: CUDA is not available here (torch {torch.__version__}, CUDA build: {torch.version.cuda}); "
            "use --device cpu"
        )
    return text


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help, unless X is None/False/SUPPRESS, the option is a flag, or the
    help already states its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            default is None
            or default is False
            or default == argparse.SUPPRESS
            or action.nargs == 0
            or not action.option_strings
            or "default" in text
        ):
            return text
        return f"{text} (default: %(default)s)"
