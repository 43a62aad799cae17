"""Fused block-sparse flash-attention forward (Triton), writing the natural-log LSE.

One program per (query block, batch x head). It loops over that row's `kv_indices` and keeps an online softmax
in float32 with base-2 exponentials (`qk_scale` carries `log2(e)`); the LSE is converted to natural log on
store. Partial tail blocks are masked on both axes; keys at or past the batch element's valid length
`SeqLensK[b]` (<= SEQ_K) are masked and kept blocks entirely past it are skipped; query head h reads K/V head
h // GROUPS (GQA, no repeat); a row with no valid kept key writes 0 and LSE -inf. Tiles equal the mask's block size. Plain pointer arithmetic (no
`make_block_ptr`), Triton 3.6-3.9.
"""

import triton
import triton.language as tl


LN2 = 0.6931471805599453


@triton.jit
def _load_rows(base, offs_r, offs_d, stride_r, stride_d, N_ROWS, HEAD_D, DOT_F32: tl.constexpr):
    """Tile [rows, HEAD_DIM] (zero past N_ROWS rows and HEAD_D columns), float32 under DOT_F32."""
    x = tl.load(
        base + offs_r[:, None] * stride_r + offs_d[None, :] * stride_d,
        mask=(offs_r < N_ROWS)[:, None] & (offs_d < HEAD_D)[None, :], other=0.0,
    )
    if DOT_F32:
        x = x.to(tl.float32)
    return x


@triton.jit
def _load_cols(base, offs_c, offs_d, stride_c, stride_d, N_COLS, HEAD_D, DOT_F32: tl.constexpr):
    """Transposed tile [HEAD_DIM, cols] (the K^T operand of q @ k^T)."""
    x = tl.load(
        base + offs_c[None, :] * stride_c + offs_d[:, None] * stride_d,
        mask=(offs_c < N_COLS)[None, :] & (offs_d < HEAD_D)[:, None], other=0.0,
    )
    if DOT_F32:
        x = x.to(tl.float32)
    return x


@triton.jit
def _scores(q, k, qk_scale, IEEE: tl.constexpr):
    """q @ k^T times the base-2 softmax scale, float32 (IEEE: exact fp32 dot, no TF32)."""
    if IEEE:
        s = tl.dot(q, k, input_precision="ieee")
    else:
        s = tl.dot(q, k)
    return s * qk_scale


@triton.jit
def _online_block(q, k, v, offs_kn, m_i, l_i, acc, SEQ_K, qk_scale, IEEE: tl.constexpr):
    """One key block of the online softmax: returns updated (m_i, l_i, acc)."""
    s = tl.where((offs_kn < SEQ_K)[None, :], _scores(q, k, qk_scale, IEEE), float("-inf"))
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
def _store_out_lse(
    Out, Lse, acc, m_i, l_i, off_b, off_h, offs_m, offs_d,
    stride_oz, stride_oh, stride_om, stride_ok, stride_lz, stride_lh, stride_lm, SEQ_Q, HEAD_D,
):
    """Normalise and store the output; store the LSE in natural log (-inf and output 0 for empty rows)."""
    has = l_i > 0.0
    l_safe = tl.where(has, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(has, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))
    m_valid = offs_m < SEQ_Q
    o_ptrs = Out + off_b * stride_oz + off_h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_ok
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=m_valid[:, None] & (offs_d < HEAD_D)[None, :])
    tl.store(Lse + off_b * stride_lz + off_h * stride_lh + offs_m * stride_lm, lse, mask=m_valid)


@triton.jit
def _block_sparse_fwd_kernel(
    Q, K, V, Out, Lse, KvNum, KvIdx, SeqLensK,  #
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
    q = _load_rows(Q + off_b * stride_qz + off_h * stride_qh, offs_m, offs_d, stride_qm, stride_qk, SEQ_Q, HEAD_D, DOT_F32)
    k_base = K + off_b * stride_kz + off_hk * stride_kh
    v_base = V + off_b * stride_vz + off_hk * stride_vh
    m_i = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_Q], dtype=tl.float32)
    acc = tl.zeros([BLOCK_Q, HEAD_DIM], dtype=tl.float32)

    seq_k = tl.minimum(tl.load(SeqLensK + off_b), SEQ_K)  # this batch element's valid keys
    count = tl.load(KvNum + off_b * stride_nz + off_h * stride_nh + pid_q * stride_nm)
    idx_base = KvIdx + off_b * stride_iz + off_h * stride_ih + pid_q * stride_im
    for i in range(0, count):
        start = tl.load(idx_base + i * stride_ik) * BLOCK_K
        if start < seq_k:  # a block entirely past the valid keys would leave the running max at -inf
            offs_kn = start + offs_n
            k = _load_cols(k_base, offs_kn, offs_d, stride_kn, stride_kk, seq_k, HEAD_D, DOT_F32)
            v = _load_rows(v_base, offs_kn, offs_d, stride_vn, stride_vk, seq_k, HEAD_D, DOT_F32)
            m_i, l_i, acc = _online_block(q, k, v, offs_kn, m_i, l_i, acc, seq_k, qk_scale, IEEE)

    _store_out_lse(
        Out, Lse, acc, m_i, l_i, off_b, off_h, offs_m, offs_d,
        stride_oz, stride_oh, stride_om, stride_ok, stride_lz, stride_lh, stride_lm, SEQ_Q, HEAD_D,
    )
