"""Token reordering into space-time tiles: a mask block becomes a compact 3-D neighbourhood instead of a slice of
raster rows (the layout idea of Sparse-VideoGen and STA, written for our block masks).

Video tokens arrive in raster order (frame, row, column) over a latent grid F x H x W. With tiles of
(tf, th, tw) tokens the permutation lists tile by tile (tiles in raster order, tokens inside a tile in raster order);
edge tiles are smaller when the grid is not a multiple of the tile. Attention is equivariant to permuting queries
and keys together, so `out = attention(q[perm], k[perm], v[perm])[inverse]` is exact.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=32)
def tile_permutation(
    grid: tuple[int, int, int], tile: tuple[int, int, int], device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(perm, inverse): int64 [F*H*W] such that `x[..., perm, :]` is tile-major and `y[..., inverse, :]` undoes it."""
    f, h, w = grid
    tf, th, tw = tile
    ff, hh, ww = torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij")
    tiles_h, tiles_w = -(-h // th), -(-w // tw)
    tile_id = ((ff // tf) * tiles_h + hh // th) * tiles_w + ww // tw
    local = ((ff % tf) * th + hh % th) * tw + ww % tw
    key = (tile_id * (tf * th * tw) + local).flatten()
    perm = torch.argsort(key)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel())
    return perm.to(device), inverse.to(device)
