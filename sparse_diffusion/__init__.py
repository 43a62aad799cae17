"""sparse-diffusion: block-sparse attention for diffusers pipelines (dense warm-up, cached per-head masks + LSE).

Public names: `accelerate_pipeline`, `accelerate_model`, `SparseAttentionConfig`, `SparseHandle`,
`BlockSparseMask`, `SparseDiffusionError`; tensor ops live in `sparse_diffusion.ops`.
"""

from .api import SparseHandle, accelerate_model, accelerate_pipeline
from .block_mask import BlockSparseMask
from .config import SparseAttentionConfig
from .errors import SparseDiffusionError


__all__ = [
    "BlockSparseMask",
    "SparseAttentionConfig",
    "SparseDiffusionError",
    "SparseHandle",
    "accelerate_model",
    "accelerate_pipeline",
]
__version__ = "0.1.0"
