"""Block mass -> per-head block masks: the cumulative-mass policy (AdaSpa-style), top-k with budgets, and SparseD's
isolated prompt / generated top-k selection.

Every policy works per (batch element, head, query block) on the exact tile mass measured at the build step.
"""

from __future__ import annotations

import math

import torch

from .block_mask import BlockSparseMask, block_lengths, num_blocks
from .config import SparseAttentionConfig
from .errors import SparseDiffusionError


def _blocks_touching(ranges: list[tuple[int, int]], block: int, count: int, device: torch.device) -> torch.Tensor:
    """Bool [count]: blocks of `block` tokens that overlap any token range [start, end)."""
    hit = torch.zeros(count, dtype=torch.bool, device=device)
    for start, end in ranges:
        if end > start:
            hit[start // block : min(count, -(-end // block))] = True
    return hit


def forced_blocks(
    block_size: tuple[int, int],
    seq_lengths: tuple[int, int],
    dense_token_ranges: list[tuple[int, int]] = (),
    keep_diagonal: bool = True,
    device: torch.device | str = "cpu",
    *,
    query_offset: int = 0,
    dense_key_ranges: list[tuple[int, int]] = (),
) -> torch.Tensor:
    """Tiles every mask keeps, bool [QB, KB].

    Token positions are key positions; query i sits at key position `i + query_offset` (0: self-attention, also with
    trailing padded keys cut off; `Sk - Sq` for prefix attention, whose queries are the last Sq keys, e.g.
    DiffusionGemma's canvas over `[encoder KV cache ; canvas]`). Kept: the diagonal (tiles holding a query's own key
    position; with an offset that is not a multiple of BLOCK_K a query block's own keys straddle two key blocks), whole
    rows and columns of blocks touching `dense_token_ranges` (joint text tokens) and whole columns of key blocks
    touching `dense_key_ranges` (prefix attention's canvas keys).
    """
    bq, bk = block_size
    sq, sk = seq_lengths
    qb, kb = num_blocks(sq, bq), num_blocks(sk, bk)
    forced = torch.zeros(qb, kb, dtype=torch.bool, device=device)
    if keep_diagonal:
        pos = torch.arange(max(0, min(sq, sk - query_offset)), device=device)
        forced[pos // bq, (pos + query_offset) // bk] = True
    ranges = list(dense_token_ranges)
    if ranges:
        rows = [(max(0, s - query_offset), min(sq, e - query_offset)) for s, e in ranges]
        forced |= _blocks_touching(rows, bq, qb, forced.device)[:, None]
    columns = [(s, min(e, sk)) for s, e in ranges + list(dense_key_ranges)]
    if columns:
        forced |= _blocks_touching(columns, bk, kb, forced.device)[None, :]
    return forced


def plan_block_mask(
    block_mass: torch.Tensor,
    config: SparseAttentionConfig,
    seq_lengths: tuple[int, int],
    *,
    dense_token_ranges: list[tuple[int, int]] = (),
    keep_diagonal: bool = True,
    seq_lens_k: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
    query_offset: int = 0,
    dense_key_ranges: list[tuple[int, int]] = (),
) -> BlockSparseMask:
    """Choose kept key blocks per (batch, head, query block) from the exact tile mass.

    Args:
        block_mass: float32 [B, H, QB, KB], rows sum to 1 (from `ops.dense_attention_with_stats`).
        config: `policy` (`"mass"`: fewest blocks whose mass reaches `mass_threshold`; `"topk"`:
            `ceil(topk_ratio * KB)` largest), clamped to [`min_kv_blocks`, `ceil(max_density * KB)`]; then the
            forced tiles (diagonal, `dense_token_ranges` rows and columns, `dense_key_ranges` columns; see
            `forced_blocks`) are added.
        seq_lengths: `(Sq, Sk)` in tokens.
        query_offset: key position of query 0 (`Sk - Sq` for prefix attention, whose queries are the last Sq keys;
            0 for self-attention); places the forced diagonal.
        seq_lens_k: int [B], valid keys per batch element (None = all Sk): key blocks that start at or past it are
            never kept, forced ones included.
        allowed: bool [B or 1, H or 1, QB, KB], the call's attention mask in tile form: the result keeps only allowed
            tiles (forced ones included).

    Returns:
        `BlockSparseMask` with `config.block_size`, B and H of `block_mass`.

    Raises:
        SparseDiffusionError: `block_mass` does not match `seq_lengths` / `block_size`.
    """
    bq, bk = config.block_size
    qb, kb = num_blocks(seq_lengths[0], bq), num_blocks(seq_lengths[1], bk)
    if block_mass.dim() != 4 or tuple(block_mass.shape[2:]) != (qb, kb):
        raise SparseDiffusionError(
            f"block_mass has shape {tuple(block_mass.shape)}, expected [B, H, {qb}, {kb}] for seq_lengths="
            f"{tuple(seq_lengths)} and block_size={config.block_size}."
        )
    mass = block_mass.float()
    sorted_mass, order = torch.sort(mass, dim=-1, descending=True)
    if config.policy == "mass":
        cum = sorted_mass.cumsum(-1)
        # Fewest blocks whose cumulative mass reaches the threshold (tolerant to float round-off of the row sum).
        target = config.mass_threshold * cum[..., -1:].clamp_min(1e-12) - 1e-6
        keep = (cum < target).sum(-1) + 1
    else:
        keep = torch.full(mass.shape[:3], math.ceil(config.topk_ratio * kb - 1e-9), device=mass.device)
    ceiling = max(config.min_kv_blocks, math.ceil(config.max_density * kb - 1e-9))
    keep = keep.clamp(min=min(config.min_kv_blocks, kb), max=min(ceiling, kb))
    rank = torch.arange(kb, device=mass.device)
    chosen_sorted = rank < keep[..., None]
    chosen = torch.zeros_like(chosen_sorted).scatter_(-1, order, chosen_sorted)
    chosen |= forced_blocks(
        config.block_size,
        tuple(seq_lengths),
        dense_token_ranges,
        keep_diagonal,
        mass.device,
        query_offset=query_offset,
        dense_key_ranges=dense_key_ranges,
    )
    if allowed is not None:
        chosen &= allowed.to(chosen.device)
    if seq_lens_k is not None:
        starts = torch.arange(kb, device=mass.device) * bk
        chosen &= (starts < seq_lens_k.to(mass.device)[:, None])[:, None, None, :]
    return BlockSparseMask.from_dense(chosen, config.block_size, tuple(seq_lengths))


def _ratio_topk(score: torch.Tensor, ratio: float) -> torch.Tensor:
    """Bool like `score` [..., n]: the `int(ratio * n) + 1` (at most n) largest entries of each row (SparseD's k)."""
    n = score.shape[-1]
    top = score.topk(min(n, int(n * ratio) + 1), dim=-1).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter_(-1, top, True)


def plan_sparsed_mask(
    block_mass: torch.Tensor,
    generated_mass: torch.Tensor | None,
    topk_ratio: float,
    block_size: tuple[int, int],
    seq_lengths: tuple[int, int],
    prompt_len: int,
) -> BlockSparseMask:
    """SparseD's isolated selection (Wang et al., "SparseD", arXiv 2509.24014), per (batch, head, query block).

    Tiles are ranked by their mean softmax probability. Prompt key blocks are those before `ceil(prompt_len /
    BLOCK_K)` (a block straddling the prompt end is prompt): the `int(topk_ratio * KB) + 1` best of all KB blocks are
    taken and those past the prompt dropped. Among the KG generated key blocks the `int(topk_ratio * KG) + 1` best
    are taken, ranked by a softmax over generated keys only. The two sets are OR-ed; no diagonal is forced.

    Args:
        block_mass: float32 [B, H, QB, KB] tile mass over all keys (rows sum to 1).
        generated_mass: float32 [B, H, QB, KG] tile mass with the softmax over the generated keys (those from the
            first generated block on), or None when KG == 0.
        seq_lengths: `(Sq, Sk)`; prompt_len: prompt tokens at the start of the keys (0: all keys are generated).

    Raises:
        SparseDiffusionError: `generated_mass` does not cover the generated key blocks.
    """
    bk = block_size[1]
    kb = num_blocks(seq_lengths[1], bk)
    last = min(kb, num_blocks(prompt_len, bk))
    width = block_lengths(seq_lengths[1], bk, dtype=block_mass.dtype, device=block_mass.device)
    chosen = _ratio_topk(block_mass / width, topk_ratio)  # mass / keys in the block = the tile mean
    chosen[..., last:] = False
    if last < kb:
        if generated_mass is None or generated_mass.shape[-1] != kb - last:
            raise SparseDiffusionError(
                f"generated_mass must cover the {kb - last} generated key blocks, got "
                f"{None if generated_mass is None else tuple(generated_mass.shape)}."
            )
        chosen[..., last:] |= _ratio_topk(generated_mass / width[last:], topk_ratio)
    return BlockSparseMask.from_dense(chosen, block_size, tuple(seq_lengths))


def kept_mass(block_mass: torch.Tensor, mask: BlockSparseMask) -> torch.Tensor:
    """Share of the softmax mass inside the kept tiles at the build step, float32 [B, H] (mean over query blocks)."""
    dense = mask.to(block_mass.device).to_dense().expand_as(block_mass)
    return (block_mass * dense).sum(-1).mean(-1)
