// Block-quantized linear layers for x86 CPUs with AVX2: y = x @ W.T with W in 32-weight blocks.
//
// Small-batch decode on a CPU is bound by the bytes of weight read per token. These kernels read
// 4-bit or 8-bit weight blocks directly and never materialise a float weight: each activation row is
// quantized once per call to int8 in blocks of 32 (one scale per block), and every weight block meets
// its activation block in one integer multiply-add (`maddubs`), scaled to float once per block.
//
//   q4_linear(x [M, K], qs [N, K/32, 16] uint8, d [N, K/32] f16, m [N, K/32] f16) -> [M, N]
//       w = d * q + m, q in [0, 15]; byte j of a block holds element j (low nibble) and j + 16
//       (high nibble) -- the layout of ggml's Q4_1, so GGUF blocks load without repacking.
//   q8_linear(x [M, K], qs [N, K] int8, d [N, K/32] f16) -> [M, N]
//       w = d * q, q in [-127, 127] (ggml's Q8_0 values).
//
// x may be float32 or bfloat16; y has x's dtype. Rows of W are split across torch's intra-op
// threads; each task walks a few rows at a time so one activation block load feeds several rows.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t QK = 32;  // weights (and activations) per block
constexpr int ROWS = 4;     // weight rows per inner step

// Activation rows quantized to int8 blocks: codes, scale per block, scale * sum(codes) per block (the
// term that meets an asymmetric weight block's minimum).
//
// For 4-bit weights the codes of each pair of blocks (2p, 2p+1) are stored as [x_2p[0:16],
// x_2p+1[0:16], x_2p[16:32], x_2p+1[16:32]]: one 32-byte load of the weight pair's packed nibbles,
// masked, lines up with the first 32 bytes and, shifted, with the second, so two blocks cost one
// weight load and one unpack. A trailing odd block keeps the natural order.
struct QuantizedActivations {
  std::vector<int8_t> codes;
  std::vector<float> scale;
  std::vector<float> sum;
};

inline int64_t code_index(int64_t b, int64_t i, int64_t nb, bool pairs) {
  if (!pairs || (b == nb - 1 && nb % 2 == 1)) return b * QK + i;
  const int64_t pair_base = (b / 2) * 2 * QK, half = i / 16;
  return pair_base + half * 32 + (b % 2) * 16 + (i % 16);
}

template <typename T>
void quantize_rows(const T* x, int64_t m, int64_t k, bool pairs, QuantizedActivations& out) {
  const int64_t nb = k / QK;
  out.codes.resize(m * k);
  out.scale.resize(m * nb + 8);  // padded: kernels load 8 scales at a time
  out.sum.resize(m * nb + 8);
  at::parallel_for(0, m * nb, 256, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const T* src = x + blk * QK;  // rows are contiguous, so block blk of the whole matrix
      float buf[QK];
      float amax = 0.f;
      for (int64_t i = 0; i < QK; ++i) {
        buf[i] = static_cast<float>(src[i]);
        amax = std::max(amax, std::fabs(buf[i]));
      }
      const float inv = amax > 0.f ? 127.f / amax : 0.f;
      const int64_t row = blk / nb, b = blk % nb;
      int8_t* dst = out.codes.data() + row * k;
      int total = 0;
      for (int64_t i = 0; i < QK; ++i) {
        const int v = static_cast<int>(std::nearbyint(buf[i] * inv));
        dst[code_index(b, i, nb, pairs)] = static_cast<int8_t>(v);
        total += v;
      }
      out.scale[blk] = amax / 127.f;
      out.sum[blk] = out.scale[blk] * static_cast<float>(total);
    }
  });
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_hadd_ps(s, s);
  s = _mm_hadd_ps(s, s);
  return _mm_cvtss_f32(s);
}

inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

// dst[b] = half(d[b]) * xs[b] for b < nb, 8 at a time.
inline void block_scales(const uint16_t* d, const float* xs, int64_t nb, float* dst) {
  int64_t b = 0;
  for (; b + 8 <= nb; b += 8) {
    const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(d + b)));
    _mm256_storeu_ps(dst + b, _mm256_mul_ps(dv, _mm256_loadu_ps(xs + b)));
  }
  for (; b < nb; ++b) dst[b] = half_to_float(d[b]) * xs[b];
}

