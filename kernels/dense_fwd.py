"""Dense flash-attention forward (Triton) that also writes the LSE and the exact per-tile softmax mass.

Pass 1 over K is the usual online softmax (output and LSE). Pass 2 recomputes each tile's scores and sums
`exp(s - lse)` over the tile's rows and keys, divided by the valid rows: block_mass [B, H, QB, KB], each row
summing to 1. Two passes over K, no Sq x Sk buffer. Keys at or past `SeqLensK[b]` are excluded (pass 1 stops at the
last block holding a valid key; their tiles get mass 0). Same conventions as `block_sparse_fwd`.
"""

import triton
import triton.language as tl

from .block_sparse_fwd import _load_cols, _load_rows, _online_block, _scores, _store_out_lse


@triton.jit
def _dense_fwd_stats_kernel(
    Q, K, V, Out, Lse, Mass, SeqLensK,  #
    stride_qz, stride_qh, stride_qm, stride_qk,  #
    stride_kz, stride_kh, stride_kn, stride_kk,  #
    stride_vz, stride_vh, stride_vn, stride_vk,  #
    stride_oz, stride_oh, stride_om, stride_ok,  #
    stride_lz, stride_lh, stride_lm,  #
    stride_mz, stride_mh, stride_mq, stride_mk,  #
    H, GROUPS, SEQ_Q, SEQ_K, HEAD_D, NUM_KB, qk_scale, SEQ_BUCKET,  #
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, HEAD_DIM: tl.constexpr,  #
    DOT_F32: tl.constexpr, IEEE: tl.constexpr,  #
):
    """Grid: (QB, B * H)."""
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // H
    off_h = pid_bh % H
    off_hk = off_h // GROUPS
    offs_m = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_n = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, HEAD_DIM)
    q = _load_rows(Q + off_b * stride_qz + off_h * stride_qh, offs_m, offs_d, stride_qm, stride_qk, SEQ_Q, HEAD_D, DOT_F32)
    k_base = K + off_b * stride_kz + off_hk * stride_kh
    v_base = V + off_b * stride_vz + off_hk * stride_vh
    m_i = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_Q], dtype=tl.float32)
    acc = tl.zeros([BLOCK_Q, HEAD_DIM], dtype=tl.float32)
    seq_k = tl.minimum(tl.load(SeqLensK + off_b), SEQ_K)  # this batch element's valid keys
    for kb in range(0, tl.cdiv(seq_k, BLOCK_K)):  # pass 1: online softmax over the blocks holding valid keys
        offs_kn = kb * BLOCK_K + offs_n
        k = _load_cols(k_base, offs_kn, offs_d, stride_kn, stride_kk, seq_k, HEAD_D, DOT_F32)
        v = _load_rows(v_base, offs_kn, offs_d, stride_vn, stride_vk, seq_k, HEAD_D, DOT_F32)
        m_i, l_i, acc = _online_block(q, k, v, offs_kn, m_i, l_i, acc, seq_k, qk_scale, IEEE)
    _store_out_lse(
        Out, Lse, acc, m_i, l_i, off_b, off_h, offs_m, offs_d,
        stride_oz, stride_oh, stride_om, stride_ok, stride_lz, stride_lh, stride_lm, SEQ_Q, HEAD_D,
    )

    m_valid = offs_m < SEQ_Q
    lse2 = tl.where(m_valid, m_i + tl.math.log2(l_i), 0.0)
    n_rows = tl.minimum(SEQ_Q - pid_q * BLOCK_Q, BLOCK_Q).to(tl.float32)
    mass_base = Mass + off_b * stride_mz + off_h * stride_mh + pid_q * stride_mq
    for kb in range(0, NUM_KB):  # pass 2: exact tile mass with the final LSE
        offs_kn = kb * BLOCK_K + offs_n
        k = _load_cols(k_base, offs_kn, offs_d, stride_kn, stride_kk, seq_k, HEAD_D, DOT_F32)
        p = tl.math.exp2(_scores(q, k, qk_scale, IEEE) - lse2[:, None])
        p = tl.where(m_valid[:, None] & (offs_kn < seq_k)[None, :], p, 0.0)
        tl.store(mass_base + kb * stride_mk, tl.sum(tl.sum(p, 1), 0) / n_rows)
