"""Fused block-sparse flash-attention forward (Triton), writing the natural-log LSE.

One program per (query tile, batch x head). It walks its mask row's `kv_indices`, each kept mask block served as
`MASK_BK // BLOCK_N` key tiles (the kernel's tiles may be smaller than the mask's blocks, e.g. a 128-token mask
block as two 64-wide tiles), with an online softmax in float32 and base-2 exponentials (`qk_scale` carries
`log2(e)`); the LSE is converted to natural log on store.

GPU design (FlashAttention-2 forward, Dao 2023; the Triton fused-attention tutorial): the K/V loop has no branch and
no key mask, so Triton software-pipelines its loads (cp.async on sm_80, async copies + wgmma on sm_90). The launcher
drops kept blocks at or past the batch element's valid keys `SeqLensK[b]` before launch, so only the last kept block
can hold invalid keys: it runs in a second, masked loop. A tile that sees no valid key keeps the running max at
-inf without NaN (`_safe_max`). Query head h reads K/V head h // GROUPS (GQA, no repeat); a row with no kept valid
key writes 0 and LSE -inf. Base offsets of (batch, head) and of each key tile are int64 (q may exceed 2^31
elements). The true head dim `HEAD_D` is a constexpr (its column mask is static, so a padded head dim such as
40 -> 64 still gets 16-byte vector loads and async copies) and `ROW_ALIGN` tells Triton the row strides'
divisibility.
Plain pointer arithmetic (no `make_block_ptr`/TMA descriptors), Triton 3.6-3.9.
"""

import triton
import triton.language as tl


