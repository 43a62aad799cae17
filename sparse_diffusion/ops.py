"""Public tensor ops and the per-call backend choice.

Shape letters: B batch, H query heads, HK key/value heads (H % HK == 0), Sq/Sk lengths, D head dim, QB/KB numbers of
query/key blocks. LSE is float32, natural log, [B, H, Sq]. Block mass is float32 [B, H, QB, KB], rows sum to 1.
`seq_lens_k` (int32 [B], optional): valid keys per batch element (varlen key padding); keys at or past
`seq_lens_k[b]` are excluded as if masked to -inf.
"""

from __future__ import annotations

import logging
import math

import torch

from . import dispatch
from .block_mask import BlockSparseMask, normalize_block_size, num_blocks
from .errors import SparseDiffusionError


logger = logging.getLogger(__name__)


BREAK_EVEN_DENSITY = dispatch.BREAK_EVEN_DENSITY  # backend -> mask density above which dense SDPA is faster


def _describe(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
    return f"q {tuple(q.shape)} {q.dtype}, k {tuple(k.shape)} {k.dtype}, v {tuple(v.shape)} {v.dtype} on {q.device}"


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Validate q [B, H, Sq, D], k/v [B, HK, Sk, D].

    Raises:
        SparseDiffusionError: naming the offending shapes, dtypes or devices.
    """
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        raise SparseDiffusionError("q, k and v must be torch tensors.")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise SparseDiffusionError(f"q, k, v must be 4-D [B, H, S, D]; got {_describe(q, k, v)}.")
    if not (q.dtype == k.dtype == v.dtype) or not q.dtype.is_floating_point:
        raise SparseDiffusionError(f"q, k, v must share one floating dtype; got {_describe(q, k, v)}.")
    if not (q.device == k.device == v.device):
        raise SparseDiffusionError(f"q, k, v must be on one device; got {_describe(q, k, v)}.")
    b, h, _, d = q.shape
    if k.shape[0] != b or v.shape[0] != b or k.shape[:3] != v.shape[:3]:
        raise SparseDiffusionError(f"batch sizes or K/V shapes disagree: {_describe(q, k, v)}.")
    if k.shape[-1] != d or v.shape[-1] != d:
        raise SparseDiffusionError(f"q, k, v need the same head dim D; got {_describe(q, k, v)}.")
    if k.shape[1] == 0 or h % k.shape[1]:
        raise SparseDiffusionError(
            f"query heads H={h} must be a multiple of key/value heads HK={k.shape[1]} (GQA); got {_describe(q, k, v)}."
        )
    if d == 0:
        raise SparseDiffusionError(f"head dim D must be >= 1; got {_describe(q, k, v)}.")
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise SparseDiffusionError(f"sequence lengths must be >= 1; got {_describe(q, k, v)}.")
    if q.device.type == "meta":
        raise SparseDiffusionError(f"meta tensors carry no data; got {_describe(q, k, v)}.")


def _last_dim_contiguous(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Copy only tensors whose head dim is strided (fused kernels need stride 1 there; permuted views are fine)."""
    return tuple(t if t.stride(-1) == 1 else t.contiguous() for t in tensors)


def _check_mask(q: torch.Tensor, k: torch.Tensor, mask: BlockSparseMask) -> None:
    if not isinstance(mask, BlockSparseMask):
        raise SparseDiffusionError(f"mask must be a BlockSparseMask, got {type(mask).__name__}.")
    b, h, sq = q.shape[:3]
    sk = k.shape[2]
    if tuple(mask.seq_lengths) != (sq, sk):
        raise SparseDiffusionError(
            f"mask was built for seq_lengths={mask.seq_lengths} but q/k have (Sq, Sk)=({sq}, {sk}); rebuild the mask "
            "for this geometry."
        )
    mb, mh, mq = mask.kv_num_blocks.shape
    if mb not in (1, b) or mh != h or mq != num_blocks(sq, mask.block_size[0]):
        raise SparseDiffusionError(
            f"mask kv_num_blocks {tuple(mask.kv_num_blocks.shape)} does not fit B={b}, H={h}, "
            f"QB={num_blocks(sq, mask.block_size[0])} (B may be 1 to broadcast)."
        )


def _check_allowed(
    allowed: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    block_size: tuple[int, int],
    seq_lens_k: torch.Tensor | None,
) -> None:
    b, h, sq = q.shape[:3]
    want = (num_blocks(sq, block_size[0]), num_blocks(k.shape[2], block_size[1]))
    if (
        not isinstance(allowed, torch.Tensor)
        or allowed.dtype != torch.bool
        or allowed.dim() != 4
        or allowed.shape[0] not in (1, b)
        or allowed.shape[1] not in (1, h)
        or tuple(allowed.shape[2:]) != want
    ):
        raise SparseDiffusionError(
            f"allowed must be a bool tile table [B or 1, H or 1, QB, KB] = [{b} or 1, {h} or 1, {want[0]}, {want[1]}], "
            f"got {getattr(allowed, 'dtype', type(allowed).__name__)} {tuple(getattr(allowed, 'shape', ()))}."
        )
    if seq_lens_k is not None:  # a tile serves a batch element's rows only when it starts before its valid keys end
        starts = torch.arange(want[1], device=allowed.device) * block_size[1]
        allowed = allowed & (starts < seq_lens_k.to(allowed.device)[:, None])[:, None, None, :]
    if not bool(allowed.any(-1).all()):
        where = " starting below its seq_lens_k" if seq_lens_k is not None else ""
        raise SparseDiffusionError(
            f"allowed has a query block with no allowed key tile{where}; its rows would be empty."
        )


def check_seq_lens_k(seq_lens_k, q: torch.Tensor, k: torch.Tensor, check_values: bool = True) -> torch.Tensor | None:
    """`seq_lens_k` as a contiguous int32 tensor [B] on q's device (None stays None).

    Args:
        seq_lens_k: None, an integer tensor [B] or a sequence of B ints, each in [1, Sk].
        check_values: also check the range (reads the values: a device sync on GPU).

    Raises:
        SparseDiffusionError: wrong type, shape or dtype, or a value outside [1, Sk].
    """
    if seq_lens_k is None:
        return None
    b, sk = q.shape[0], k.shape[2]
    if isinstance(seq_lens_k, (list, tuple)) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in seq_lens_k
    ):
        if any(not -(2**63) <= x < 2**63 for x in seq_lens_k):
            raise SparseDiffusionError(f"seq_lens_k={list(seq_lens_k)} must lie in [1, Sk={sk}].")
        seq_lens_k = torch.tensor(seq_lens_k, dtype=torch.int64)
    if (
        not isinstance(seq_lens_k, torch.Tensor)
        or seq_lens_k.dtype.is_floating_point
        or seq_lens_k.dtype == torch.bool
    ):
        raise SparseDiffusionError(
            f"seq_lens_k must be an integer tensor [B] (or a list of B ints) of valid key counts, got "
            f"{getattr(seq_lens_k, 'dtype', type(seq_lens_k).__name__)}; pass e.g. torch.tensor([{sk}] * {b}, "
            "dtype=torch.int32) or None."
        )
    if tuple(seq_lens_k.shape) != (b,):
        raise SparseDiffusionError(
            f"seq_lens_k has shape {tuple(seq_lens_k.shape)}, expected [B] = [{b}] (one valid key count per batch "
            "element)."
        )
    if seq_lens_k.dtype == torch.int32 and not check_values:  # the hot path: nothing to narrow, no sync
        return seq_lens_k.to(q.device).contiguous()
    wide = seq_lens_k.to(torch.int64)  # range-check before narrowing: int32 would wrap 2**32 + 40 to 40
    if check_values and (int(wide.min()) < 1 or int(wide.max()) > sk):
        raise SparseDiffusionError(
            f"seq_lens_k={wide.tolist()} must lie in [1, Sk={sk}]: every batch element needs at least one valid "
            "key, and k holds only Sk keys."
        )
    return wide.clamp(0, sk).to(device=q.device, dtype=torch.int32).contiguous()