// sum_b half(m[b]) * xsum[b]
inline float min_term(const uint16_t* m, const float* xsum, int64_t nb) {
  __m256 acc = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 8 <= nb; b += 8) {
    const __m256 mv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m + b)));
    acc = _mm256_fmadd_ps(mv, _mm256_loadu_ps(xsum + b), acc);
  }
  float total = hsum(acc);
  for (; b < nb; ++b) total += half_to_float(m[b]) * xsum[b];
  return total;
}

// Per-task scratch: R rows of per-block scales (d * activation scale), padded for 8-wide loads.
struct Scratch {
  std::vector<float> ds;
  explicit Scratch(int64_t nb) : ds(static_cast<size_t>(ROWS * (nb + 8)), 0.f) {}
  float* row(int r, int64_t nb) { return ds.data() + r * (nb + 8); }
};

// R rows of a Q4 weight against one quantized activation row (codes in pair order).
// qs: row r at qs + r * nb * 16; d, m: row r at + r * nb.
template <int R>
inline void dot_q4(const uint8_t* qs, const uint16_t* d, const uint16_t* m, int64_t nb, const int8_t* xq,
                   const float* xs, const float* xsum, Scratch& scratch, float* out) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i pair_idx = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    block_scales(d + r * nb, xs, nb, scratch.row(r, nb));
  }
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    const __m256i xlo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * QK));
    const __m256i xhi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * QK + 32));
    for (int r = 0; r < R; ++r) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + (r * nb + b) * 16));
      const __m256i lo = _mm256_and_si256(raw, low4);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
      // int16 lanes: at most 4 * 15 * 127, no saturation. Lanes 0-3 are block b, 4-7 block b + 1.
      const __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo), _mm256_maddubs_epi16(hi, xhi));
      const __m256i p = _mm256_madd_epi16(p16, ones);
      const __m256 s = _mm256_permutevar8x32_ps(_mm256_loadu_ps(scratch.row(r, nb) + b), pair_idx);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc[r]);
    }
  }
  if (b < nb) {  // odd trailing block, natural order
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * QK));
    const __m128i low4h = _mm_set1_epi8(0x0F);
    for (int r = 0; r < R; ++r) {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs + (r * nb + b) * 16));
      const __m256i w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), low4h), _mm_and_si128(raw, low4h));
      const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(scratch.row(r, nb)[b]), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]) + min_term(m + r * nb, xsum, nb);
}

// R rows of a Q8 weight (row stride nb * 32 codes) against one quantized activation row.
template <int R>
inline void dot_q8(const int8_t* qs, const uint16_t* d, int64_t nb, const int8_t* xq, const float* xs,
                   Scratch& scratch, float* out) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    block_scales(d + r * nb, xs, nb, scratch.row(r, nb));
  }
  for (int64_t b = 0; b < nb; ++b) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * QK));
    for (int r = 0; r < R; ++r) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + (r * nb + b) * QK));
      // maddubs multiplies unsigned by signed bytes: move w's sign onto x and use |w|.
      const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)), ones);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcast_ss(scratch.row(r, nb) + b), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]);
}

QuantizedActivations quantize_input(const at::Tensor& x, bool pairs) {
  QuantizedActivations qa;
  const int64_t m = x.size(0), k = x.size(1);
  if (x.scalar_type() == at::kFloat) {
    quantize_rows(x.data_ptr<float>(), m, k, pairs, qa);
  } else {
    quantize_rows(x.data_ptr<at::BFloat16>(), m, k, pairs, qa);
  }
  return qa;
}

void check_input(const at::Tensor& x, int64_t k_expected) {
  TORCH_CHECK(x.device().is_cpu(), "quantized CPU linear: x must be on the CPU");
  TORCH_CHECK(x.dim() == 2, "quantized CPU linear: x must be [M, K], got ", x.dim(), " dims");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "quantized CPU linear: x must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.size(1) == k_expected, "quantized CPU linear: x has K=", x.size(1), ", weight has K=", k_expected);
}

void check_scales(const at::Tensor& t, int64_t n, int64_t nb, const char* what) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == n && t.size(1) == nb && t.scalar_type() == at::kHalf && t.is_contiguous(),
              what, " must be contiguous float16 [N, K/32] = [", n, ", ", nb, "]");
}