@triton.jit
def _safe_max(m):
    """The running max with -inf (no valid key seen yet) replaced by 0, so `exp2(s - m)` gives 0, never NaN."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _load_q(
    Q, off_b, off_h, offs_m, offs_d, stride_qz, stride_qh, stride_qm, stride_qk, SEQ_Q, HEAD_D, DOT_F32: tl.constexpr
):
    """Query tile [BLOCK_M, HEAD_DIM], zero past SEQ_Q rows and HEAD_D columns (loaded once per program)."""
    base = Q + off_b.to(tl.int64) * stride_qz + off_h.to(tl.int64) * stride_qh
    q = tl.load(
        base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qk,
        mask=(offs_m < SEQ_Q)[:, None] & (offs_d < HEAD_D)[None, :],
        other=0.0,
    )
    if DOT_F32:
        q = q.to(tl.float32)
    return q


@triton.jit
def _load_k(
    k_tile,
    offs_n,
    offs_d,
    stride_kn,
    stride_kk,
    n_valid,
    HEAD_D,
    MASK_KEYS: tl.constexpr,
    EVEN_D: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    """K^T tile [HEAD_DIM, BLOCK_N] at the tile base pointer; with MASK_KEYS, keys at or past `n_valid` (relative to
    the tile) load 0; padded head-dim rows load 0."""
    ptrs = k_tile + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kk
    if MASK_KEYS:
        k = tl.load(ptrs, mask=(offs_n < n_valid)[None, :] & (offs_d < HEAD_D)[:, None], other=0.0)
    elif EVEN_D:
        k = tl.load(ptrs)
    else:
        k = tl.load(ptrs, mask=(offs_d < HEAD_D)[:, None], other=0.0)
    if DOT_F32:
        k = k.to(tl.float32)
    return k


@triton.jit
def _load_v(
    v_tile,
    offs_n,
    offs_d,
    stride_vn,
    stride_vk,
    n_valid,
    HEAD_D,
    MASK_KEYS: tl.constexpr,
    EVEN_D: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    """V tile [BLOCK_N, HEAD_DIM], masked like `_load_k`."""
    ptrs = v_tile + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vk
    if MASK_KEYS:
        v = tl.load(ptrs, mask=(offs_n < n_valid)[:, None] & (offs_d < HEAD_D)[None, :], other=0.0)
    elif EVEN_D:
        v = tl.load(ptrs)
    else:
        v = tl.load(ptrs, mask=(offs_d < HEAD_D)[None, :], other=0.0)
    if DOT_F32:
        v = v.to(tl.float32)
    return v


@triton.jit
def _attend_tile(
    q,
    k_tile,
    v_tile,
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
    MASK_KEYS: tl.constexpr,
    EVEN_D: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    """Load one K/V tile and fold it into the online softmax: returns updated (m_i, l_i, acc)."""
    k = _load_k(k_tile, offs_n, offs_d, stride_kn, stride_kk, n_valid, HEAD_D, MASK_KEYS, EVEN_D, DOT_F32)
    v = _load_v(v_tile, offs_n, offs_d, stride_vn, stride_vk, n_valid, HEAD_D, MASK_KEYS, EVEN_D, DOT_F32)
    return _online_tile(q, k, v, offs_n, n_valid, m_i, l_i, acc, qk_scale, MASK_KEYS)


@triton.jit
def _online_tile(q, k, v, offs_n, n_valid, m_i, l_i, acc, qk_scale, MASK_KEYS: tl.constexpr):
    """One key tile of the online softmax: returns updated (m_i, l_i, acc). fp32 operands (interpreter only) use exact
    dots; fp16/bf16 dots accumulate in fp32 on tensor cores."""
    s = tl.dot(q, k, input_precision="ieee") * qk_scale
    if MASK_KEYS:
        s = tl.where((offs_n < n_valid)[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = _safe_max(m_new)
    alpha = tl.math.exp2(m_i - m_use)
    p = tl.math.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision="ieee")
    return m_new, l_i, acc


@triton.jit
def _store_out_lse(
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
):
    """Normalise and store the output; store the LSE in natural log (-inf and output 0 for empty rows)."""
    has = l_i > 0.0
    l_safe = tl.where(has, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(has, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("-inf"))  # * ln(2)
    m_valid = offs_m < SEQ_Q
    o_base = Out + off_b.to(tl.int64) * stride_oz + off_h.to(tl.int64) * stride_oh
    o_ptrs = o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_ok
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=m_valid[:, None] & (offs_d < HEAD_D)[None, :])
    l_base = Lse + off_b.to(tl.int64) * stride_lz + off_h.to(tl.int64) * stride_lh
    tl.store(l_base + offs_m * stride_lm, lse, mask=m_valid)


@triton.jit
def _block_sparse_fwd_kernel(
    Q,
    K,
    V,
    Out,
    Lse,
    KvNum,
    KvIdx,
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
    stride_nz,
    stride_nh,
    stride_nm,  #
    stride_iz,
    stride_ih,
    stride_im,
    stride_ik,  #
    H,
    GROUPS,
    SEQ_Q,
    SEQ_K,
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
    """Grid: (cdiv(SEQ_Q, BLOCK_M), B * H). `KvNum` counts only kept blocks starting below `SeqLensK[b]`."""
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
    row = pid_q // (MASK_BQ // BLOCK_M)  # this tile's row of the block mask
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
    count = tl.load(KvNum + off_b.to(tl.int64) * stride_nz + off_h * stride_nh + row * stride_nm)
    idx_base = KvIdx + off_b.to(tl.int64) * stride_iz + off_h.to(tl.int64) * stride_ih + row * stride_im
    n_interior = tl.maximum(count - 1, 0) * SPLIT
    for t in range(0, n_interior):  # every key of these tiles is valid: no mask, no branch
        start = tl.load(idx_base + (t // SPLIT) * stride_ik).to(tl.int64) * MASK_BK + (t % SPLIT) * BLOCK_N
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
    for t in range(n_interior, count * SPLIT):  # the last kept block: may hold the end of the valid keys
        start = tl.load(idx_base + (t // SPLIT) * stride_ik).to(tl.int64) * MASK_BK + (t % SPLIT) * BLOCK_N
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
