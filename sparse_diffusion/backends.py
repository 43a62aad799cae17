"""PyTorch implementations behind `ops`: gather (any device), compiled flex_attention, chunked dense-with-stats.

Each `*_reasons` function returns why its backend cannot serve a call (empty list = it can); `ops` collects them.
Shape letters: B batch, H query heads, HK key/value heads, Sq/Sk lengths, D head dim, QB/KB blocks.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .block_mask import BlockSparseMask, block_lengths, num_blocks


logger = logging.getLogger(__name__)

# Gathered K/V per chunk of query blocks; small enough to stay in the last-level cache of a CPU.
_GATHER_CHUNK_BYTES = 24 * 2**20
# Score matrix per chunk of the dense-with-stats pass.
_STATS_CHUNK_BYTES = 32 * 2**20
_FLEX_RECOMPILE_LIMIT = 64


def _pad_seq(x: torch.Tensor, length: int) -> torch.Tensor:
    """[B, H, S, D] -> contiguous [B, H, length, D] with zero rows appended."""
    if x.shape[2] == length:
        return x.contiguous()
    return F.pad(x, (0, 0, 0, length - x.shape[2]))


def _attend_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense attention [N, 1, L, D] returning (out, LSE float32 [N, 1, L]); CPU flash kernel when it can serve."""
    if q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)
        return out, lse.float()
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = (q.to(acc) @ k.to(acc).transpose(-1, -2)) * scale
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.exp(scores - lse[..., None]) @ v.to(acc)
    return out.to(q.dtype), lse.float()


def gather_reasons(
    q: torch.Tensor, need_lse: bool, block_size: tuple[int, int] | None = None, varlen: bool = False
) -> list[str]:
    return []


