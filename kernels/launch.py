"""Launchers for the Triton kernels: input checks, allocation, grids, autotuning and `torch.library` custom ops.

Autotuning: configs come from a generator plus a prune rule and are keyed on the head dim, the tile and a
power-of-two bucket of the key length, so a new resolution reuses its bucket's choice instead of retuning.
`SPARSE_DIFFUSION_TRITON_CONFIG="num_warps=4,num_stages=2"` pins one config. Under Triton's interpreter
(`TRITON_INTERPRET=1`, CPU tensors) a single config runs and bf16 operands are cast to float32 before `tl.dot`
(the interpreter's bf16 dot is wrong, triton-lang/triton#11584).
"""

from __future__ import annotations

import functools
import math
import os

import torch

from ..errors import SparseDiffusionError


_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 256
_CONFIG_ENV = "SPARSE_DIFFUSION_TRITON_CONFIG"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_MAX_TILE = 256


def not_supported_reasons(q: torch.Tensor, block_size: tuple[int, int] | None = None) -> list[str]:
    """Why the Triton backend cannot serve a call on `q` with tiles `block_size` (empty list = it can)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return ["triton is not installed (pip install triton)"]
    reasons = []
    if q.device.type == "cuda":
        if interpreting():
            reasons.append("TRITON_INTERPRET=1 is set, which runs kernels on CPU tensors only")
    elif q.device.type == "cpu":
        if not interpreting():
            reasons.append("Triton needs a CUDA device (or TRITON_INTERPRET=1 for slow CPU testing)")
    else:
        reasons.append(f"device {q.device.type} is not supported by the Triton kernels")
    if q.dtype not in _SUPPORTED_DTYPES:
        reasons.append(f"dtype {q.dtype} not supported (float16, bfloat16, float32)")
    if q.shape[-1] > _MAX_HEAD_DIM:
        reasons.append(f"head dim {q.shape[-1]} > {_MAX_HEAD_DIM}")
    for side in block_size or ():
        if side < 16 or side > _MAX_TILE or side & (side - 1):
            reasons.append(f"block size {tuple(block_size)}: Triton tiles must be powers of two in [16, {_MAX_TILE}]")
            break
    return reasons


def _configs():
    import triton

    override = os.environ.get(_CONFIG_ENV)
    if override:
        try:
            fields = dict(item.split("=") for item in override.split(","))
            return [triton.Config({}, num_warps=int(fields["num_warps"]), num_stages=int(fields["num_stages"]))]
        except (KeyError, ValueError) as exc:
            raise SparseDiffusionError(
                f"{_CONFIG_ENV}={override!r} must look like 'num_warps=4,num_stages=2'."
            ) from exc
    if interpreting():
        return [triton.Config({}, num_warps=4, num_stages=1)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8) for s in (1, 2, 3)]


def _keep(configs, named_args, **kwargs):
    """Prune: 8 warps only for tiles of at least 128 x 64; 3 stages only up to head dim 128."""
    tile = kwargs["BLOCK_Q"] * kwargs["BLOCK_K"]
    kept = [
        c for c in configs
        if (c.num_warps < 8 or tile >= 128 * 64) and (c.num_stages < 3 or kwargs["HEAD_DIM"] <= 128)
    ]
    return kept or configs[:1]


_AUTOTUNE_KEY = ["HEAD_DIM", "BLOCK_Q", "BLOCK_K", "SEQ_BUCKET", "DOT_F32", "IEEE"]


@functools.lru_cache(maxsize=None)
def _kernels():
    """Autotuned kernels, built on first use (never at import)."""
    import triton

    from .block_sparse_fwd import _block_sparse_fwd_kernel
    from .dense_fwd import _dense_fwd_stats_kernel

    def tune(kernel):
        return triton.autotune(configs=_configs(), key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _keep})(
            kernel
        )

    return tune(_block_sparse_fwd_kernel), tune(_dense_fwd_stats_kernel)


def _common(q: torch.Tensor, k: torch.Tensor, scale: float):
    b, h, sq, d = q.shape
    hk, sk = k.shape[1], k.shape[2]
    head_dim = max(16, 1 << (d - 1).bit_length())  # pad to a power of two; scale stays 1/sqrt(true D)
    dot_f32 = interpreting() and q.dtype == torch.bfloat16
    ieee = q.dtype == torch.float32
    return dict(
        H=h, GROUPS=h // hk, SEQ_Q=sq, SEQ_K=sk, HEAD_D=d, qk_scale=scale * 1.4426950408889634,
        SEQ_BUCKET=max(1, sk).bit_length(), HEAD_DIM=head_dim, DOT_F32=dot_f32, IEEE=ieee,
    )


def _strides(t: torch.Tensor) -> tuple:
    return tuple(t.stride())


def _block_sparse_impl(q, k, v, kv_num_blocks, kv_indices, seq_lens_k, block_q: int, block_k: int, scale: float):
    kernel, _ = _kernels()
    b, h, sq, d = q.shape
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(b, h, sq, dtype=torch.float32, device=q.device)
    num, idx = kv_num_blocks.expand(b, h, -1), kv_indices.expand(b, h, -1, -1)
    grid = (math.ceil(sq / block_q), b * h)
    kernel[grid](
        q, k, v, out, lse, num, idx, seq_lens_k,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out), *_strides(lse), *_strides(num), *_strides(idx),
        BLOCK_Q=block_q, BLOCK_K=block_k, **_common(q, k, scale),
    )
    return out, lse


def _dense_stats_impl(q, k, v, seq_lens_k, block_q: int, block_k: int, scale: float):
    _, kernel = _kernels()
    b, h, sq, d = q.shape
    sk = k.shape[2]
    num_kb = math.ceil(sk / block_k)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(b, h, sq, dtype=torch.float32, device=q.device)
    mass = torch.empty(b, h, math.ceil(sq / block_q), num_kb, dtype=torch.float32, device=q.device)
    grid = (math.ceil(sq / block_q), b * h)
    kernel[grid](
        q, k, v, out, lse, mass, seq_lens_k,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out), *_strides(lse), *_strides(mass),
        NUM_KB=num_kb, BLOCK_Q=block_q, BLOCK_K=block_k, **_common(q, k, scale),
    )
    return out, lse, mass


@torch.library.custom_op("sparse_diffusion::block_sparse_fwd", mutates_args=())
def block_sparse_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_num_blocks: torch.Tensor, kv_indices: torch.Tensor,
    seq_lens_k: torch.Tensor, block_q: int, block_k: int, scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Custom op: block-sparse forward with valid keys `seq_lens_k` int32 [B]; (out [B, H, Sq, D] in q's dtype, LSE
    float32 [B, H, Sq])."""
    return _block_sparse_impl(q, k, v, kv_num_blocks, kv_indices, seq_lens_k, block_q, block_k, scale)


