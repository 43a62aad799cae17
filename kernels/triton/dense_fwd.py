"""Dense flash-attention forward (Triton) that also writes the LSE and the exact per-tile softmax mass (build step).

Pass 1 over K is the online softmax (output and LSE). Pass 2 recomputes the scores and sums `exp(s - lse)` over the
program's rows and each mask key block's keys (`MASK_BK // BLOCK_N` tiles), storing raw sums
`MassSum [B, H, QT, KB]` per query tile; the launcher adds the tiles of a mask query block and divides by its valid
rows, so each row of the block mass sums to 1. Two passes over K, no Sq x Sk buffer. Keys at or past `SeqLensK[b]`
are excluded (their tiles get mass 0). Both passes run their interior tiles without masks or branches (so Triton
pipelines the loads) and the tiles holding the end of the valid keys in a second, masked loop. Same conventions as
`block_sparse_fwd`.
"""

import triton
import triton.language as tl

from .block_sparse_fwd import _attend_tile, _load_k, _load_q, _store_out_lse


@triton.jit
def _tile_mass(q, k, offs_n, n_valid, lse2, m_valid, qk_scale, MASK_KEYS: tl.constexpr):
    """Sum over the valid rows and keys of one tile of `exp2(s - lse2)` (base-2 LSE per row)."""
    p = tl.math.exp2(tl.dot(q, k, input_precision="ieee") * qk_scale - lse2[:, None])
    if MASK_KEYS:
        p = tl.where(m_valid[:, None] & (offs_n < n_valid)[None, :], p, 0.0)
    else:
        p = tl.where(m_valid[:, None], p, 0.0)
    return tl.sum(tl.sum(p, 1), 0)


@triton.jit
def _dense_fwd_stats_kernel(
    Q,
    K,
    V,
    Out,
    Lse,
    MassSum,
    SeqLensK,  #
    stride_qz,
    stride_qh,
    stride_qm,
    stride_qk,  #
    stride_kz,
    stride_kh,
    stride_kn,
    stride_kk,  #
    stride_vz,
    stride_vh,
    stride_vn,
    stride_vk,  #
    stride_oz,
    stride_oh,
    stride_om,
    stride_ok,  #
    stride_lz,
    stride_lh,
    stride_lm,  #
    stride_mz,
    stride_mh,
    stride_mq,
    stride_mk,  #
    H,
    GROUPS,
    SEQ_Q,
    SEQ_K,
    NUM_KB,
    qk_scale,
    SEQ_BUCKET,  #
    MASK_BQ: tl.constexpr,
    MASK_BK: tl.constexpr,
    HEAD_D: tl.constexpr,
    HEAD_DIM: tl.constexpr,  #
    EVEN_D: tl.constexpr,  #
    ROW_ALIGN: tl.constexpr,  #
    DOT_F32: tl.constexpr,  #
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,  #
):
    """Grid: (cdiv(SEQ_Q, BLOCK_M), B * H)."""
    SPLIT: tl.constexpr = MASK_BK // BLOCK_N
    stride_qm = tl.multiple_of(stride_qm, ROW_ALIGN)
    stride_kn = tl.multiple_of(stride_kn, ROW_ALIGN)
    stride_vn = tl.multiple_of(stride_vn, ROW_ALIGN)
    stride_om = tl.multiple_of(stride_om, ROW_ALIGN)
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // H
    off_h = pid_bh % H
    off_hk = off_h // GROUPS
    offs_m = pid_q * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q = _load_q(Q, off_b, off_h, offs_m, offs_d, stride_qz, stride_qh, stride_qm, stride_qk, SEQ_Q, HEAD_D, DOT_F32)
    k_base = K + off_b.to(tl.int64) * stride_kz + off_hk.to(tl.int64) * stride_kh
    v_base = V + off_b.to(tl.int64) * stride_vz + off_hk.to(tl.int64) * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    seq_k = tl.minimum(tl.load(SeqLensK + off_b), SEQ_K)  # this batch element's valid keys

    full_tiles = seq_k // BLOCK_N
    for t in range(0, full_tiles):  # pass 1, interior tiles: no mask
        start = tl.cast(t * BLOCK_N, tl.int64)
        m_i, l_i, acc = _attend_tile(
            q,
            k_base + start * stride_kn,
            v_base + start * stride_vn,
            offs_n,
            offs_d,
            stride_kn,
            stride_kk,
            stride_vn,
            stride_vk,
            0,
            HEAD_D,
            m_i,
            l_i,
            acc,
            qk_scale,
            False,
            EVEN_D,
            DOT_F32,
        )
    for t in range(full_tiles, tl.cdiv(seq_k, BLOCK_N)):  # pass 1, the partial last tile
        start = tl.cast(t * BLOCK_N, tl.int64)
        n_valid = (seq_k - start).to(tl.int32)
        m_i, l_i, acc = _attend_tile(
            q,
            k_base + start * stride_kn,
            v_base + start * stride_vn,
            offs_n,
            offs_d,
            stride_kn,
            stride_kk,
            stride_vn,
            stride_vk,
            n_valid,
            HEAD_D,
            m_i,
            l_i,
            acc,
            qk_scale,
            True,
            EVEN_D,
            DOT_F32,
        )
    _store_out_lse(
        Out,
        Lse,
        acc,
        m_i,
        l_i,
        off_b,
        off_h,
        offs_m,
        offs_d,
        stride_oz,
        stride_oh,
        stride_om,
        stride_ok,
        stride_lz,
        stride_lh,
        stride_lm,
        SEQ_Q,
        HEAD_D,
    )

    m_valid = offs_m < SEQ_Q
    lse2 = tl.where(m_valid, m_i + tl.math.log2(l_i), 0.0)
    mass_base = MassSum + off_b.to(tl.int64) * stride_mz + off_h.to(tl.int64) * stride_mh + pid_q * stride_mq
    full_blocks = seq_k // MASK_BK
    for kb in range(0, full_blocks):  # pass 2, mask blocks of valid keys only: no key mask
        total = 0.0
        for sub in tl.static_range(SPLIT):
            start = tl.cast(kb * MASK_BK + sub * BLOCK_N, tl.int64)
            k = _load_k(
                k_base + start * stride_kn, offs_n, offs_d, stride_kn, stride_kk, 0, HEAD_D, False, EVEN_D, DOT_F32
            )
            total += _tile_mass(q, k, offs_n, 0, lse2, m_valid, qk_scale, False)
        tl.store(mass_base + kb * stride_mk, total)
    for kb in range(full_blocks, NUM_KB):  # pass 2, blocks holding the end of the valid keys or past it
        total = 0.0
        for sub in tl.static_range(SPLIT):
            start = tl.cast(kb * MASK_BK + sub * BLOCK_N, tl.int64)
            n_valid = (seq_k - start).to(tl.int32)
            k = _load_k(
                k_base + start * stride_kn,
                offs_n,
                offs_d,
                stride_kn,
                stride_kk,
                n_valid,
                HEAD_D,
                True,
                EVEN_D,
                DOT_F32,
            )
            total += _tile_mass(q, k, offs_n, n_valid, lse2, m_valid, qk_scale, True)
        tl.store(mass_base + kb * stride_mk, total)
