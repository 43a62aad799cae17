"""Attention benchmark: every backend against dense SDPA on the same inputs, in one run (warm-up, median of repeats).

Used by `sparse-diffusion bench attention` and `scripts/bench_attention.py`. Errors are measured against a float64
reference on a sample of query blocks (the full Sq x Sk reference would not fit in memory at 16k tokens).
"""

from __future__ import annotations

import logging
import statistics
import time

import torch
import torch.nn.functional as F

from . import dispatch, ops
from .block_mask import BlockSparseMask, block_lengths, num_blocks
from .errors import SparseDiffusionError
from .reference import attention_reference


logger = logging.getLogger(__name__)

SPARSE_BACKENDS = tuple(dispatch.REGISTRY)
# Rows that are not sparse backends: dense SDPA (the baseline), FlashAttention (CUDA, where installed) and the build
# step's dense attention with LSE and per-tile mass (`ops.dense_attention_with_stats`, auto backend).
OTHER_ROWS = ("dense", "flash_attn", "build")


def random_block_mask(
    batch: int,
    heads: int,
    seq_len: int,
    density: float,
    block_size: tuple[int, int],
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> BlockSparseMask:
    """Per-head random mask with exactly `round(density * KB)` kept key blocks per query block (diagonal kept)."""
    gen = torch.Generator().manual_seed(seed)
    qb, kb = num_blocks(seq_len, block_size[0]), num_blocks(seq_len, block_size[1])
    keep = max(1, min(kb, round(density * kb)))
    scores = torch.rand(batch, heads, qb, kb, generator=gen)
    diag = torch.clamp(torch.arange(qb) * block_size[0] // block_size[1], max=kb - 1)
    scores[:, :, torch.arange(qb), diag] = 2.0
    chosen = torch.zeros(batch, heads, qb, kb, dtype=torch.bool)
    chosen.scatter_(-1, scores.topk(keep, dim=-1).indices, True)
    return BlockSparseMask.from_dense(chosen, block_size, (seq_len, seq_len)).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, repeats: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_attention(
    *,
    seq_len: int,
    heads: int,
    head_dim: int,
    density: float,
    dtype: torch.dtype = torch.float32,
    kv_heads: int | None = None,
    batch: int = 1,
    block_size: tuple[int, int] = (128, 128),
    backends: tuple[str, ...] = ("dense", "flex", "gather"),
    repeats: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    seed: int = 0,
    sample_q_blocks: int = 4,
) -> dict:
    """Time dense SDPA and each sparse backend on one random input and mask.

    Returns:
        `{"setup": {...}, "results": [{"backend", "median_s", "speedup_vs_dense", "max_abs_err", "returns_lse",
        "kept_tflops"}...]}`; a backend that cannot serve gets `"skipped": reason` instead of timings, one that
        raised gets `"error"`. `kept_tflops` counts 4 * kept (query, key) pairs * D per second. The dense row is
        SDPA pinned to its FlashAttention kernel on CUDA fp16/bf16 (`setup["dense_sdpa"]`).

    Raises:
        SparseDiffusionError: unknown backend name or bad sizes.
    """
    unknown = [b for b in backends if b not in OTHER_ROWS + SPARSE_BACKENDS]
    if unknown:
        raise SparseDiffusionError(f"unknown backends {unknown}; choose from {OTHER_ROWS + SPARSE_BACKENDS}.")
    kv_heads = kv_heads or heads
    if seq_len < 1 or heads < 1 or head_dim < 1 or heads % kv_heads or not 0 < density <= 1:
        raise SparseDiffusionError(
            f"bad benchmark sizes: seq_len={seq_len}, heads={heads}, kv_heads={kv_heads}, head_dim={head_dim}, "
            f"density={density} (heads must be a multiple of kv_heads; density in (0, 1])."
        )
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq_len, head_dim, generator=gen).to(dev, dtype)
    k = torch.randn(batch, kv_heads, seq_len, head_dim, generator=gen).to(dev, dtype)
    v = torch.randn(batch, kv_heads, seq_len, head_dim, generator=gen).to(dev, dtype)
    mask = random_block_mask(batch, heads, seq_len, density, block_size, seed=seed, device=dev)
    token_pairs_kept = float(_kept_pairs(mask))

    # float64 reference on a sample of query blocks
    qb = mask.num_q_blocks
    sample = torch.linspace(0, qb - 1, min(qb, sample_q_blocks)).round().long().unique()
    rows = torch.cat([torch.arange(i * block_size[0], min(seq_len, (i + 1) * block_size[0])) for i in sample.tolist()])
    token_mask = _token_rows(mask, rows)
    ref_sparse, _ = attention_reference(q[:, :, rows], k, v, token_mask=token_mask)
    ref_dense, _ = attention_reference(q[:, :, rows], k, v)

    results = []
    dense_time = None
    for name in backends:
        try:
            entry = _bench_row(
                name, q, k, v, mask, block_size, rows, ref_sparse, ref_dense, token_pairs_kept, repeats, warmup, dev
            )
        except Exception as exc:  # one failing row (a kernel that does not build here) must not lose the others
            logger.warning("bench row %s failed: %s", name, exc)
            entry = {"backend": name, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
        if name == "dense" and "median_s" in entry:
            dense_time = entry["median_s"]
        results.append(entry)
    for entry in results:
        if "median_s" in entry:
            entry["speedup_vs_dense"] = round(dense_time / entry["median_s"], 3) if dense_time else None
    setup = {
        "seq_len": seq_len,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "batch": batch,
        "density": round(float(mask.density().mean()), 4),
        "requested_density": density,
        "dtype": str(dtype).replace("torch.", ""),
        "block_size": list(block_size),
        "device": str(dev),
        "repeats": repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dense_sdpa": _dense_sdpa_name(q),
    }
    return {"setup": setup, "results": results}


def _dense_sdpa_name(q: torch.Tensor) -> str:
    return "flash" if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) else "default"


def _dense_sdpa(q, k, v):
    """Dense SDPA, pinned to its FlashAttention kernel on CUDA fp16/bf16 (the baseline a GPU user has)."""
    gqa = k.shape[1] != q.shape[1]
    if _dense_sdpa_name(q) == "flash":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)


