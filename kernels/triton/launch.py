"""Launchers for the Triton kernels: input checks, allocation, grids, autotuning and `torch.library` custom ops.

Tiles: the kernels' tiles (BLOCK_M x BLOCK_N) may be smaller than the mask's blocks (MASK_BQ x MASK_BK); both are
powers of two and a tile divides its block. Autotuning: `tile_configs` lists the candidates and `config_fits`
prunes them (`tiles.py`: no register spills, shared memory within the device's limit; the rule is checked on every commit by
compiling each kept config for sm_80 and sm_90, `tests/test_triton_aot.py`). Results are keyed on the head dim, the
mask block and a power-of-two bucket of the key length, so a new resolution reuses its bucket's choice.
`SPARSE_DIFFUSION_TRITON_CONFIG="block_m=128,block_n=64,num_warps=8,num_stages=3"` pins one config (block_m and
block_n optional). On CUDA the kernels serve float16/bfloat16; float32 goes to flex or gather (the fp32 dots, exact
or 3xTF32, spill registers in every tile). Under Triton's interpreter (`TRITON_INTERPRET=1`, CPU tensors) float32
runs too, one config runs and bf16 operands are cast to float32 before `tl.dot` (the interpreter's bf16 dot is
wrong, triton-lang/triton#11584).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from ...errors import SparseDiffusionError
from .tiles import config_fits, dense_block_m, kept_configs, kernel_constants, tile_choices, tile_configs


_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 256
_MAX_TILE = 256
_CONFIG_ENV = "SPARSE_DIFFUSION_TRITON_CONFIG"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def not_supported_reasons(q: torch.Tensor, block_size: tuple[int, int] | None = None) -> list[str]:
    """Why the Triton backend cannot serve a call on `q` with mask blocks `block_size` (empty list = it can)."""
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
    elif q.dtype == torch.float32 and q.device.type == "cuda":
        reasons.append(
            "float32 on CUDA is served by flex or gather (the kernel's fp32 dots, exact or 3xTF32, spill registers in "
            "every tile); pass float16/bfloat16 for the Triton kernel"
        )
    if q.shape[-1] > _MAX_HEAD_DIM:
        reasons.append(f"head dim {q.shape[-1]} > {_MAX_HEAD_DIM}")
    for side in block_size or ():
        if side < 16 or side > _MAX_TILE or side & (side - 1):
            reasons.append(f"block size {tuple(block_size)}: Triton tiles must be powers of two in [16, {_MAX_TILE}]")
            break
    if not reasons and q.device.type == "cuda" and block_size and _override() is None:
        index = q.device.index if q.device.index is not None else torch.cuda.current_device()
        reasons += _no_config_reasons(q.shape[-1], tuple(block_size), q.dtype, index)
    return reasons


@functools.lru_cache(maxsize=None)
def _no_config_reasons(d: int, block_size: tuple[int, int], dtype: torch.dtype, index: int) -> list[str]:
    """Kernels that keep no autotune config for these shapes on CUDA device `index` (cached: asked every call)."""
    arch, max_shared = _device_limits(index)
    return [
        f"no spill-free {kind} kernel config for mask blocks {block_size} at head dim {d} on sm_{arch} "
        f"({max_shared} bytes of shared memory); use blocks of 32-256"
        for kind in ("sparse", "dense")
        if not kept_configs(kind, d, block_size, dtype, arch, max_shared)
    ]


def _override() -> dict | None:
    text = os.environ.get(_CONFIG_ENV)
    if not text:
        return None
    try:
        pairs = [item.split("=") for item in text.split(",")]
        fields = {key.strip(): int(value) for key, value in pairs}
        if len(fields) != len(pairs):
            raise ValueError("a key appears twice")
        config = {"num_warps": fields.pop("num_warps"), "num_stages": fields.pop("num_stages")}
        if config["num_warps"] not in (1, 2, 4, 8, 16) or not 1 <= config["num_stages"] <= 8:
            raise ValueError("num_warps must be 1, 2, 4, 8 or 16 and num_stages in [1, 8]")
        for key in ("block_m", "block_n"):
            if key in fields:
                config[key.upper()] = fields.pop(key)
        if fields:
            raise KeyError(sorted(fields))
    except (KeyError, ValueError) as exc:
        raise SparseDiffusionError(
            f"{_CONFIG_ENV}={text!r} must look like 'num_warps=4,num_stages=2' (optionally block_m=..,block_n=..); "
            f"{type(exc).__name__}: {exc}."
        ) from exc
    return config


def _configs(dense: bool = False):
    """Autotune configs: the pinned one, the interpreter's single one (tiles from `_fixed_tiles`), or every
    candidate (pruned at launch by `_prune`)."""
    import triton

    pinned = _override()
    if pinned:
        return [triton.Config({}, num_warps=pinned["num_warps"], num_stages=pinned["num_stages"])]
    if interpreting():
        return [triton.Config({}, num_warps=4, num_stages=1)]
    tiles = ("BLOCK_N",) if dense else ("BLOCK_M", "BLOCK_N")  # the dense kernel's BLOCK_M is the launcher's
    unique = {tuple((k, c[k]) for k in (*tiles, "num_warps", "num_stages")) for c in tile_configs()}
    return [
        triton.Config(
            {k: v for k, v in c if k in tiles}, num_warps=dict(c)["num_warps"], num_stages=dict(c)["num_stages"]
        )
        for c in sorted(unique)
    ]


def _fixed_tiles(block_size: tuple[int, int], d: int, dense: bool) -> dict:
    """Tiles the launcher passes itself: the pinned config's (default: the mask blocks) when a config is pinned or
    under the interpreter; otherwise only the dense kernel's BLOCK_M (autotuning picks the rest).

    Raises:
        SparseDiffusionError: a pinned tile that does not divide the mask block.
    """
    pinned = _override()
    if pinned is None and not interpreting():
        return {"BLOCK_M": dense_block_m(block_size[0], d)} if dense else {}
    pinned = pinned or {}
    tiles = {
        "BLOCK_M": pinned.get("BLOCK_M", dense_block_m(block_size[0], d) if dense else block_size[0]),
        "BLOCK_N": pinned.get("BLOCK_N", block_size[1]),
    }
    for (key, tile), block in zip(tiles.items(), block_size):
        if tile < 16 or tile & (tile - 1) or block % tile:
            raise SparseDiffusionError(
                f"{_CONFIG_ENV}: {key.lower()}={tile} must be a power of two >= 16 dividing the mask block {block}."
            )
    return tiles


@functools.lru_cache(maxsize=None)
def _device_limits(index: int) -> tuple[int, int]:
    """(arch as major*10+minor, opt-in shared memory per block in bytes) of CUDA device `index`."""
    import triton

    major, minor = torch.cuda.get_device_capability(index)
    props = triton.runtime.driver.active.utils.get_device_properties(index)
    return major * 10 + minor, int(props["max_shared_mem"])


def _prune(configs, named_args, **kwargs):
    """Keep the autotune configs whose tiles are `tile_choices` of the mask blocks and that fit the device
    (`config_fits`). Triton calls it only with several configs (not pinned, not interpreting)."""
    bq, bk, head_dim, d = kwargs["MASK_BQ"], kwargs["MASK_BK"], kwargs["HEAD_DIM"], kwargs["HEAD_D"]
    dense = "BLOCK_M" in kwargs
    element = named_args["Q"].element_size()
    arch, max_shared = _device_limits(named_args["Q"].device.index)
    kept = []
    for c in configs:
        m = kwargs.get("BLOCK_M", c.kwargs.get("BLOCK_M"))
        n = c.kwargs["BLOCK_N"]
        if (
            (m in tile_choices(bq, d) or dense)
            and n in tile_choices(bk, d)
            and config_fits(
                "dense" if dense else "sparse", m, n, c.num_warps, c.num_stages, d, element, arch, max_shared
            )
        ):
            kept.append(c)
    if not kept:
        raise SparseDiffusionError(
            f"no Triton tile config fits mask blocks {(bq, bk)}, head dim {head_dim} on sm_{arch} "
            f"({max_shared} bytes of shared memory); use smaller blocks or backend='flex'."
        )
    return kept


_AUTOTUNE_KEY = ["HEAD_D", "MASK_BQ", "MASK_BK", "SEQ_BUCKET", "DOT_F32"]


def _kernels():
    """Autotuned kernels, built on first use (never at import), one pair per pinned config (the environment
    variable may change between calls)."""
    return _tuned_kernels(os.environ.get(_CONFIG_ENV, ""), interpreting())


@functools.lru_cache(maxsize=None)
def _tuned_kernels(pinned: str, interpret: bool):
    import triton

    from .block_sparse_fwd import _block_sparse_fwd_kernel
    from .dense_fwd import _dense_fwd_stats_kernel

    def tune(kernel, dense):
        return triton.autotune(
            configs=_configs(dense), key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune}
        )(kernel)

    return tune(_block_sparse_fwd_kernel, False), tune(_dense_fwd_stats_kernel, True)


def row_align(*tensors: torch.Tensor) -> int:
    """Largest of 16, 8, 4, 2, 1 dividing every tensor's row stride (dim 2) and batch/head strides."""
    strides = [s for t in tensors for s in t.stride()[:3]]
    for align in (16, 8, 4, 2):
        if all(s % align == 0 for s in strides):
            return align
    return 1


