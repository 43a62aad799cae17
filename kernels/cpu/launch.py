"""Launcher of the native CPU block-sparse flash-attention forward (`block_sparse_fwd.cpp`, compiled on first use
with torch's cpp_extension).

One task per (batch, head, query block), spread over torch's intra-op threads. For each kept key block it runs
`S = q k^T` and `acc += P v` as MKL single-precision GEMMs (the `sgemm_` that PyTorch's CPU build exports) on a
whole query block at once, with an online softmax in float32 between them, and writes the natural-log LSE. Inputs
of other float dtypes are computed in float32. Any strides with a unit head-dim stride; GQA reads K/V head
h // (H / HK) in place; partial tail blocks; per-batch valid key lengths (`seq_lens_k`: keys past them are skipped,
blocks entirely past them too); rows with no valid kept key give output 0 and LSE -inf.

Why: PyTorch's CPU flash kernel splits a 128-row query block into 32-row pieces, which keeps its GEMMs small; on the
2-core development machine this kernel reaches 4.3x dense SDPA at 20% density (float32), against 3.2x for compiled
flex_attention and for the gather backend.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path

import torch


logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("block_sparse_fwd.cpp")


def build_name() -> str:
    """Extension name, one per source digest, so a changed kernel never loads an old build."""
    return f"sparse_diffusion_cpu_kernel_{hashlib.sha1(SOURCE.read_bytes()).hexdigest()[:12]}"


def build_directory() -> Path:
    """Where the kernel is built and cached: `<torch extensions root>/<build_name()>` (the root honours
    TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions)."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(get_default_build_root()) / build_name()


def is_built() -> bool:
    """Whether the kernel is loaded or its build is cached (no compile)."""
    return bool(_module.cache_info().currsize) or (build_directory() / f"{build_name()}.so").is_file()


@functools.lru_cache(maxsize=1)
def _module():
    """Compile (about 30 s the first time; cached in `build_directory()`) and load the kernel."""
    from torch.utils.cpp_extension import load

    logger.info("sparse-diffusion: compiling the native CPU block-sparse kernel (first use only)")
    folder = build_directory()
    folder.mkdir(parents=True, exist_ok=True)
    return load(
        build_name(),
        sources=[str(SOURCE)],
        build_directory=str(folder),
        extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
    )


@functools.lru_cache(maxsize=1)
def build_error() -> str | None:
    """Why the kernel cannot be compiled here (no compiler, no ninja, ...), or None once it is loaded."""
    try:
        _module()
    except Exception as exc:  # any toolchain failure means: this backend cannot serve
        logger.info("sparse-diffusion: native CPU kernel unavailable: %s", exc)
        return f"the native CPU kernel could not be compiled ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    return None


def not_supported_reasons(q: torch.Tensor) -> list[str]:
    reasons = []
    if q.device.type != "cpu":
        reasons.append(f"the native CPU kernel runs on CPU tensors, got {q.device.type}")
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        reasons.append(f"the native CPU kernel supports float32/bfloat16/float16, got {q.dtype}")
    if not reasons and build_error():
        reasons.append(build_error())
    return reasons


def block_sparse_attention(q, k, v, mask, scale: float, seq_lens_k=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernel (inputs validated by `ops`; head dims with unit stride; `seq_lens_k` int32 [B] or None).
    Returns (out in q's dtype, LSE)."""
    b, h, qb = q.shape[0], q.shape[1], mask.num_q_blocks
    qf, kf, vf = (t if t.dtype == torch.float32 else t.float() for t in (q, k, v))
    # K/V rows feed BLAS as matrices with leading dimension stride(2), which must be >= D (not expanded, not Sk=1 views)
    # (clone, not contiguous(): a size-1 dim with stride 1 already counts as contiguous)
    kf, vf = (t if t.stride(2) >= t.shape[3] else t.clone(memory_format=torch.contiguous_format) for t in (kf, vf))
    counts = mask.kv_num_blocks.expand(b, h, qb).to(torch.int32).contiguous()
    indices = mask.kv_indices.expand(b, h, qb, mask.kv_indices.shape[-1]).to(torch.int32).contiguous()
    if seq_lens_k is None:
        seq_lens_k = torch.full((b,), k.shape[2], dtype=torch.int32)
    lens = seq_lens_k.to(torch.int32).contiguous()
    out, lse = _module().block_sparse_fwd(
        qf, kf, vf, counts, indices, lens, mask.block_size[0], mask.block_size[1], scale
    )
    return out.to(q.dtype), lse
