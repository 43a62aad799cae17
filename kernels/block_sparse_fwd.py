"""Fused block-sparse flash-attention forward (Triton), writing the natural-log LSE.

One program per (query block, batch x head). It loops over that row's `kv_indices` and keeps an online softmax
in float32 with base-2 exponentials (`qk_scale` carries `log2(e)`); the LSE is converted to natural log on
store. Partial tail blocks are masked on both axes; query head h reads K/V head h // GROUPS (GQA, no repeat);
an empty row writes 0 and LSE -inf. Tiles equal the mask's block size. Plain pointer arithmetic (no
`make_block_ptr`), Triton 3.6-3.9.
"""

import triton
import triton.language as tl


LN2 = 0.6931471805599453


@triton.jit
def _online_block(
    q, k, v, offs_kn, m_i, l_i, acc, SEQ_K, qk_scale, DOT_F32: tl.constexpr, IEEE: tl.constexpr,
):
    """One key block of the online softmax: returns updated (m_i, l_i, acc)."""
    if DOT_F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    if IEEE:
        s = tl.dot(q, k, input_precision="ieee")
    else:
        s = tl.dot(q, k)
    s = s * qk_scale
    s = tl.where((offs_kn < SEQ_K)[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if IEEE:
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision="ieee")
    else:
        acc = tl.dot(p.to(v.dtype), v, acc)
    return m_new, l_i, acc


@triton.jit
def _block_sparse_fwd_kernel(
    Q, K, V, Out, Lse, KvNum, KvIdx,  #
    stride_qz, stride_qh, stride_qm, stride_qk,  #
    stride_kz, stride_kh, stride_kn, stride_kk,  #
    stride_vz, stride_vh, stride_vn, stride_vk,  #
    stride_oz, stride_oh, stride_om, stride_ok,  #
    stride_lz, stride_lh, stride_lm,  #
    stride_nz, stride_nh, stride_nm,  #
    stride_iz, stride_ih, stride_im, stride_ik,  #
    H, GROUPS, SEQ_Q, SEQ_K, HEAD_D, qk_scale, SEQ_BUCKET,  #
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, HEAD_DIM: tl.constexpr,  #
    DOT_F32: tl.constexpr, IEEE: tl.constexpr,  #
):
    """Grid: (QB, B * H). pid0: query block; pid1: fused (batch, head)."""
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

    count = tl.load(KvNum + off_b * stride_nz + off_h * stride_nh + pid_q * stride_nm)
    idx_base = KvIdx + off_b * stride_iz + off_h * stride_ih + pid_q * stride_im
    for i in range(0, count):
        kb = tl.load(idx_base + i * stride_ik)
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

    has = l_i > 0.0
    l_safe = tl.where(has, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(has, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    o_ptrs = Out + off_b * stride_oz + off_h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_ok
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=m_valid[:, None] & d_valid[None, :])
    tl.store(Lse + off_b * stride_lz + off_h * stride_lh + offs_m * stride_lm, lse, mask=m_valid)
