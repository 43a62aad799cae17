"""Dense flash-attention forward (Triton) that also writes the LSE and the exact per-tile softmax mass.

Pass 1 over K is the usual online softmax (output and LSE). Pass 2 recomputes each tile's scores and sums
`exp(s - lse)` over the tile's rows and keys, divided by the valid rows: block_mass [B, H, QB, KB], each row
summing to 1. Two passes over K, no Sq x Sk buffer. Same conventions as `block_sparse_fwd`.
"""

import triton
import triton.language as tl

from .block_sparse_fwd import _online_block


@triton.jit
def _dense_fwd_stats_kernel(
    Q, K, V, Out, Lse, Mass,  #
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
    m_valid = offs_m < SEQ_Q
    d_valid = offs_d < HEAD_D

    q_ptrs = Q + off_b * stride_qz + off_h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qk
    q = tl.load(q_ptrs, mask=m_valid[:, None] & d_valid[None, :], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    k_base = K + off_b * stride_kz + off_hk * stride_kh
    v_base = V + off_b * stride_vz + off_hk * stride_vh
    m_i = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_Q], dtype=tl.float32)
    acc = tl.zeros([BLOCK_Q, HEAD_DIM], dtype=tl.float32)
    for kb in range(0, NUM_KB):
        offs_kn = kb * BLOCK_K + offs_n
        n_valid = offs_kn < SEQ_K
        k = tl.load(
            k_base + offs_kn[None, :] * stride_kn + offs_d[:, None] * stride_kk,
            mask=n_valid[None, :] & d_valid[:, None], other=0.0,
        )
        v = tl.load(
            v_base + offs_kn[:, None] * stride_vn + offs_d[None, :] * stride_vk,
            mask=n_valid[:, None] & d_valid[None, :], other=0.0,
        )
        m_i, l_i, acc = _online_block(q, k, v, offs_kn, m_i, l_i, acc, SEQ_K, qk_scale, DOT_F32, IEEE)

    lse2 = m_i + tl.math.log2(l_i)
    out = acc / l_i[:, None]
    o_ptrs = Out + off_b * stride_oz + off_h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_ok
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=m_valid[:, None] & d_valid[None, :])
    tl.store(Lse + off_b * stride_lz + off_h * stride_lh + offs_m * stride_lm, lse2 * 0.6931471805599453, mask=m_valid)

    n_rows = tl.minimum(SEQ_Q - pid_q * BLOCK_Q, BLOCK_Q).to(tl.float32)
    lse2 = tl.where(m_valid, lse2, 0.0)
    mass_base = Mass + off_b * stride_mz + off_h * stride_mh + pid_q * stride_mq
    for kb in range(0, NUM_KB):
        offs_kn = kb * BLOCK_K + offs_n
        n_valid = offs_kn < SEQ_K
        k = tl.load(
            k_base + offs_kn[None, :] * stride_kn + offs_d[:, None] * stride_kk,
            mask=n_valid[None, :] & d_valid[:, None], other=0.0,
        )
        if DOT_F32:
            k = k.to(tl.float32)
        if IEEE:
            s = tl.dot(q, k, input_precision="ieee")
        else:
            s = tl.dot(q, k)
        p = tl.math.exp2(s * qk_scale - lse2[:, None])
        p = tl.where(m_valid[:, None] & n_valid[None, :], p, 0.0)
        tl.store(mass_base + kb * stride_mk, tl.sum(tl.sum(p, 1), 0) / n_rows)
