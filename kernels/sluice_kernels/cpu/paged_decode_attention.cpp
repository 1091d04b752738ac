// Decode attention straight from the paged KV cache, for CPUs.
//
//   paged_decode_attention(q [B, Hq, D], k_cache [NB, BS, Hkv, D], v_cache (same), tables [B, MB]
//                          int64, lens [B] int64, scale[, k_new, v_new [B, Hkv, D], slots [B]])
//       -> [B, Hq, D]; with k_new / v_new / slots, this step's K/V rows are first written to their
//       cache slots (one call instead of two index_copy_ and the attention).
//
// One query token per sequence (a decode step): sequence b attends to its positions [0, lens[b])
// whose slots are tables[b][t / BS] * BS + t % BS. Nothing is gathered: each task (one sequence, one
// query head) reads its KV head's rows in place, takes an exact two-pass softmax (scores, max, exp,
// sum) and accumulates V in registers. Cost follows the tokens attended; the call replaces a gather
// of K and V, transposes and an SDPA call per layer (~90 us at batch 1 on 2 cores). Each task's
// arithmetic is the same whatever else is in the batch.
// q and the caches share a dtype: float32 or bfloat16; arithmetic is float32.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include "isa.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
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

// e^x for x <= 0 (softmax scores minus their max), 8 lanes: x = n ln2 + r, e^r by a degree-7
// polynomial on |r| <= ln2 / 2 (Cephes' expf coefficients), 2^n built in the exponent bits. Relative
// error ~2e-7; inputs below -87 give e^-87 (~1e-38), which a softmax cannot tell from 0.
inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// softmax in place over s[0, len)
inline void softmax(float* s, int64_t len) {
  float mx = s[0];
  for (int64_t t = 1; t < len; ++t) mx = std::max(mx, s[t]);
  const __m256 mv = _mm256_set1_ps(mx);
  __m256 total = _mm256_setzero_ps();
  int64_t t = 0;
  for (; t + 8 <= len; t += 8) {
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + t), mv));
    _mm256_storeu_ps(s + t, e);
    total = _mm256_add_ps(total, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, total);
  float sum = 0.f;
  for (float v : lanes) sum += v;
  for (; t < len; ++t) {
    s[t] = std::exp(s[t] - mx);
    sum += s[t];
  }
  const float inv = 1.f / sum;  // sum >= 1: the max scores e^0
  for (int64_t u = 0; u < len; ++u) s[u] *= inv;
}

// One task per (sequence, query head): the heads of a KV group read the same K/V rows (from cache
// after the first), and nine or more tasks keep both cores busy at batch 1.
template <typename T>
void attend(const T* q, const T* kc, const T* vc, const int64_t* tables, const int64_t* lens, T* out, int64_t batch,
            int64_t hq, int64_t hkv, int64_t d, int64_t bs, int64_t max_blocks, float scale) {
  const int64_t g = hq / hkv;
  at::parallel_for(0, batch * hq, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(d), row(d), scores;
    std::vector<__m256> acc(d / 8);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / hq, head = task % hq, h = head / g, len = lens[b];
      const int64_t* table = tables + b * max_blocks;
      const float* qh = row_f32(q + (b * hq + head) * d, d, row.data());
      for (int64_t i = 0; i < d; ++i) qf[i] = qh[i] * scale;
      scores.resize(len);
      for (int64_t t = 0; t < len; ++t) {
        const int64_t slot = table[t / bs] * bs + t % bs;
        scores[t] = dot(qf.data(), row_f32(kc + (slot * hkv + h) * d, d, row.data()), d);
      }
      softmax(scores.data(), len);
      for (auto& a : acc) a = _mm256_setzero_ps();
      for (int64_t t = 0; t < len; ++t) {
        const int64_t slot = table[t / bs] * bs + t % bs;
        const float* v = row_f32(vc + (slot * hkv + h) * d, d, row.data());
        const __m256 p = _mm256_set1_ps(scores[t]);
        for (int64_t c = 0; c < d / 8; ++c) acc[c] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8 * c), acc[c]);
      }
      T* o = out + (b * hq + head) * d;
      alignas(32) float buf[8];
      for (int64_t c = 0; c < d / 8; ++c) {
        _mm256_store_ps(buf, acc[c]);
        for (int i = 0; i < 8; ++i) o[8 * c + i] = static_cast<T>(buf[i]);
      }
    }
  });
}

// Copy row b of k_new / v_new ([B, Hkv, D]) into cache slot slots[b] (this step's K/V).
void write_rows(const at::Tensor& k_new, const at::Tensor& v_new, const at::Tensor& slots, at::Tensor& k_cache,
                at::Tensor& v_cache) {
  const int64_t batch = k_new.size(0), row = k_new.size(1) * k_new.size(2);
  const int64_t num_slots = k_cache.size(0) * k_cache.size(1);
  TORCH_CHECK(k_new.sizes() == v_new.sizes() && row == k_cache.size(2) * k_cache.size(3) &&
                  k_new.scalar_type() == k_cache.scalar_type() && v_new.scalar_type() == k_cache.scalar_type(),
              "paged_decode_attention: k_new / v_new must be [B, Hkv, D] in the cache dtype");
  TORCH_CHECK(slots.dim() == 1 && slots.size(0) == batch && slots.scalar_type() == at::kLong,
              "paged_decode_attention: slots must be int64 [B]");
  const at::Tensor kn = k_new.contiguous(), vn = v_new.contiguous(), sl = slots.contiguous();
  const int64_t* sp = sl.data_ptr<int64_t>();
  const size_t bytes = row * kn.element_size();
  auto* kc = static_cast<char*>(k_cache.data_ptr());
  auto* vc = static_cast<char*>(v_cache.data_ptr());
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(sp[b] >= 0 && sp[b] < num_slots, "paged_decode_attention: slot ", sp[b], " outside the cache");
    std::memcpy(kc + sp[b] * bytes, static_cast<const char*>(kn.data_ptr()) + b * bytes, bytes);
    std::memcpy(vc + sp[b] * bytes, static_cast<const char*>(vn.data_ptr()) + b * bytes, bytes);
  }
}

at::Tensor paged_decode_attention(const at::Tensor& q, at::Tensor k_cache, at::Tensor v_cache,
                                  const at::Tensor& tables, const at::Tensor& lens, double scale,
                                  const std::optional<at::Tensor>& k_new, const std::optional<at::Tensor>& v_new,
                                  const std::optional<at::Tensor>& slots) {
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
  if (k_new.has_value() || v_new.has_value() || slots.has_value()) {
    TORCH_CHECK(k_new.has_value() && v_new.has_value() && slots.has_value() && k_new->size(0) == batch,
                "paged_decode_attention: k_new, v_new and slots go together, one row per sequence");
    write_rows(*k_new, *v_new, *slots, k_cache, v_cache);
  }
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

SLUICE_FRAGMENT(m) {
  m.def("paged_decode_attention(Tensor q, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor tables, Tensor lens, "
        "float scale, Tensor? k_new=None, Tensor? v_new=None, Tensor? slots=None) -> Tensor");
}

SLUICE_IMPL(m) { m.impl("paged_decode_attention", &paged_decode_attention); }
