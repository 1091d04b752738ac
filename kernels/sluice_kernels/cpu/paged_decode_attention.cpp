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
#include "vec_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
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

// Dots of q with eight K rows at once: eight independent FMA chains (one dot's chain is latency-bound)
// and one transposing reduction for all eight instead of a horizontal sum per row. out[r] = q . k[r].
inline __m256 dot8(const float* q, const float* const* k, int64_t d) {
  __m256 a[8];
  for (int r = 0; r < 8; ++r) a[r] = _mm256_setzero_ps();
  for (int64_t i = 0; i < d; i += 8) {
    const __m256 qv = _mm256_loadu_ps(q + i);
    for (int r = 0; r < 8; ++r) a[r] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[r] + i), a[r]);
  }
  const __m256 s01 = _mm256_hadd_ps(a[0], a[1]), s23 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 s45 = _mm256_hadd_ps(a[4], a[5]), s67 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
  // lanes of s0123: [r0 r1 r2 r3 | r0 r1 r2 r3] halves of the sums; same for s4567 with r4..r7
  return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
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

// sum_t p[t] * V[t] for head_dim 64 with the eight accumulators in registers (a runtime-sized
// accumulator array lives in memory: a store and a load around every FMA).
template <typename RowFn>
inline void weighted_sum_64(const float* p, int64_t len, RowFn&& v_row, __m256* out) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  for (int64_t t = 0; t < len; ++t) {
    const float* v = v_row(t);
    const __m256 pt = _mm256_set1_ps(p[t]);
    a0 = _mm256_fmadd_ps(pt, _mm256_loadu_ps(v), a0);
    a1 = _mm256_fmadd_ps(pt, _mm256_loadu_ps(v + 8), a1);
    a2 = _mm256_fmadd_ps(pt, _mm256_loadu_ps(v + 16), a2);
    a3 = _mm256_fmadd_ps(pt, _mm256_loadu_ps(v + 24), a3);
    a4 = _mm256_fmadd_ps(pt, _mm256_loadu_ps(v + 32), a4);
    a5 = _mm256_fmadd_ps(pt, _mm256_loadu_ps(v + 40), a5);
    a6 = _mm256_fmadd_ps(pt, _mm256_loadu_ps(v + 48), a6);
    a7 = _mm256_fmadd_ps(pt, _mm256_loadu_ps(v + 56), a7);
  }
  out[0] = a0; out[1] = a1; out[2] = a2; out[3] = a3; out[4] = a4; out[5] = a5; out[6] = a6; out[7] = a7;
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
      int64_t t = 0;
      if constexpr (std::is_same_v<T, float>) {
        for (; t + 8 <= len; t += 8) {
          const float* rows8[8];
          for (int r = 0; r < 8; ++r) {
            const int64_t slot = table[(t + r) / bs] * bs + (t + r) % bs;
            rows8[r] = kc + (slot * hkv + h) * d;
          }
          _mm256_storeu_ps(scores.data() + t, dot8(qf.data(), rows8, d));
        }
      }
      for (; t < len; ++t) {
        const int64_t slot = table[t / bs] * bs + t % bs;
        scores[t] = dot(qf.data(), row_f32(kc + (slot * hkv + h) * d, d, row.data()), d);
      }
      softmax(scores.data(), len);
      const auto v_row = [&](int64_t t) {
        const int64_t slot = table[t / bs] * bs + t % bs;
        return row_f32(vc + (slot * hkv + h) * d, d, row.data());
      };
      if (std::is_same_v<T, float> && d == 64) {
        weighted_sum_64(scores.data(), len, v_row, acc.data());
      } else {
        for (auto& a : acc) a = _mm256_setzero_ps();
        for (int64_t t = 0; t < len; ++t) {
          const float* v = v_row(t);
          const __m256 p = _mm256_set1_ps(scores[t]);
          for (int64_t c = 0; c < d / 8; ++c) acc[c] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8 * c), acc[c]);
        }
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
