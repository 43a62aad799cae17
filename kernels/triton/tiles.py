"""Tile and config rules of the Triton kernels: head-dim padding, the spill-free config table, the shared-memory
estimate and the candidates autotuning keeps (pure Python: used by the launcher's prune rule, the AOT compile check
and the coverage test without any GPU or compile).
"""

from __future__ import annotations

import torch


_ELEMENT_BYTES = {torch.float16: 2, torch.bfloat16: 2, torch.float32: 4}


def padded_head_dim(d: int) -> int:
    """The kernels' HEAD_DIM: `d` rounded up to a power of two, at least 16 (scale stays 1/sqrt(true D))."""
    return max(16, 1 << (d - 1).bit_length())


def kernel_constants(dtype: torch.dtype, d: int, block_size: tuple[int, int], interpret: bool) -> dict:
    """The constexpr arguments both kernels take for `dtype`, true head dim `d` and mask blocks `block_size`."""
    head_dim = padded_head_dim(d)
    return dict(
        MASK_BQ=int(block_size[0]),
        MASK_BK=int(block_size[1]),
        HEAD_D=d,
        HEAD_DIM=head_dim,
        EVEN_D=head_dim == d,
        DOT_F32=interpret and dtype == torch.bfloat16,
    )


def shared_bytes(block_m: int, block_n: int, head_dim: int, num_stages: int, element_bytes: int, arch: int) -> int:
    """Shared memory of one program (bytes), an upper estimate: a K and a V tile per pipeline stage, the Q tile on
    sm_90 (wgmma reads it from shared memory) and a score tile for layout conversions. The AOT test checks that
    Triton 3.9 allocates no more (plus `SHARED_SLACK`)."""
    q_tile = block_m * head_dim if arch >= 90 else 0
    return element_bytes * (num_stages * 2 * block_n * head_dim + q_tile + block_m * block_n)


# Configs that compile without register spills for both sm_80 and sm_90 (fp16/bf16, Triton 3.9; measured by
# compiling every candidate, `tests/test_triton_aot.py` re-checks the kept ones): padded head dim -> (BLOCK_M,
# BLOCK_N, num_warps) -> most pipeline stages. Exact entries only: even 32x32 tiles spill in some stage counts. A
# padded head dim (e.g. 40 -> 64: masked columns) uses the next table up. A pair is (sm_80, sm_90+) stages; the
# table also holds with Triton 3.6 (checked once, the GPU machines' version).
_SAFE = {
    "sparse": {
        64: {
            (32, 32, 4): 2,
            (64, 64, 4): 3,
            (64, 64, 8): 3,
            (64, 128, 8): 3,
            (128, 64, 4): 2,
            (128, 64, 8): 3,
            (128, 128, 8): 3,
        },
        128: {(32, 32, 4): 3, (64, 64, 8): 3, (128, 64, 8): (0, 2)},  # sm_80 + Triton 3.6 spill 24 B at 128x64
        256: {(32, 32, 4): 3, (32, 64, 8): 3, (64, 32, 8): 3},
    },
    "dense": {
        64: {(32, 32, 4): 3, (64, 64, 4): 3, (64, 64, 8): 3, (128, 64, 8): 3, (128, 128, 8): 2},
        128: {(32, 32, 4): 3, (64, 64, 8): 3, (128, 64, 8): 2},
        256: {(32, 32, 4): 2, (32, 32, 8): 2, (32, 64, 8): 3},
    },
}
SHARED_SLACK = 1024  # bytes Triton may add to `shared_bytes` (reduction scratch)


def table_dim(d: int) -> int:
    """The `_SAFE` table serving true head dim `d`: its padded head dim, the next one up when padded."""
    head_dim = padded_head_dim(d)
    return max(64, head_dim if head_dim == d else min(256, 2 * head_dim))


def max_stages(kind: str, block_m: int, block_n: int, num_warps: int, d: int, arch: int = 90) -> int:
    """Most pipeline stages `kind` ("sparse" or "dense") compiles with, spill-free, for this tile at true head dim
    `d` on `sm_{arch}` (0: none)."""
    stages = _SAFE[kind][table_dim(d)].get((block_m, block_n, num_warps), 0)
    return stages if isinstance(stages, int) else stages[arch >= 90]


def config_fits(
    kind: str,
    block_m: int,
    block_n: int,
    num_warps: int,
    num_stages: int,
    d: int,
    element_bytes: int,
    arch: int,
    max_shared: int,
) -> bool:
    """Prune rule for true head dim `d`: the config compiles without register spills (`_SAFE`) and within
    `max_shared` bytes of shared memory (`shared_bytes`)."""
    return num_stages <= max_stages(kind, block_m, block_n, num_warps, d, arch) and (
        shared_bytes(block_m, block_n, padded_head_dim(d), num_stages, element_bytes, arch) + SHARED_SLACK
        <= max_shared
    )


def tile_configs() -> list[dict]:
    """Autotune candidates (BLOCK_M, BLOCK_N, num_warps, num_stages) before pruning."""
    return [
        dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=s)
        for m in (16, 32, 64, 128)
        for n in (16, 32, 64, 128)
        for w in (4, 8)
        for s in (2, 3)
    ]


def tile_choices(mask_block: int, d: int) -> set[int]:
    """Tiles tried for one side of a mask block: the block itself up to 64, else 64 and 128 (a tile divides it);
    head dims above 128 use 32 and 64."""
    sizes = (32, 64) if table_dim(d) > 128 else (64, 128)
    return {min(mask_block, t) for t in sizes}


def kept_configs(
    kind: str, d: int, block_size: tuple[int, int], dtype: torch.dtype, arch: int, max_shared: int
) -> list[dict]:
    """The candidates autotuning keeps for `kind` ("sparse"/"dense") at true head dim `d` on `sm_{arch}`."""
    rows = {dense_block_m(block_size[0], d)} if kind == "dense" else tile_choices(block_size[0], d)
    return [
        c
        for c in tile_configs()
        if c["BLOCK_M"] in rows
        and c["BLOCK_N"] in tile_choices(block_size[1], d)
        and config_fits(
            kind,
            c["BLOCK_M"],
            c["BLOCK_N"],
            c["num_warps"],
            c["num_stages"],
            d,
            _ELEMENT_BYTES[dtype],
            arch,
            max_shared,
        )
    ]


def dense_block_m(mask_bq: int, d: int) -> int:
    """The dense-with-stats kernel's query tile at true head dim `d` (fixed: its per-tile mass buffer is sized by
    it): 128 rows, 64 for a padded head dim, 32 above head dim 128."""
    rows = 32 if table_dim(d) > 128 else 128 if padded_head_dim(d) == d else 64
    return min(mask_bq, rows)