// Walks weight rows in groups of ROWS (split across threads) and, inside a group, every input row, so
// the group's weight bytes are read from memory once per call whatever M is.
template <typename RowDot>
at::Tensor run_rows(const at::Tensor& x, int64_t n, int64_t nb, RowDot&& row_dot) {
  const int64_t m = x.size(0);
  at::Tensor y = at::empty({m, n}, x.options().dtype(at::kFloat));
  float* out = y.data_ptr<float>();
  const int64_t groups = (n + ROWS - 1) / ROWS;
  // Small grain: even a 576-row projection should use every thread (parallel_for makes at most one
  // chunk per thread; the grain only stops it from splitting tiny matrices).
  const int64_t grain = std::max<int64_t>(1, 512 / (nb * m));
  at::parallel_for(0, groups, grain, [&](int64_t g0, int64_t g1) {
    Scratch scratch(nb);
    float tmp[ROWS];
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t n0 = g * ROWS;
      const int64_t rows = std::min<int64_t>(ROWS, n - n0);
      for (int64_t i = 0; i < m; ++i) {
        row_dot(n0, rows, i, scratch, tmp);
        for (int64_t r = 0; r < rows; ++r) out[i * n + n0 + r] = tmp[r];
      }
    }
  });
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

const uint16_t* half_bits(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::Half>()); }

at::Tensor q4_linear(const at::Tensor& x_in, const at::Tensor& qs, const at::Tensor& d, const at::Tensor& m) {
  TORCH_CHECK(qs.dim() == 3 && qs.size(2) == 16 && qs.scalar_type() == at::kByte && qs.is_contiguous(),
              "q4_linear: qs must be contiguous uint8 [N, K/32, 16]");
  const int64_t n = qs.size(0), nb = qs.size(1);
  check_scales(d, n, nb, "q4_linear: d");
  check_scales(m, n, nb, "q4_linear: m");
  check_input(x_in, nb * QK);
  const at::Tensor x = x_in.contiguous();
  const QuantizedActivations qa = quantize_input(x, /*pairs=*/true);
  const uint8_t* w = qs.data_ptr<uint8_t>();
  const uint16_t *dp = half_bits(d), *mp = half_bits(m);
  return run_rows(x, n, nb, [&](int64_t n0, int64_t rows, int64_t i, Scratch& scratch, float* out) {
    const int8_t* xq = qa.codes.data() + i * nb * QK;
    const float* xs = qa.scale.data() + i * nb;
    const float* xsum = qa.sum.data() + i * nb;
    if (rows == ROWS) {
      dot_q4<ROWS>(w + n0 * nb * 16, dp + n0 * nb, mp + n0 * nb, nb, xq, xs, xsum, scratch, out);
    } else {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t row = n0 + r;
        dot_q4<1>(w + row * nb * 16, dp + row * nb, mp + row * nb, nb, xq, xs, xsum, scratch, out + r);
      }
    }
  });
}

at::Tensor q8_linear(const at::Tensor& x_in, const at::Tensor& qs, const at::Tensor& d) {
  TORCH_CHECK(qs.dim() == 2 && qs.size(1) % QK == 0 && qs.scalar_type() == at::kChar && qs.is_contiguous(),
              "q8_linear: qs must be contiguous int8 [N, K] with K a multiple of 32");
  const int64_t n = qs.size(0), nb = qs.size(1) / QK;
  check_scales(d, n, nb, "q8_linear: d");
  check_input(x_in, nb * QK);
  const at::Tensor x = x_in.contiguous();
  const QuantizedActivations qa = quantize_input(x, /*pairs=*/false);
  const int8_t* w = qs.data_ptr<int8_t>();
  const uint16_t* dp = half_bits(d);
  return run_rows(x, n, nb, [&](int64_t n0, int64_t rows, int64_t i, Scratch& scratch, float* out) {
    const int8_t* xq = qa.codes.data() + i * nb * QK;
    const float* xs = qa.scale.data() + i * nb;
    if (rows == ROWS) {
      dot_q8<ROWS>(w + n0 * nb * QK, dp + n0 * nb, nb, xq, xs, scratch, out);
    } else {
      for (int64_t r = 0; r < rows; ++r) dot_q8<1>(w + (n0 + r) * nb * QK, dp + (n0 + r) * nb, nb, xq, xs, scratch, out + r);
    }
  });
}

}  // namespace

TORCH_LIBRARY(sluice_cpu, m) {
  m.def("q4_linear(Tensor x, Tensor qs, Tensor d, Tensor m) -> Tensor");
  m.def("q8_linear(Tensor x, Tensor qs, Tensor d) -> Tensor");
}

TORCH_LIBRARY_IMPL(sluice_cpu, CPU, m) {
  m.impl("q4_linear", &q4_linear);
  m.impl("q8_linear", &q8_linear);
}
