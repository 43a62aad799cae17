// Native CPU block-sparse flash-attention forward; built by kernels/cpu/launch.py (torch cpp_extension).
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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("block_sparse_fwd", &block_sparse_fwd, "block-sparse flash-attention forward with LSE (CPU)");
}