def _bench_row(name, q, k, v, mask, block_size, rows, ref_sparse, ref_dense, token_pairs_kept, repeats, warmup, dev):
    """Time one row; masks are valid by construction, so sparse rows skip `validate_mask` (a device sync)."""
    batch, heads, seq_len, head_dim = q.shape
    entry = {"backend": name}
    dense_pairs = float(batch * heads) * seq_len * seq_len
    if name == "dense":
        fn = lambda: _dense_sdpa(q, k, v)  # noqa: E731
        ref, pairs, lse_flag = ref_dense, dense_pairs, False
    elif name == "build":
        fn = lambda: ops.dense_attention_with_stats(q, k, v, block_size)  # noqa: E731
        ref, pairs, lse_flag = ref_dense, dense_pairs, True
    elif name == "flash_attn":
        fn = _flash_attn_fn(q, k, v)
        if isinstance(fn, str):
            return {"backend": name, "skipped": fn}
        ref, pairs, lse_flag = ref_dense, dense_pairs, False
    else:
        need_lse = not (name == "flex" and dev.type == "cpu")
        reasons = ops.sparse_backend_reasons(q, need_lse, block_size)[name]
        if name == "reference" and seq_len > 4096:
            reasons = reasons + [f"reference materialises Sq x Sk; skipped above 4096 tokens (N={seq_len})"]
        if reasons:
            return {"backend": name, "skipped": "; ".join(reasons)}
        fn = lambda name=name, need_lse=need_lse: ops.block_sparse_attention(  # noqa: E731
            q, k, v, mask, backend=name, return_lse=need_lse, validate_mask=False
        )
        ref, pairs, lse_flag = ref_sparse, token_pairs_kept, need_lse
    with torch.no_grad():
        median = _median_time(fn, repeats, warmup, dev)
        out = fn()
    out = out[0] if isinstance(out, tuple) else out
    entry.update(
        median_s=round(median, 6),
        max_abs_err=float((out[:, :, rows].double() - ref).abs().max()),
        returns_lse=lse_flag,
        kept_tflops=round(4 * pairs * head_dim / median / 1e12, 4),
    )
    return entry


def _flash_attn_fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """FlashAttention's dense forward on the same inputs, or the reason it cannot run."""
    if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
        return "FlashAttention needs CUDA and float16/bfloat16"
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return "flash_attn is not installed"
    qs, ks, vs = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # its layout is [B, S, H, D]
    return lambda: flash_attn_func(qs, ks, vs).transpose(1, 2)


def _kept_pairs(mask: BlockSparseMask) -> float:
    """Number of kept (query, key) token pairs, counting partial tail blocks exactly."""
    bq, bk = mask.block_size
    sq, sk = mask.seq_lengths
    q_rows = block_lengths(sq, bq, dtype=torch.float64)
    k_cols = block_lengths(sk, bk, dtype=torch.float64)
    dense = mask.to_dense().double().cpu()
    return float((dense * q_rows[:, None] * k_cols[None, :]).sum())


def _token_rows(mask: BlockSparseMask, rows: torch.Tensor) -> torch.Tensor:
    dense = mask.to_dense().cpu()
    bq, bk = mask.block_size
    sk = mask.seq_lengths[1]
    return dense[:, :, rows // bq].repeat_interleave(bk, dim=3)[..., :sk].to(mask.kv_indices.device)


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def format_table(result: dict) -> str:
    s = result["setup"]
    lines = [
        f"attention B={s['batch']} H={s['heads']} HK={s['kv_heads']} N={s['seq_len']} D={s['head_dim']} "
        f"{s['dtype']} density={s['density']} block={tuple(s['block_size'])} on {s['device']} "
        f"({s['threads']} threads, torch {s['torch']}, median of {s['repeats']})",
        f"{'backend':10s} {'median_s':>10s} {'speedup':>8s} {'max_abs_err':>12s} {'TFLOP/s':>8s} {'lse':>4s}",
    ]
    if not any(r["backend"] == "dense" and "median_s" in r for r in result["results"]):
        lines.append("(no dense row: add 'dense' to --backends for speed-ups)")
    for r in result["results"]:
        if "skipped" in r or "error" in r:
            lines.append(
                f"{r['backend']:10s} {'skipped' if 'skipped' in r else 'error'}: {r.get('skipped', r.get('error'))}"
            )
            continue
        lines.append(
            f"{r['backend']:10s} {r['median_s']:10.4f} {_ratio(r['speedup_vs_dense']):>8s} {r['max_abs_err']:12.2e} "
            f"{r['kept_tflops']:8.3f} {'yes' if r['returns_lse'] else 'no':>4s}"
        )
    return "\n".join(lines)
