"""`AttentionCall`: one intercepted self-attention call as the controller serves it, and the `CallGeometry` a cached
plan is valid for."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class CallGeometry:
    """What a plan was built for; a later call with another geometry re-plans ("input geometry changed").

    `grid` is the latent token grid (F', H', W') when the tokens were permuted into space-time tiles, else None.
    """

    q_shape: tuple[int, ...]
    k_shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    text_len: int
    grid: tuple[int, int, int] | None
    seq_lens_k: tuple[int, ...] | None
    rotation: int
    query_offset: int


@dataclass
class AttentionCall:
    """One eligible attention call handed to `SparseController.attention` by the interceptor.

    Attributes:
        layer: module name of the hooked attention layer.
        q: [B, H, Sq, D]; k, v: [B, HK, Sk, D] (HK divides H: GQA; Sk < Sq when padded keys were cut off; Sk = Sq +
            query_offset in prefix attention).
        scale: softmax scale, None for 1/sqrt(D).
        dense_fn: runs the original attention call; returns [B, H, Sq, D] in this call's (rotated) token order.
        call_index: the call's position among the layer's eligible calls in this forward (each has its own plan).
        seq_lens_k: valid keys per batch element when they differ (varlen key padding), else None.
        rotation: the tokens arrive rotated left by this many positions (a padded run moved to the end); the text
            ranges kept dense are rotated alike.
        allowed: the call's attention mask as a bool tile table [B or 1, H or 1, QB, KB] (block-causal, ...): the
            build pass attends only allowed tiles and planned masks keep only those; None when unmasked.
        query_offset: prefix attention (queries are the last Sq of Sk keys): query i is key `i + query_offset`. Query
            blocks tile the Sq queries, key blocks all Sk keys; the offset need not be a block multiple.
    """

    layer: str
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float | None
    dense_fn: Callable[[], torch.Tensor]
    call_index: int = 0
    seq_lens_k: tuple[int, ...] | None = None
    rotation: int = 0
    allowed: torch.Tensor | None = None
    query_offset: int = 0

    @property
    def seq_lengths(self) -> tuple[int, int]:
        """(Sq, Sk)."""
        return self.q.shape[2], self.k.shape[2]

    def geometry(self, text_len: int, grid: tuple[int, int, int] | None) -> CallGeometry:
        return CallGeometry(
            tuple(self.q.shape),
            tuple(self.k.shape),
            self.q.dtype,
            self.q.device,
            text_len,
            grid,
            self.seq_lens_k,
            self.rotation,
            self.query_offset,
        )

    def seq_lens_k_tensor(self) -> torch.Tensor | None:
        """`seq_lens_k` as int32 [B] on q's device (None when all keys are valid)."""
        if self.seq_lens_k is None:
            return None
        return torch.tensor(self.seq_lens_k, dtype=torch.int32, device=self.q.device)

    def permuted(self, order: torch.Tensor) -> AttentionCall:
        """The same call with q, k and v tokens (dim 2) taken in `order`."""
        q, k, v = (t.index_select(2, order) for t in (self.q, self.k, self.v))
        return dataclasses.replace(self, q=q, k=k, v=v)