def gather_block_sparse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockSparseMask,
    scale: float,
    seq_lens_k: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather each row's kept K/V blocks and run dense attention on them; no compile, any device.

    Kept blocks are gathered in ascending order, so a row's valid keys (below Sk, or below `seq_lens_k[b]`, int32
    [B]) form a prefix of its gathered keys: rows (batch, head, query block) are grouped by (kept-block count, valid
    prefix length) and each group runs one mask-free attention call on that prefix. Rows with no valid key give
    output 0 and LSE -inf. GQA indexes the K/V head `h // (H / HK)` without repeating K/V.
    """
    b, h, sq, d = q.shape
    hk, sk = k.shape[1], k.shape[2]
    groups = h // hk
    bq, bk = mask.block_size
    qb, kb = num_blocks(sq, bq), num_blocks(sk, bk)
    dv = v.shape[-1]
    q_blocks = _pad_seq(q, qb * bq).view(b, h, qb, bq, d)
    k_blocks = _pad_seq(k, kb * bk).view(b, hk, kb, bk, d)
    v_blocks = _pad_seq(v, kb * bk).view(b, hk, kb, bk, dv)
    counts = mask.kv_num_blocks.to(q.device).expand(b, h, qb).reshape(-1).long()
    width = mask.kv_indices.shape[-1]
    indices = mask.kv_indices.to(q.device).expand(b, h, qb, width).reshape(-1, width).long()
    lens = torch.full((b,), sk, device=q.device) if seq_lens_k is None else seq_lens_k.to(q.device).long()
    row_len = lens.repeat_interleave(h * qb)[:, None]
    kept = torch.arange(width, device=q.device) < counts[:, None]
    valid = torch.where(kept, (row_len - indices * bk).clamp(0, bk), 0).sum(1)  # valid prefix of gathered keys
    pairs = torch.stack([counts, valid], 1)

    out = q.new_zeros(b * h * qb, bq, dv)
    lse = torch.full((b * h * qb, bq), float("-inf"), dtype=torch.float32, device=q.device)
    for c, keep_len in torch.unique(pairs[valid > 0], dim=0).tolist():
        rows = torch.nonzero((counts == c) & (valid == keep_len)).flatten()
        n = num_blocks(keep_len, bk)  # the first n gathered blocks hold the valid prefix
        step = max(1, _GATHER_CHUNK_BYTES // max(1, n * bk * (d + dv) * k.element_size()))
        for start in range(0, rows.numel(), step):
            r = rows[start : start + step]
            bi, hi, qi = r // (h * qb), (r // qb) % h, r % qb
            sel = indices[r, :n]
            kvh = (hi // groups)[:, None]
            kg = k_blocks[bi[:, None], kvh, sel].reshape(r.numel(), 1, n * bk, d)[:, :, :keep_len]
            vg = v_blocks[bi[:, None], kvh, sel].reshape(r.numel(), 1, n * bk, dv)[:, :, :keep_len]
            o, l = _attend_with_lse(q_blocks[bi, hi, qi][:, None], kg, vg, scale)
            out[r] = o[:, 0]
            lse[r] = l[:, 0]
    out = out.view(b, h, qb * bq, dv)[:, :, :sq]
    return out, lse.view(b, h, qb * bq)[:, :, :sq]


_compiled_flex = None


def flex_reasons(
    q: torch.Tensor, need_lse: bool, block_size: tuple[int, int] | None = None, varlen: bool = False
) -> list[str]:
    reasons = []
    if varlen:
        reasons.append("the flex backend does not take per-batch key lengths (seq_lens_k)")
    try:
        from torch.nn.attention.flex_attention import BlockMask  # noqa: F401
    except ImportError:  # pragma: no cover - old torch
        return [f"torch {torch.__version__} has no torch.nn.attention.flex_attention"]
    d = q.shape[-1]
    if d < 16 or d & (d - 1):
        reasons.append(f"flex needs a power-of-two head dim >= 16, got D={d}")
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        reasons.append(f"flex supports float32/bfloat16/float16, got {q.dtype}")
    if need_lse and q.device.type == "cpu":
        reasons.append("compiled flex_attention on CPU cannot return the LSE (torch.compile CPU limitation)")
    return reasons


def _flex():
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        # One compiled graph per shape/dtype; past the limit dynamo would run flex eagerly, which ignores block tables.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, _FLEX_RECOMPILE_LIMIT)
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def to_flex_block_mask(mask: BlockSparseMask):
    """Our mask as a flex `BlockMask` (full-width kv_indices, no mask_mod; tails are bounded by seq_lengths)."""
    from torch.nn.attention.flex_attention import BlockMask

    kb = mask.num_kv_blocks
    idx = mask.kv_indices
    if idx.shape[-1] < kb:
        idx = F.pad(idx, (0, kb - idx.shape[-1]))
    idx = idx[..., :kb].clamp(0, kb - 1).to(torch.int32).contiguous()
    return BlockMask.from_kv_blocks(
        mask.kv_num_blocks.to(torch.int32).contiguous(),
        idx,
        BLOCK_SIZE=mask.block_size,
        seq_lengths=mask.seq_lengths,
        compute_q_blocks=False,
    )


def flex_block_sparse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockSparseMask, scale: float, need_lse: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Compiled `flex_attention` with our block table; returns the LSE only where flex can (CUDA)."""
    block_mask = to_flex_block_mask(mask.to(q.device))
    gqa = q.shape[1] != k.shape[1]
    if need_lse:
        out, lse = _flex()(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa, return_lse=True)
        return out, lse.float()
    return _flex()(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa), None


