"""`BlockSparseMask`: which key blocks every (batch, head, query block) attends to, in flex_attention's layout."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import torch

from .errors import SparseDiffusionError


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def normalize_block_size(value: Any, *, low: int = 1, high: int = 1 << 16, multiple: int = 16) -> tuple[int, int]:
    """`(BLOCK_Q, BLOCK_K)` in tokens from an int or a pair of ints (numpy ints too).

    Raises:
        SparseDiffusionError: not an int or pair of ints, a side outside [low, high], or not a multiple of
            `multiple` (1 disables that check).
    """
    if _is_int(value):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(_is_int(v) for v in value):
        raise SparseDiffusionError(
            f"block_size={value!r} is not valid: give an int (square blocks, e.g. 128) or a pair "
            "(BLOCK_Q, BLOCK_K) of ints in tokens, e.g. (128, 64)."
        )
    pair = (int(value[0]), int(value[1]))
    for v in pair:
        if v < low or v > high or v % multiple:
            rule = f"a multiple of {multiple} " if multiple > 1 else ""
            raise SparseDiffusionError(
                f"block_size={pair} is not valid: each side must be {rule}between {low} and {high} tokens (64 and "
                "128 are the tested sizes)."
            )
    return pair


def num_blocks(length: int, block: int) -> int:
    """Blocks of `block` tokens needed to cover `length` tokens (the last may be partial)."""
    return -(-length // block)


def block_lengths(length: int, block: int, **tensor_kwargs) -> torch.Tensor:
    """Tokens in each of the `num_blocks(length, block)` blocks: `block`, except a partial last block."""
    n = num_blocks(length, block)
    sizes = torch.full((n,), block, **tensor_kwargs)
    sizes[-1] = length - (n - 1) * block
    return sizes


@dataclass
class BlockSparseMask:
    r"""Block-sparse attention mask (the `kv_num_blocks`/`kv_indices` pair of PyTorch flex_attention's `BlockMask`).

    Attributes:
        kv_num_blocks (`torch.Tensor`): int32 [B, H, QB], number of kept key blocks per query block.
        kv_indices (`torch.Tensor`): int32 [B, H, QB, KB_MAX], kept key-block indices, ascending; entries past
            `kv_num_blocks` are undefined.
        block_size (`tuple[int, int]`): `(BLOCK_Q, BLOCK_K)` in tokens.
        seq_lengths (`tuple[int, int]`): `(Sq, Sk)` in tokens; tail blocks may be partial (keys past Sk are masked).

    B may be 1 (broadcast over the batch). Kept blocks are dense inside: every (query, key) pair of a kept tile
    attends. Equivalent dense token mask: `to_dense().repeat_interleave(BLOCK_Q, 2).repeat_interleave(BLOCK_K, 3)`
    cropped to `[..., :Sq, :Sk]`.
    """

    kv_num_blocks: torch.Tensor
    kv_indices: torch.Tensor
    block_size: tuple[int, int]
    seq_lengths: tuple[int, int]

    @property
    def num_q_blocks(self) -> int:
        return num_blocks(self.seq_lengths[0], self.block_size[0])

    @property
    def num_kv_blocks(self) -> int:
        return num_blocks(self.seq_lengths[1], self.block_size[1])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """`(B, H, Sq, Sk)` of the attention this mask describes."""
        b, h, _ = self.kv_num_blocks.shape
        return b, h, self.seq_lengths[0], self.seq_lengths[1]

    @classmethod
    def from_dense(
        cls, block_bool: torch.Tensor, block_size: int | tuple[int, int], seq_lengths: tuple[int, int]
    ) -> "BlockSparseMask":
        """Build from a bool block table [B, H, QB, KB] (True = keep the tile).

        Raises:
            SparseDiffusionError: the table is not 4-D bool or its QB/KB do not match `seq_lengths` / `block_size`.
        """
        block_size = normalize_block_size(block_size, multiple=1)
        if not isinstance(block_bool, torch.Tensor) or block_bool.dim() != 4 or block_bool.dtype != torch.bool:
            raise SparseDiffusionError(
                f"block_bool must be a bool tensor [B, H, QB, KB], got "
                f"{getattr(block_bool, 'dtype', type(block_bool))} of shape {tuple(getattr(block_bool, 'shape', ()))}."
            )
        sq, sk = int(seq_lengths[0]), int(seq_lengths[1])
        qb, kb = num_blocks(sq, block_size[0]), num_blocks(sk, block_size[1])
        if tuple(block_bool.shape[2:]) != (qb, kb):
            raise SparseDiffusionError(
                f"block_bool has {tuple(block_bool.shape[2:])} (QB, KB) blocks, but seq_lengths={(sq, sk)} with "
                f"block_size={tuple(block_size)} needs ({qb}, {kb})."
            )
        counts = block_bool.sum(-1, dtype=torch.int32)
        # Stable sort of (not kept) puts kept block ids first, in ascending order.
        order = torch.sort((~block_bool).to(torch.int8), dim=-1, stable=True).indices
        return cls(
            counts.contiguous(), order.to(torch.int32).contiguous(), (int(block_size[0]), int(block_size[1])), (sq, sk)
        )

    def to_dense(self) -> torch.Tensor:
        """Bool block table [B, H, QB, KB] (True = kept)."""
        b, h, qb = self.kv_num_blocks.shape
        kb = self.num_kv_blocks
        width = self.kv_indices.shape[-1]
        valid = torch.arange(width, device=self.kv_indices.device) < self.kv_num_blocks[..., None]
        idx = torch.where(valid, self.kv_indices.long(), torch.full_like(self.kv_indices, kb, dtype=torch.long))
        dense = torch.zeros(b, h, qb, kb + 1, dtype=torch.bool, device=self.kv_indices.device)
        dense.scatter_(-1, idx, True)
        return dense[..., :kb]

    def to_token_mask(self) -> torch.Tensor:
        """Bool token mask [B, H, Sq, Sk] (True = attend). Memory Sq x Sk: for tests and small shapes."""
        bq, bk = self.block_size
        sq, sk = self.seq_lengths
        dense = self.to_dense()
        return dense.repeat_interleave(bq, 2).repeat_interleave(bk, 3)[:, :, :sq, :sk]

    def density(self) -> torch.Tensor:
        """Kept key blocks / all key blocks, float32 [B, H]."""
        return self.kv_num_blocks.float().mean(-1) / self.num_kv_blocks

    def to(self, device: torch.device | str) -> "BlockSparseMask":
        return BlockSparseMask(
            self.kv_num_blocks.to(device), self.kv_indices.to(device), self.block_size, self.seq_lengths
        )

    def validate(self) -> None:
        """Check dtypes, shapes and index ranges.

        Raises:
            SparseDiffusionError: naming the first problem found.
        """
        n, idx = self.kv_num_blocks, self.kv_indices
        if n.dtype != torch.int32 or idx.dtype != torch.int32:
            raise SparseDiffusionError(f"kv_num_blocks/kv_indices must be int32, got {n.dtype}/{idx.dtype}.")
        if n.dim() != 3 or idx.dim() != 4 or tuple(idx.shape[:3]) != tuple(n.shape):
            raise SparseDiffusionError(
                f"kv_num_blocks must be [B, H, QB] and kv_indices [B, H, QB, KB_MAX] with matching leading dims, got "
                f"{tuple(n.shape)} and {tuple(idx.shape)}."
            )
        qb, kb = self.num_q_blocks, self.num_kv_blocks
        if n.shape[2] != qb:
            raise SparseDiffusionError(
                f"kv_num_blocks has QB={n.shape[2]} but seq_lengths={self.seq_lengths} with block_size="
                f"{self.block_size} gives QB={qb}."
            )
        if n.numel() and (int(n.min()) < 0 or int(n.max()) > min(kb, idx.shape[-1])):
            raise SparseDiffusionError(
                f"kv_num_blocks must lie in [0, {min(kb, idx.shape[-1])}], got range [{int(n.min())}, {int(n.max())}]."
            )
        valid = torch.arange(idx.shape[-1], device=idx.device) < n[..., None]
        used = idx[valid]
        if used.numel() and (int(used.min()) < 0 or int(used.max()) >= kb):
            raise SparseDiffusionError(
                f"kv_indices must lie in [0, {kb}), got [{int(used.min())}, {int(used.max())}]."
            )
        if used.numel() and bool((idx[..., 1:] <= idx[..., :-1])[valid[..., 1:]].any()):
            raise SparseDiffusionError("kv_indices must be strictly ascending within each row's kept entries.")

    def __repr__(self) -> str:
        b, h, qb = self.kv_num_blocks.shape
        return (
            f"BlockSparseMask(shape=(B={b}, H={h}, Sq={self.seq_lengths[0]}, Sk={self.seq_lengths[1]}), "
            f"blocks=(QB={qb}, KB={self.num_kv_blocks}), block_size={self.block_size}, "
            f"density={float(self.density().mean()):.3f}, device={self.kv_indices.device})"
        )
