"""sparse-diffusion: block-sparse attention for diffusers pipelines (dense warm-up, cached per-head masks + LSE).

Public names: `accelerate_pipeline`, `accelerate_model`, `SparseAttentionConfig`, `SparseHandle`,
`BlockSparseMask`, `SparseDiffusionError`; tensor ops live in `sparse_diffusion.ops`.
"""

from pathlib import Path as _Path


# Installed, pyproject maps the root folders kernels/ and pipelines/ into this package. Imported straight from a
# source checkout (repository root on sys.path), they sit beside it: let the package path reach them.
_here = _Path(__file__).resolve().parent
if not (_here / "pipelines").is_dir() and (_here.parent / "pipelines" / "base.py").is_file():
    __path__.append(str(_here.parent))  # noqa: F821 - __path__ is defined for packages

from .block_mask import BlockSparseMask  # noqa: E402
from .config import SparseAttentionConfig  # noqa: E402
from .errors import SparseDiffusionError  # noqa: E402


__all__ = [
    "BlockSparseMask",
    "SparseAttentionConfig",
    "SparseDiffusionError",
    "SparseHandle",
    "accelerate_model",
    "accelerate_pipeline",
]
__version__ = "0.1.0"

_LAZY = {"SparseHandle", "accelerate_model", "accelerate_pipeline"}  # need diffusers; the tensor ops do not


def __getattr__(name: str):
    if name in _LAZY:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'sparse_diffusion' has no attribute {name!r}")