def tile_token_mask(allowed: torch.Tensor, block_size: tuple[int, int], rows: torch.Tensor, sk: int) -> torch.Tensor:
    """Bool [B or 1, H or 1, len(rows), Sk] token mask of the query positions `rows` from a tile table [.., QB, KB]."""
    return allowed[:, :, rows // block_size[0]].repeat_interleave(block_size[1], -1)[..., :sk]


def chunked_dense_with_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: tuple[int, int],
    scale: float,
    seq_lens_k: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact dense attention, LSE and per-tile mass (see `_chunked_dense_with_stats`). With `seq_lens_k` (int32 [B])
    the batch elements of each valid length run together on their keys cut to that length; tiles past it get mass
    0. `allowed` (bool tile table [B or 1, H or 1, QB, KB]) restricts every query to the keys of its allowed tiles."""
    if seq_lens_k is None:
        return _chunked_dense_with_stats(q, k, v, block_size, scale, allowed)
    b, h, sq = q.shape[:3]
    lengths = seq_lens_k.tolist()
    out = torch.empty(b, h, sq, v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h, sq, dtype=torch.float32, device=q.device)
    mass = torch.zeros(b, h, num_blocks(sq, block_size[0]), num_blocks(k.shape[2], block_size[1]), device=q.device)
    for length in sorted(set(lengths)):
        idx = torch.tensor([i for i, n in enumerate(lengths) if n == length], device=q.device)
        tiles = None
        if allowed is not None:
            tiles = (allowed[idx] if allowed.shape[0] > 1 else allowed)[..., : num_blocks(length, block_size[1])]
        o, l, m = _chunked_dense_with_stats(q[idx], k[idx, :, :length], v[idx, :, :length], block_size, scale, tiles)
        out[idx], lse[idx] = o, l
        mass[idx, :, :, : m.shape[-1]] = m
    return out, lse, mass


def _chunked_dense_with_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: tuple[int, int],
    scale: float,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact dense attention, LSE and per-tile mass, chunked over query blocks (never Sq x Sk at once). `allowed`
    (bool tile table [B or 1, H or 1, QB, KB]) restricts every query to the keys of its allowed tiles.

    On CPU without GQA the output and LSE come from PyTorch's fused flash kernel and one extra pass recomputes the
    scores chunk by chunk to sum `exp(s - lse)` per tile; otherwise each chunk's scores give LSE, output and mass.
    Statistics accumulate in float32 (float64 for float64 input). GQA multiplies grouped query heads against their
    K/V head without repeating K/V.
    """
    b, h, sq, d = q.shape
    hk, sk = k.shape[1], k.shape[2]
    groups = h // hk
    bq, bk = block_size
    qb, kb = num_blocks(sq, bq), num_blocks(sk, bk)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    kc = k.to(acc)
    k_t = kc.transpose(-1, -2)
    dv = v.shape[-1]
    fused = q.device.type == "cpu" and groups == 1 and allowed is None
    if fused:
        out, lse = _attend_with_lse(q, k, v, scale)
        vc = None
    else:
        out = torch.empty(b, h, sq, dv, dtype=q.dtype, device=q.device)
        lse = torch.empty(b, h, sq, dtype=torch.float32, device=q.device)
        vc = v.to(acc)
    mass = torch.empty(b, h, qb, kb, dtype=torch.float32, device=q.device)
    row_bytes = b * h * kb * bk * torch.finfo(acc).bits // 8
    chunk = max(bq, (_STATS_CHUNK_BYTES // max(1, row_bytes)) // bq * bq)
    buffers: dict[int, torch.Tensor] = {}  # reused score buffers: fresh 100 MB allocations cost page faults
    full = sk // bk
    for s in range(0, sq, chunk):
        e = min(sq, s + chunk)
        r = e - s
        qc = (q[:, :, s:e].to(acc) * scale).reshape(b, hk, groups * r, d)
        if r not in buffers:
            buffers[r] = torch.empty(b, hk, groups * r, sk, dtype=acc, device=q.device)
        scores = torch.matmul(qc, k_t, out=buffers[r])
        if allowed is not None:
            keep = tile_token_mask(allowed, block_size, torch.arange(s, e, device=q.device), sk)
            scores.view(b, h, r, sk).masked_fill_(~keep, float("-inf"))
        if fused:
            row_lse = lse[:, :, s:e].to(acc).reshape(b, hk, groups * r)
        else:
            row_lse = torch.logsumexp(scores, dim=-1)
        probs = scores.sub_(row_lse[..., None]).exp_()
        if not fused:
            out[:, :, s:e] = torch.matmul(probs, vc).reshape(b, h, r, dv).to(q.dtype)
            lse[:, :, s:e] = row_lse.reshape(b, h, r).float()
        probs = probs.view(b, h, r, sk)
        row_mass = probs[..., : full * bk].unflatten(-1, (full, bk)).sum(-1)  # a view: no copy of the scores
        if full < kb:
            row_mass = torch.cat([row_mass, probs[..., full * bk :].sum(-1, keepdim=True)], dim=-1)
        if fused:  # the fused kernel's LSE is not that of these fp32 scores (bf16/fp16 inputs): rows sum to 1 exactly
            row_mass = row_mass / row_mass.sum(-1, keepdim=True)
        nq = num_blocks(r, bq)
        row_mass = F.pad(row_mass, (0, 0, 0, nq * bq - r)).reshape(b, h, nq, bq, kb).sum(3)
        rows = block_lengths(r, bq, dtype=row_mass.dtype, device=q.device)
        mass[:, :, s // bq : s // bq + nq] = (row_mass / rows[:, None]).float()
    return out, lse, mass