def _scale(q: torch.Tensor, scale: float | None) -> float:
    if scale is None:
        return 1.0 / math.sqrt(q.shape[-1])
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise SparseDiffusionError(f"scale={scale!r} must be a finite number (default 1/sqrt(D)).")
    return float(scale)


def sparse_backend_reasons(
    q: torch.Tensor, need_lse: bool = True, block_size: tuple[int, int] | None = None, varlen: bool = False
) -> dict[str, list[str]]:
    """Why each backend cannot serve a block-sparse call on `q` with tiles `block_size` (empty list = it can);
    `varlen`: the call passes `seq_lens_k`. A backend disabled after a failure (`backend_health`) says so."""
    return dispatch.all_reasons(dispatch.SparseCall(q, need_lse, _block_pair(block_size), varlen))


def choose_sparse_backend(
    q: torch.Tensor,
    backend: str = "auto",
    need_lse: bool = True,
    block_size: tuple[int, int] | None = None,
    varlen: bool = False,
) -> str:
    """Backend name that serves a block-sparse call on `q` (`varlen`: with `seq_lens_k`); see `dispatch.choose`.

    Raises:
        SparseDiffusionError: unknown name, or a forced backend that cannot serve (with every reason).
    """
    return dispatch.choose(dispatch.SparseCall(q, need_lse, _block_pair(block_size), varlen), backend)