def _common(q: torch.Tensor, k: torch.Tensor, scale: float, block_size: tuple[int, int]) -> dict:
    b, h, sq, d = q.shape
    hk, sk = k.shape[1], k.shape[2]
    return dict(
        H=h,
        GROUPS=h // hk,
        SEQ_Q=sq,
        SEQ_K=sk,
        qk_scale=scale * 1.4426950408889634,
        SEQ_BUCKET=max(1, sk).bit_length(),
        **kernel_constants(q.dtype, d, block_size, interpreting()),
    )


def _device(q: torch.Tensor):
    """Launch on q's device, whatever the current device is."""
    return torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext()


def _block_sparse_impl(q, k, v, kv_num_blocks, kv_indices, seq_lens_k, block_q: int, block_k: int, scale: float):
    kernel, _ = _kernels()
    b, h, sq, d = q.shape
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h, sq, dtype=torch.float32, device=q.device)
    num, idx = kv_num_blocks.expand(b, h, -1), kv_indices.expand(b, h, -1, -1)

    def grid(meta):
        return (triton_cdiv(sq, meta["BLOCK_M"]), b * h)

    with _device(q):
        kernel[grid](
            q,
            k,
            v,
            out,
            lse,
            num,
            idx,
            seq_lens_k,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *out.stride(),
            *lse.stride(),
            *num.stride(),
            *idx.stride(),
            ROW_ALIGN=row_align(q, k, v, out),
            **_common(q, k, scale, (block_q, block_k)),
            **_fixed_tiles((block_q, block_k), d, dense=False),
        )
    return out, lse


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _dense_stats_impl(q, k, v, seq_lens_k, block_q: int, block_k: int, scale: float):
    _, kernel = _kernels()
    b, h, sq, d = q.shape
    sk = k.shape[2]
    num_kb = triton_cdiv(sk, block_k)
    fixed = _fixed_tiles((block_q, block_k), d, dense=True)
    block_m = fixed["BLOCK_M"]
    tiles = triton_cdiv(sq, block_m)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h, sq, dtype=torch.float32, device=q.device)
    mass_sum = torch.empty(b, h, tiles, num_kb, dtype=torch.float32, device=q.device)
    with _device(q):
        kernel[(tiles, b * h)](
            q,
            k,
            v,
            out,
            lse,
            mass_sum,
            seq_lens_k,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *out.stride(),
            *lse.stride(),
            *mass_sum.stride(),
            NUM_KB=num_kb,
            ROW_ALIGN=row_align(q, k, v, out),
            **fixed,
            **_common(q, k, scale, (block_q, block_k)),
        )
    per_block = block_q // block_m  # query tiles per mask block: add them, then divide by the block's valid rows
    qb = triton_cdiv(sq, block_q)
    if per_block > 1:
        mass_sum = torch.nn.functional.pad(mass_sum, (0, 0, 0, qb * per_block - tiles))
        mass_sum = mass_sum.view(b, h, qb, per_block, num_kb).sum(3)
    rows = torch.full((qb,), float(block_q), device=q.device)
    rows[-1] = sq - (qb - 1) * block_q
    return out, lse, (mass_sum / rows[:, None]).contiguous()


