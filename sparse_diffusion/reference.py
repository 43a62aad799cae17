"""Slow, obviously correct PyTorch versions of every op: the test oracle and the last-resort backend.

Everything is computed in `compute_dtype` (float64 by default) with the full Sq x Sk score matrix, so use small
shapes. Shape letters: B batch, H query heads, HK key/value heads (H % HK == 0), Sq/Sk lengths, D head dim.
"""

from __future__ import annotations

import math

import torch

from .block_mask import BlockSparseMask, block_lengths, num_blocks


def key_padding_mask(seq_lens_k: torch.Tensor | None, sk: int) -> torch.Tensor | None:
    """Bool [B, 1, 1, Sk], True for keys below each batch element's valid length `seq_lens_k` [B] (None: all)."""
    if seq_lens_k is None:
        return None
    return (torch.arange(sk, device=seq_lens_k.device) < seq_lens_k.long()[:, None])[:, None, None, :]


def _and_masks(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return b if a is None else a if b is None else a & b


def _expand_kv(q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Repeat K/V heads for GQA (reference only; real backends never repeat)."""
    groups = q.shape[1] // x.shape[1]
    return x.repeat_interleave(groups, dim=1) if groups > 1 else x


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    token_mask: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention with an optional bool token mask (True = attend).

    Args:
        q: [B, H, Sq, D]; k, v: [B, HK, Sk, D]; token_mask: bool, broadcastable to [B, H, Sq, Sk].
        scale: softmax scale, default `1/sqrt(D)`.

    Returns:
        out in `compute_dtype` [B, H, Sq, D] (rows with no attended key are 0) and LSE float32 [B, H, Sq] in natural
        log (`-inf` for rows with no attended key).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    qc, kc, vc = (t.to(compute_dtype) for t in (q, _expand_kv(q, k), _expand_kv(q, v)))
    scores = (qc @ kc.transpose(-1, -2)) * scale
    if token_mask is not None:
        scores = scores.masked_fill(~token_mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    empty = torch.isneginf(lse)[..., None]  # rows with no attended key: output 0 (NaN inputs still give NaN)
    probs = torch.where(empty, 0.0, torch.exp(scores - torch.where(empty, 0.0, lse[..., None])))
    return probs @ vc, lse.float()


def block_sparse_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockSparseMask,
    *,
    scale: float | None = None,
    compute_dtype: torch.dtype = torch.float64,
    seq_lens_k: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention restricted to the kept tiles of `mask` and, per batch element b, to keys below `seq_lens_k[b]`
    (int [B], None = all keys); same shapes and conventions as `attention_reference`."""
    token_mask = _and_masks(mask.to(q.device).to_token_mask(), key_padding_mask(seq_lens_k, k.shape[2]))
    return attention_reference(q, k, v, scale=scale, token_mask=token_mask, compute_dtype=compute_dtype)


def block_mass_from_probs(
    probs: torch.Tensor, block_size: tuple[int, int], seq_lengths: tuple[int, int]
) -> torch.Tensor:
    """Per-tile softmax mass from row probabilities.

    Args:
        probs: [B, H, Sq, Sk] softmax probabilities (rows sum to 1).

    Returns:
        float32 [B, H, QB, KB]: mean over the query block's rows of the probability mass in each key block, so every
        row of the result sums to 1.
    """
    bq, bk = block_size
    sq, sk = seq_lengths
    qb, kb = num_blocks(sq, bq), num_blocks(sk, bk)
    b, h = probs.shape[:2]
    padded = torch.nn.functional.pad(probs, (0, kb * bk - sk, 0, qb * bq - sq))
    tile_sum = padded.reshape(b, h, qb, bq, kb, bk).sum(dim=(3, 5))
    rows = block_lengths(sq, bq, dtype=tile_sum.dtype, device=probs.device)
    return (tile_sum / rows[:, None]).float()


def dense_attention_with_stats_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: tuple[int, int],
    *,
    scale: float | None = None,
    compute_dtype: torch.dtype = torch.float64,
    seq_lens_k: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense attention plus the exact per-tile mass: (out [B, H, Sq, D], LSE float32 [B, H, Sq], mass float32 [B, H, QB, KB]).
    Keys at or past `seq_lens_k[b]` (int [B], None = all keys valid) are excluded; their tiles get mass 0. `allowed`
    (bool [B or 1, H or 1, QB, KB]): each query attends only the keys of its allowed tiles."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    qc, kc, vc = (t.to(compute_dtype) for t in (q, _expand_kv(q, k), _expand_kv(q, v)))
    scores = (qc @ kc.transpose(-1, -2)) * scale
    tiles = None
    if allowed is not None:
        bq, bk = block_size
        tiles = allowed.repeat_interleave(bq, -2).repeat_interleave(bk, -1)[..., : q.shape[2], : k.shape[2]]
    token_mask = _and_masks(tiles, key_padding_mask(seq_lens_k, k.shape[2]))
    if token_mask is not None:
        scores = scores.masked_fill(~token_mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse[..., None])
    mass = block_mass_from_probs(probs, block_size, (q.shape[2], k.shape[2]))
    return probs @ vc, lse.float(), mass