def _block_pair(block_size) -> tuple[int, int] | None:
    return None if block_size is None else normalize_block_size(block_size, multiple=1)


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockSparseMask,
    *,
    scale: float | None = None,
    backend: str = "auto",
    return_lse: bool = True,
    validate_mask: bool = True,
    seq_lens_k: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Block-sparse softmax attention: each query block attends only to its kept key blocks.

    Args:
        q: [B, H, Sq, D]; k, v: [B, HK, Sk, D] with H % HK == 0 (GQA without repeating K/V where the backend
            allows). Any strides (e.g. permuted [B, S, H, D] views). float32/bfloat16/float16 (float64: gather and
            reference).
        mask: `BlockSparseMask` with `seq_lengths == (Sq, Sk)`, batch 1 or B, H heads.
        scale: softmax scale, default `1/sqrt(D)`.
        backend: `"auto"`, `"triton"` (CUDA), `"cpu"` (native C++ kernel, compiled on first use), `"flex"`,
            `"gather"` or `"reference"`.
        return_lse: also return the LSE; with `False` the LSE is `None` and backends that cannot produce it (compiled
            flex on CPU) may serve.
        validate_mask: run `mask.validate()` (index ranges, ascending order, counts) and check the `seq_lens_k`
            range; costs a device sync. Masks from `BlockSparseMask.from_dense` or the planner are valid by
            construction.
        seq_lens_k: int32 [B] (or a list of B ints), valid keys per batch element, each in [1, Sk]: keys at or past
            `seq_lens_k[b]` are excluded even inside kept blocks (varlen key padding). None: all Sk keys are valid.
            Not served by `flex`.

    Returns:
        `(out, lse)`: out [B, H, Sq, D] in q's dtype (0 for rows with no kept valid key); LSE float32 [B, H, Sq],
        natural log, `-inf` for those empty rows.

    Equivalent PyTorch::

        tm = mask.to_token_mask()                            # [B, H, Sq, Sk] bool
        s = (q @ k.repeat_interleave(H // HK, 1).transpose(-1, -2)) * scale
        tm &= arange(Sk) < seq_lens_k[:, None, None, None]   # when seq_lens_k is given
        s = s.masked_fill(~tm, -inf); lse = s.logsumexp(-1)
        out = (s - lse[..., None]).exp().nan_to_num() @ v.repeat_interleave(H // HK, 1)

    Raises:
        SparseDiffusionError: shapes/dtypes/devices disagree, the mask does not fit, or a forced backend cannot serve
            (or failed: a kernel that fails to build or launch disables its backend for the process with one
            `backend_health.BackendFailureWarning`; `auto` then serves with the next backend).
    """
    check_qkv(q, k, v)
    _check_mask(q, k, mask)
    if validate_mask:
        mask.validate()
    lens = check_seq_lens_k(seq_lens_k, q, k, check_values=validate_mask)
    q, k, v = _last_dim_contiguous(q, k, v)
    call = dispatch.SparseCall(q, return_lse, mask.block_size, lens is not None)
    out, lse = dispatch.run(call, backend, k, v, mask, _scale(q, scale), lens)
    return out, (lse if return_lse else None)


def dense_attention_with_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int | tuple[int, int],
    *,
    scale: float | None = None,
    backend: str = "auto",
    seq_lens_k: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Dense attention that also returns the row LSE and the exact softmax mass of every tile (the build step).

    Args:
        q: [B, H, Sq, D]; k, v: [B, HK, Sk, D]; block_size: `(BLOCK_Q, BLOCK_K)` tokens (or one int).
        backend: `"auto"`: the device's fused stats pass where it can serve (Triton on CUDA), else the chunked
            PyTorch pass; `"triton"` forces the fused kernel; `"reference"` the float64 oracle; any other name the
            chunked PyTorch pass (`dispatch.run_build`).
        seq_lens_k: int32 [B] (or a list of B ints) in [1, Sk]: keys at or past `seq_lens_k[b]` are excluded (their
            tiles get mass 0). None: all keys valid.
        allowed: bool tile table [B or 1, H or 1, QB, KB]: each query attends only the keys of its allowed tiles
            (an attention mask in tile form, e.g. block-causal); masked tiles get mass 0. Served by the chunked
            PyTorch pass (or the reference), not the Triton kernel; combines with `seq_lens_k`. Every query block
            needs an allowed tile (starting below its batch element's `seq_lens_k`).

    Returns:
        `(out, lse, block_mass)`: out [B, H, Sq, D] in q's dtype; LSE float32 [B, H, Sq] (natural log); block_mass
        float32 [B, H, QB, KB], the mean over a query block's rows of the probability mass in each key block (rows
        sum to 1). Never materialises Sq x Sk at once (chunked over query blocks).

    Raises:
        SparseDiffusionError: bad shapes/dtypes/`seq_lens_k`, `allowed` not fitting, or `backend="triton"` where
            Triton cannot serve (or with `allowed`).
    """
    check_qkv(q, k, v)
    bs = normalize_block_size(block_size, multiple=1)
    dispatch.check_name(backend)
    lens = check_seq_lens_k(seq_lens_k, q, k)
    q, k, v = _last_dim_contiguous(q, k, v)
    s = _scale(q, scale)
    if allowed is not None:
        _check_allowed(allowed, q, k, bs, lens)
    return dispatch.run_build(dispatch.SparseCall(q, True, bs, False), backend, k, v, s, lens, allowed)
