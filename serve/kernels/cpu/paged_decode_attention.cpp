// Decode attention straight from the paged KV cache, for CPUs.
//
//   paged_decode_attention(q [B, Hq, D], k_cache [NB, BS, Hkv, D], v_cache (same), tables [B, MB]
//                          int64, lens [B] int64, scale) -> [B, Hq, D]
//
// One query token per sequence (a decode step): sequence b attends to its positions [0, lens[b])
// whose slots are tables[b][t / BS] * BS + t % BS. Nothing is gathered: each task (one sequence, one
// KV head) reads that head's K rows once for its g = Hq / Hkv query heads, takes an exact softmax
// (scores, max, exp, sum) and reads the V rows once. Cost follows the tokens attended; the call
// replaces a gather of K and V, transposes and an SDPA call per layer (~90 us at batch 1 on 2 cores).
// q and the caches share a dtype: float32 or bfloat16; arithmetic is float32.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

// A cache row as float32: float caches are read in place, bf16 rows converted into `buf`.
inline const float* row_f32(const float* src, int64_t, float*) { return src; }

inline const float* row_f32(const at::BFloat16* src, int64_t d, float* buf) {
  for (int64_t i = 0; i < d; ++i) buf[i] = static_cast<float>(src[i]);
  return buf;
}

// d % 8 == 0 (checked by the caller). Eight lanes of partial sums: a float reduction the compiler
// may not reorder on its own.
inline float dot(const float* a, const float* b, int64_t d) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < d; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s = _mm_hadd_ps(s, s);
  s = _mm_hadd_ps(s, s);
  return _mm_cvtss_f32(s);
}

template <typename T>
void attend(const T* q, const T* kc, const T* vc, const int64_t* tables, const int64_t* lens, T* out, int64_t batch,
            int64_t hq, int64_t hkv, int64_t d, int64_t bs, int64_t max_blocks, float scale) {
  const int64_t g = hq / hkv;
  at::parallel_for(0, batch * hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(g * d), acc(g * d), row(d), scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / hkv, h = task % hkv, len = lens[b];
      const int64_t* table = tables + b * max_blocks;
      scores.assign(g * len, 0.f);
      for (int64_t j = 0; j < g; ++j) {
        const float* qj = row_f32(q + (b * hq + h * g + j) * d, d, row.data());
        for (int64_t i = 0; i < d; ++i) qf[j * d + i] = qj[i] * scale;
      }
      for (int64_t t = 0; t < len; ++t) {
        const int64_t slot = table[t / bs] * bs + t % bs;
        const float* k = row_f32(kc + (slot * hkv + h) * d, d, row.data());
        for (int64_t j = 0; j < g; ++j) scores[j * len + t] = dot(qf.data() + j * d, k, d);
      }
      for (int64_t j = 0; j < g; ++j) {
        float* s = scores.data() + j * len;
        const float mx = len > 0 ? *std::max_element(s, s + len) : 0.f;
        float total = 0.f;
        for (int64_t t = 0; t < len; ++t) {
          s[t] = std::exp(s[t] - mx);
          total += s[t];
        }
        const float inv = total > 0.f ? 1.f / total : 0.f;
        for (int64_t t = 0; t < len; ++t) s[t] *= inv;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t = 0; t < len; ++t) {
        const int64_t slot = table[t / bs] * bs + t % bs;
        const float* v = row_f32(vc + (slot * hkv + h) * d, d, row.data());
        for (int64_t j = 0; j < g; ++j) {
          const float p = scores[j * len + t];
          float* __restrict a = acc.data() + j * d;
          for (int64_t i = 0; i < d; ++i) a[i] += p * v[i];
        }
      }
      for (int64_t j = 0; j < g; ++j) {
        T* o = out + (b * hq + h * g + j) * d;
        for (int64_t i = 0; i < d; ++i) o[i] = static_cast<T>(acc[j * d + i]);
      }
    }
  });
}

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& tables, const at::Tensor& lens, double scale) {
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(),
              "paged_decode_attention: q [B, Hq, D], caches [NB, BS, Hkv, D]");
  const int64_t batch = q.size(0), hq = q.size(1), d = q.size(2);
  const int64_t bs = k_cache.size(1), hkv = k_cache.size(2);
  TORCH_CHECK(k_cache.size(3) == d && hq % hkv == 0, "paged_decode_attention: head dims do not match");
  TORCH_CHECK(d % 8 == 0, "paged_decode_attention: head_dim must be a multiple of 8, got ", d);
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type() &&
                  (q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16),
              "paged_decode_attention: q and caches must share float32 or bfloat16");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "paged_decode_attention: caches must be contiguous");
  TORCH_CHECK(tables.dim() == 2 && tables.size(0) == batch && tables.scalar_type() == at::kLong &&
                  lens.dim() == 1 && lens.size(0) == batch && lens.scalar_type() == at::kLong,
              "paged_decode_attention: tables [B, MB] and lens [B] must be int64");
  const at::Tensor qc = q.contiguous(), tc = tables.contiguous(), lc = lens.contiguous();
  const int64_t* lp = lc.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(lp[b] >= 1 && lp[b] <= tc.size(1) * bs, "paged_decode_attention: context length ", lp[b],
                " of sequence ", b, " does not fit its block table");
  }
  at::Tensor out = at::empty_like(qc);
  if (q.scalar_type() == at::kFloat) {
    attend(qc.data_ptr<float>(), k_cache.data_ptr<float>(), v_cache.data_ptr<float>(), tc.data_ptr<int64_t>(), lp,
           out.data_ptr<float>(), batch, hq, hkv, d, bs, tc.size(1), static_cast<float>(scale));
  } else {
    attend(qc.data_ptr<at::BFloat16>(), k_cache.data_ptr<at::BFloat16>(), v_cache.data_ptr<at::BFloat16>(),
           tc.data_ptr<int64_t>(), lp, out.data_ptr<at::BFloat16>(), batch, hq, hkv, d, bs, tc.size(1),
           static_cast<float>(scale));
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sluice_cpu, m) {
  m.def("paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor tables, Tensor lens, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(sluice_cpu, CPU, m) { m.impl("paged_decode_attention", &paged_decode_attention); }
