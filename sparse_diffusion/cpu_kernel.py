"""Native CPU block-sparse flash-attention forward (C++, compiled on first use with torch's cpp_extension).

One task per (batch, head, query block), spread over torch's intra-op threads. For each kept key block it runs
`S = q k^T` and `acc += P v` as MKL single-precision GEMMs (the `sgemm_` that PyTorch's CPU build exports) on a
whole query block at once, with an online softmax in float32 between them, and writes the natural-log LSE. Inputs
of other float dtypes are computed in float32. Any strides with a unit head-dim stride; GQA reads K/V head
h // (H / HK) in place; partial tail blocks; per-batch valid key lengths (`seq_lens_k`: keys past them are skipped,
blocks entirely past them too); rows with no valid kept key give output 0 and LSE -inf.

Why: PyTorch's CPU flash kernel splits a 128-row query block into 32-row pieces, which keeps its GEMMs small; on the
2-core development machine this kernel reaches 4.3x dense SDPA at 20% density (float32), against 3.2x for compiled
flex_attention and for the gather backend.
"""

from __future__ import annotations

import functools
import hashlib
import logging

import torch


logger = logging.getLogger(__name__)

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

extern "C" void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                       const int*, const float*, const int*, const float*, float*, const int*);

std::vector<torch::Tensor> block_sparse_fwd(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor counts,
                                            torch::Tensor indices, torch::Tensor seq_lens, int64_t BQ, int64_t BK,
                                            double scale) {
  const int64_t B = q.size(0), H = q.size(1), Sq = q.size(2), D = q.size(3), HK = k.size(1), Sk = k.size(2);
  const int64_t G = H / HK, QB = (Sq + BQ - 1) / BQ, W = indices.size(3);
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "float32 q/k/v expected");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1, "head dim must have stride 1");
  TORCH_CHECK(k.stride(2) >= D && v.stride(2) >= D, "K/V sequence stride must be >= D (BLAS leading dimension)");
  TORCH_CHECK(counts.is_contiguous() && indices.is_contiguous() && counts.numel() == B * H * QB,
              "counts [B, H, QB] and indices [B, H, QB, W] must be contiguous int32");
  TORCH_CHECK(seq_lens.is_contiguous() && seq_lens.scalar_type() == at::kInt && seq_lens.numel() == B,
              "seq_lens must be contiguous int32 [B]");
  auto out = torch::empty({B, H, Sq, D}, q.options());
  auto lse = torch::empty({B, H, Sq}, q.options());
  const int64_t sqb = q.stride(0), sqh = q.stride(1), sqm = q.stride(2);
  const int64_t skb = k.stride(0), skh = k.stride(1), skn = k.stride(2);
  const int64_t svb = v.stride(0), svh = v.stride(1), svn = v.stride(2);
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  const int* cp = counts.data_ptr<int>();
  const int* ip = indices.data_ptr<int>();
  const int* lp_k = seq_lens.data_ptr<int>();
  float* op = out.data_ptr<float>();
  float* lp = lse.data_ptr<float>();
  const float neg_inf = -std::numeric_limits<float>::infinity();  // only stored, never computed with (-ffast-math)
  const float lowest = -1e30f;  // finite stand-in for -inf in the running max
  at::parallel_for(0, B * H * QB, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qs(BQ * D), s(BQ * BK), acc(BQ * D), mi(BQ), li(BQ);
    const int d_i = (int)D, ldk = (int)skn, ldv = (int)svn;
    const float one = 1.f, zero = 0.f;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (H * QB), h = (r / QB) % H, qb = r % QB, hk = h / G;
      const int m = (int)std::min(BQ, Sq - qb * BQ);
      const float* qrow = qp + b * sqb + h * sqh + qb * BQ * sqm;
      for (int i = 0; i < m; ++i)
        for (int64_t d = 0; d < D; ++d) qs[i * D + d] = qrow[i * sqm + d] * (float)scale;
      std::fill(acc.begin(), acc.begin() + m * D, 0.f);
      std::fill(mi.begin(), mi.begin() + m, lowest);
      std::fill(li.begin(), li.begin() + m, 0.f);
      const int count = cp[r];
      const int* row = ip + r * W;
      const int64_t valid_k = std::min<int64_t>(Sk, lp_k[b]);
      bool has = false;  // a kept block with a valid key was seen (not `li > 0`: NaN inputs must give NaN, and
                         // fast-math comparisons drop NaN)
      for (int t = 0; t < count; ++t) {
        const int64_t j = row[t];
        if (j * BK >= valid_k) continue;  // block entirely past this batch element's valid keys
        has = true;
        const int n = (int)std::min(BK, valid_k - j * BK);
        const float* kt = kp + b * skb + hk * skh + j * BK * skn;
        const float* vt = vp + b * svb + hk * svh + j * BK * svn;
        sgemm_("T", "N", &n, &m, &d_i, &one, kt, &ldk, qs.data(), &d_i, &zero, s.data(), &n);  // s = q k^T
        for (int i = 0; i < m; ++i) {
          float* si = s.data() + (int64_t)i * n;
          float mx = lowest;
          for (int x = 0; x < n; ++x) mx = std::max(mx, si[x]);
          const float m_new = std::max(mi[i], mx);
          const float alpha = std::exp(mi[i] - m_new);
          float sum = 0.f;
          for (int x = 0; x < n; ++x) {
            si[x] = std::exp(si[x] - m_new);
            sum += si[x];
          }
          li[i] = li[i] * alpha + sum;
          mi[i] = m_new;
          if (alpha != 1.f) {
            float* a = acc.data() + i * D;
            for (int64_t d = 0; d < D; ++d) a[d] *= alpha;
          }
        }
        sgemm_("N", "N", &d_i, &m, &n, &one, vt, &ldv, s.data(), &n, &one, acc.data(), &d_i);  // acc += p v
      }
      float* o = op + ((b * H + h) * Sq + qb * BQ) * D;
      float* l = lp + (b * H + h) * Sq + qb * BQ;
      for (int i = 0; i < m; ++i) {
        const float inv = has ? 1.f / li[i] : 0.f;
        for (int64_t d = 0; d < D; ++d) o[i * D + d] = acc[i * D + d] * inv;
        l[i] = has ? mi[i] + std::log(li[i]) : neg_inf;
      }
    }
  });
  return {out, lse};
}
"""


@functools.lru_cache(maxsize=1)
def _module():
    """Compile (about 30 s the first time; cached by torch under ~/.cache/torch_extensions) and load the kernel."""
    from torch.utils.cpp_extension import load_inline

    logger.info("sparse-diffusion: compiling the native CPU block-sparse kernel (first use only)")
    digest = hashlib.sha1(_SOURCE.encode()).hexdigest()[:12]  # one build folder per source: versions never mix
    return load_inline(
        f"sparse_diffusion_cpu_kernel_{digest}",
        cpp_sources=_SOURCE,
        functions=["block_sparse_fwd"],
        extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
    )


@functools.lru_cache(maxsize=1)
def build_error() -> str | None:
    """Why the kernel cannot be compiled here (no compiler, no ninja, ...), or None once it is loaded."""
    try:
        _module()
    except Exception as exc:  # any toolchain failure means: this backend cannot serve
        logger.info("sparse-diffusion: native CPU kernel unavailable: %s", exc)
        return f"the native CPU kernel could not be compiled ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    return None


def not_supported_reasons(q: torch.Tensor) -> list[str]:
    reasons = []
    if q.device.type != "cpu":
        reasons.append(f"the native CPU kernel runs on CPU tensors, got {q.device.type}")
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        reasons.append(f"the native CPU kernel supports float32/bfloat16/float16, got {q.dtype}")
    if not reasons and build_error():
        reasons.append(build_error())
    return reasons


def block_sparse_attention(q, k, v, mask, scale: float, seq_lens_k=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernel (inputs validated by `ops`; head dims with unit stride; `seq_lens_k` int32 [B] or None).
    Returns (out in q's dtype, LSE)."""
    b, h, qb = q.shape[0], q.shape[1], mask.num_q_blocks
    qf, kf, vf = (t if t.dtype == torch.float32 else t.float() for t in (q, k, v))
    # K/V rows feed BLAS as matrices with leading dimension stride(2), which must be >= D (not expanded, not Sk=1 views)
    # (clone, not contiguous(): a size-1 dim with stride 1 already counts as contiguous)
    kf, vf = (t if t.stride(2) >= t.shape[3] else t.clone(memory_format=torch.contiguous_format) for t in (kf, vf))
    counts = mask.kv_num_blocks.expand(b, h, qb).to(torch.int32).contiguous()
    indices = mask.kv_indices.expand(b, h, qb, mask.kv_indices.shape[-1]).to(torch.int32).contiguous()
    if seq_lens_k is None:
        seq_lens_k = torch.full((b,), k.shape[2], dtype=torch.int32)
    lens = seq_lens_k.to(torch.int32).contiguous()
    out, lse = _module().block_sparse_fwd(
        qf, kf, vf, counts, indices, lens, mask.block_size[0], mask.block_size[1], scale
    )
    return out.to(q.dtype), lse