@block_sparse_fwd.register_fake
def _(q, k, v, kv_num_blocks, kv_indices, seq_lens_k, block_q, block_k, scale):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("sparse_diffusion::dense_fwd_stats", mutates_args=())
def dense_fwd_stats(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_lens_k: torch.Tensor, block_q: int, block_k: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Custom op: dense forward with valid keys `seq_lens_k` int32 [B]; (out, LSE float32 [B, H, Sq], block mass
    float32 [B, H, QB, KB])."""
    return _dense_stats_impl(q, k, v, seq_lens_k, block_q, block_k, scale)


@dense_fwd_stats.register_fake
def _(q, k, v, seq_lens_k, block_q, block_k, scale):
    b, h, sq, _ = q.shape
    qb, kb = -(-sq // block_q), -(-k.shape[2] // block_k)
    return torch.empty_like(q), q.new_empty((b, h, sq), dtype=torch.float32), q.new_empty((b, h, qb, kb), dtype=torch.float32)


def _check(q: torch.Tensor, block_size: tuple[int, int]) -> None:
    reasons = not_supported_reasons(q, block_size)
    if reasons:
        raise SparseDiffusionError(f"the Triton kernels cannot serve this call: {'; '.join(reasons)}.")


def _seq_lens(q: torch.Tensor, k: torch.Tensor, seq_lens_k: torch.Tensor | None) -> torch.Tensor:
    """Valid keys per batch element, int32 [B] on q's device (all Sk when None)."""
    if seq_lens_k is None:
        return torch.full((q.shape[0],), k.shape[2], dtype=torch.int32, device=q.device)
    return seq_lens_k.to(device=q.device, dtype=torch.int32).contiguous()


def block_sparse_attention(q, k, v, mask, scale: float, seq_lens_k=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the block-sparse kernel (inputs already validated by `ops`); tiles = `mask.block_size`; `seq_lens_k`
    int32 [B] or None (all keys valid)."""
    _check(q, mask.block_size)
    num = mask.kv_num_blocks.to(device=q.device, dtype=torch.int32)
    idx = mask.kv_indices.to(device=q.device, dtype=torch.int32)
    lens = _seq_lens(q, k, seq_lens_k)
    return block_sparse_fwd(q, k, v, num, idx, lens, mask.block_size[0], mask.block_size[1], float(scale))


def dense_attention_with_stats(q, k, v, block_size: tuple[int, int], scale: float, seq_lens_k=None):
    """Launch the dense-with-mass kernel; tiles = `block_size`; `seq_lens_k` int32 [B] or None."""
    _check(q, block_size)
    lens = _seq_lens(q, k, seq_lens_k)
    return dense_fwd_stats(q, k, v, lens, int(block_size[0]), int(block_size[1]), float(scale))