@torch.library.custom_op("sparse_diffusion::block_sparse_fwd", mutates_args=())
def block_sparse_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    seq_lens_k: torch.Tensor,
    block_q: int,
    block_k: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Custom op: block-sparse forward; `kv_num_blocks` counts kept blocks starting below `seq_lens_k` (int32 [B]).
    Returns (out [B, H, Sq, D] contiguous, q's dtype; LSE float32 [B, H, Sq])."""
    return _block_sparse_impl(q, k, v, kv_num_blocks, kv_indices, seq_lens_k, block_q, block_k, scale)


@block_sparse_fwd.register_fake
def _(q, k, v, kv_num_blocks, kv_indices, seq_lens_k, block_q, block_k, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)  # contiguous, like the real op


@torch.library.custom_op("sparse_diffusion::dense_fwd_stats", mutates_args=())
def dense_fwd_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_lens_k: torch.Tensor,
    block_q: int,
    block_k: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Custom op: dense forward with valid keys `seq_lens_k` int32 [B]; (out contiguous, LSE float32 [B, H, Sq],
    block mass float32 [B, H, QB, KB])."""
    return _dense_stats_impl(q, k, v, seq_lens_k, block_q, block_k, scale)


@dense_fwd_stats.register_fake
def _(q, k, v, seq_lens_k, block_q, block_k, scale):
    b, h, sq, _ = q.shape
    qb, kb = -(-sq // block_q), -(-k.shape[2] // block_k)
    return (
        q.new_empty(q.shape),
        q.new_empty((b, h, sq), dtype=torch.float32),
        q.new_empty((b, h, qb, kb), dtype=torch.float32),
    )


def _check(q: torch.Tensor, block_size: tuple[int, int]) -> None:
    reasons = not_supported_reasons(q, block_size)
    if reasons:
        raise SparseDiffusionError(f"the Triton kernels cannot serve this call: {'; '.join(reasons)}.")


def _seq_lens(q: torch.Tensor, k: torch.Tensor, seq_lens_k: torch.Tensor | None) -> torch.Tensor:
    """Valid keys per batch element, int32 [B] on q's device (all Sk when None)."""
    if seq_lens_k is None:
        return torch.full((q.shape[0],), k.shape[2], dtype=torch.int32, device=q.device)
    return seq_lens_k.to(device=q.device, dtype=torch.int32).contiguous()


def valid_block_counts(num: torch.Tensor, idx: torch.Tensor, seq_lens_k: torch.Tensor, block_k: int) -> torch.Tensor:
    """Kept blocks per row that start below the batch element's valid keys, int32 [B, H, QB] (indices ascend, so
    those are a prefix of the row's `kv_indices`); computed on the device, no sync."""
    kept = torch.arange(idx.shape[-1], device=idx.device) < num[..., None]
    starts = idx.to(torch.int64) * block_k < seq_lens_k.to(torch.int64).view(-1, 1, 1, 1)
    return (kept & starts).sum(-1, dtype=torch.int32)


def block_sparse_attention(q, k, v, mask, scale: float, seq_lens_k=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the block-sparse kernel (inputs already validated by `ops`); `seq_lens_k` int32 [B] or None (all keys
    valid). Returns (out contiguous [B, H, Sq, D], LSE float32 [B, H, Sq])."""
    _check(q, mask.block_size)
    num = mask.kv_num_blocks.to(device=q.device, dtype=torch.int32)
    idx = mask.kv_indices.to(device=q.device, dtype=torch.int32)
    if seq_lens_k is not None:
        num = valid_block_counts(num, idx, seq_lens_k, mask.block_size[1])
    lens = _seq_lens(q, k, seq_lens_k)
    return block_sparse_fwd(q, k, v, num, idx, lens, mask.block_size[0], mask.block_size[1], float(scale))


def dense_attention_with_stats(q, k, v, block_size: tuple[int, int], scale: float, seq_lens_k=None):
    """Launch the dense-with-mass kernel; mask blocks `block_size`; `seq_lens_k` int32 [B] or None."""
    _check(q, block_size)
    lens = _seq_lens(q, k, seq_lens_k)
    return dense_fwd_stats(q, k, v, lens, int(block_size[0]), int(block_size[1]), float(scale))
