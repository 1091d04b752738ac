// Block-quantized linear layers for x86 CPUs with AVX2 (VNNI where built for it, see isa.h): y = x @ W.T with W in 32-weight blocks.
//
// Small-batch decode on a CPU is bound by the bytes of weight read per token. These kernels read
// 4-bit or 8-bit weight blocks directly and never materialise a float weight: each activation row is
// quantized once per call to int8 in blocks of 32 (scale = max|x| / 127, as llama.cpp's Q8_1), and
// every weight block meets its activation block in integer multiply-adds (`maddubs`), scaled to
// float once per block.
//
// Weights are stored 8 rows interleaved (serve/layers/quant/blocks.py `interleave_q4x8` /
// `interleave_q8x8` build it from ggml's Q4_0/Q4_1/Q8_0 blocks): four activation codes broadcast to
// all lanes meet eight rows at once, the sums land one row per 32-bit lane (no horizontal
// reduction), and the eight rows' f16 scales load as one vector.
//
//   q4_linear(x [M, K], qs [G, K/32, 128] uint8, d [G, K/32, 8] f16, m [G, K/32, 8] f16, n) -> [M, n]
//       w = d * q + m, q in [0, 15]. For block b of row group g the 128 code bytes are four 32-byte
//       vectors P_0..P_3; byte 4r + t of P_k holds row r's element 4k + t in its low nibble and
//       element 4(k + 4) + t in its high nibble.
//   q8_linear(x [M, K], qs [G, K/32, 256] int8, d [G, K/32, 8] f16, n) -> [M, n]
//       w = d * q; byte 4r + t of the block's 32-byte vector c is row r's element 4c + t.
//
// G = ceil(n / 8); padding rows are zero. x may be float32 or bfloat16; y has x's dtype. Row groups
// are split across torch's intra-op threads; each group's weights are read once per input row.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include "isa.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace {

constexpr int64_t QK = 32;  // weights (and activations) per block

// Activation rows quantized to int8 blocks: codes, scale per block, scale * sum(codes) per block (the
// term that meets an asymmetric weight block's minimum).
struct QuantizedActivations {
  std::vector<int8_t> codes;
  std::vector<float> scale;
  std::vector<float> sum;
};

template <typename T>
void quantize_rows(const T* x, int64_t m, int64_t k, QuantizedActivations& out) {
  const int64_t nb = k / QK;
  out.codes.resize(m * k);
  out.scale.resize(m * nb);
  out.sum.resize(m * nb);
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
      int8_t* dst = out.codes.data() + blk * QK;
      int total = 0;
      for (int64_t i = 0; i < QK; ++i) {
        const int v = static_cast<int>(std::nearbyint(buf[i] * inv));
        dst[i] = static_cast<int8_t>(v);
        total += v;
      }
      out.scale[blk] = amax / 127.f;
      out.sum[blk] = out.scale[blk] * static_cast<float>(total);
    }
  });
}

// int32 sums of one 32-weight block for eight rows: lo[k] / hi[k] hold the low / high nibbles of the
// block's k-th code vector (see the layout above), xb the activation block's 32 int8 codes.
inline __m256i q4_block_dot(const __m256i* lo, const __m256i* hi, const int8_t* xb) {
#if SLUICE_VNNI
  __m256i s = _mm256_setzero_si256();
  for (int k = 0; k < 4; ++k) {
    int32_t xlo, xhi;
    std::memcpy(&xlo, xb + 4 * k, 4);
    std::memcpy(&xhi, xb + 4 * (k + 4), 4);
    s = dpbusd(s, lo[k], _mm256_set1_epi32(xlo));
    s = dpbusd(s, hi[k], _mm256_set1_epi32(xhi));
  }
  return s;
#else
  __m256i s16 = _mm256_setzero_si256();
  for (int k = 0; k < 4; ++k) {
    int32_t xlo, xhi;
    std::memcpy(&xlo, xb + 4 * k, 4);
    std::memcpy(&xhi, xb + 4 * (k + 4), 4);
    // int16 lanes: 16 products of at most 15 * 127 each, below 2^15.
    s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(lo[k], _mm256_set1_epi32(xlo)));
    s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(hi[k], _mm256_set1_epi32(xhi)));
  }
  return _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
#endif
}

// Eight rows of a Q4 weight (one row group) against T quantized activation rows (a token tile):
// each weight block is loaded and unpacked once for the whole tile, which is what makes prefill and
// batched decode cheaper per token than T single-row passes. out: T x 8 floats.
template <int T>
inline void dot_q4x8(const uint8_t* qs, const uint16_t* d, const uint16_t* m, int64_t nb, const int8_t* xq,
                     const float* xs, const float* xsum, float* out) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m256 acc[T], acc_min[T];
  for (int t = 0; t < T; ++t) acc[t] = acc_min[t] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* w = qs + b * 128;
    __m256i lo[4], hi[4];
    for (int k = 0; k < 4; ++k) {
      const __m256i p = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 * k));
      lo[k] = _mm256_and_si256(p, low4);
      hi[k] = _mm256_and_si256(_mm256_srli_epi16(p, 4), low4);
    }
    const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(d + b * 8)));
    const __m256 mv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m + b * 8)));
    for (int t = 0; t < T; ++t) {
      const int64_t at = t * nb + b;  // token t's block b
      const __m256i p32 = q4_block_dot(lo, hi, xq + at * QK);
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), _mm256_mul_ps(dv, _mm256_set1_ps(xs[at])), acc[t]);
      acc_min[t] = _mm256_fmadd_ps(mv, _mm256_set1_ps(xsum[at]), acc_min[t]);
    }
  }
  for (int t = 0; t < T; ++t) _mm256_storeu_ps(out + 8 * t, _mm256_add_ps(acc[t], acc_min[t]));
}

// Eight rows of a Q8 weight (one row group) against T quantized activation rows. out: T x 8 floats.
template <int T>
inline void dot_q8x8(const int8_t* qs, const uint16_t* d, int64_t nb, const int8_t* xq, const float* xs,
                     float* out) {
  __m256 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const int8_t* w = qs + b * 256;
    __m256i s32[T];
    for (int t = 0; t < T; ++t) s32[t] = _mm256_setzero_si256();
    for (int c = 0; c < 8; ++c) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 * c));
      const __m256i aw = _mm256_sign_epi8(wv, wv);
      for (int t = 0; t < T; ++t) {
        int32_t xc;
        std::memcpy(&xc, xq + (t * nb + b) * QK + 4 * c, 4);
        // |w| (unsigned) times x with w's sign: the same products, in the u8 x s8 form the dot needs.
        s32[t] = dpbusd(s32[t], aw, _mm256_sign_epi8(_mm256_set1_epi32(xc), wv));
      }
    }
    const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(d + b * 8)));
    for (int t = 0; t < T; ++t)
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[t]), _mm256_mul_ps(dv, _mm256_set1_ps(xs[t * nb + b])), acc[t]);
  }
  for (int t = 0; t < T; ++t) _mm256_storeu_ps(out + 8 * t, acc[t]);
}

QuantizedActivations quantize_input(const at::Tensor& x) {
  QuantizedActivations qa;
  const int64_t m = x.size(0), k = x.size(1);
  if (x.scalar_type() == at::kFloat) {
    quantize_rows(x.data_ptr<float>(), m, k, qa);
  } else {
    quantize_rows(x.data_ptr<at::BFloat16>(), m, k, qa);
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

void check_groups(const at::Tensor& t, int64_t groups, int64_t nb, int64_t lanes, at::ScalarType dtype,
                  const char* what) {
  TORCH_CHECK(t.dim() == 3 && t.size(0) == groups && t.size(1) == nb && t.size(2) == lanes &&
                  t.scalar_type() == dtype && t.is_contiguous(),
              what, " must be contiguous ", dtype, " [", groups, ", ", nb, ", ", lanes, "]");
}

// Checks x against an interleaved weight's codes [ceil(n/8), K/32, bytes]; returns (groups, K/32).
std::pair<int64_t, int64_t> check_weight(const at::Tensor& x, const at::Tensor& qs, int64_t n, int64_t bytes,
                                         at::ScalarType dtype, const std::string& op) {
  TORCH_CHECK(qs.dim() == 3, op, ": qs must be ", dtype, " [ceil(N/8), K/32, ", bytes, "]");
  const int64_t groups = qs.size(0), nb = qs.size(1);
  TORCH_CHECK(n > 0 && (n + 7) / 8 == groups, op, ": n=", n, " does not match ", groups, " row groups");
  check_groups(qs, groups, nb, bytes, dtype, (op + ": qs").c_str());
  check_input(x, nb * QK);
  return {groups, nb};
}

const uint16_t* half_bits(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::Half>()); }

#if SLUICE_VNNI && defined(__AVX512F__) && defined(__AVX512BW__)
#define SLUICE_ZMM 1
// Two row groups (16 rows) of a Q4 weight against T activation rows: the 256-bit code vectors of
// groups a and b side by side in one 512-bit register, so each instruction does both groups' work
// (prefill and batched decode are compute-bound here; batch 1 is bound by the weight bytes either way).
template <int T>
inline void dot_q4x16(const uint8_t* qa, const uint8_t* qb, const uint16_t* da, const uint16_t* db,
                      const uint16_t* ma, const uint16_t* mb, int64_t nb, const int8_t* xq, const float* xs,
                      const float* xsum, float* out) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512 acc[T], acc_min[T];
  for (int t = 0; t < T; ++t) acc[t] = acc_min[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m512i lo[4], hi[4];
    for (int k = 0; k < 4; ++k) {
      const __m512i p = _mm512_inserti64x4(
          _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(qa + b * 128 + 32 * k))),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qb + b * 128 + 32 * k)), 1);
      lo[k] = _mm512_and_si512(p, low4);
      hi[k] = _mm512_and_si512(_mm512_srli_epi16(p, 4), low4);
    }
    const auto halves = [b](const uint16_t* x, const uint16_t* y) {
      return _mm512_cvtph_ps(_mm256_inserti128_si256(
          _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + b * 8))),
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(y + b * 8)), 1));
    };
    const __m512 dv = halves(da, db), mv = halves(ma, mb);
    for (int t = 0; t < T; ++t) {
      const int64_t at = t * nb + b;
      const int8_t* xb = xq + at * QK;
      __m512i s = _mm512_setzero_si512();
      for (int k = 0; k < 4; ++k) {
        int32_t xlo, xhi;
        std::memcpy(&xlo, xb + 4 * k, 4);
        std::memcpy(&xhi, xb + 4 * (k + 4), 4);
        s = _mm512_dpbusd_epi32(s, lo[k], _mm512_set1_epi32(xlo));
        s = _mm512_dpbusd_epi32(s, hi[k], _mm512_set1_epi32(xhi));
      }
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dv, _mm512_set1_ps(xs[at])), acc[t]);
      acc_min[t] = _mm512_fmadd_ps(mv, _mm512_set1_ps(xsum[at]), acc_min[t]);
    }
  }
  for (int t = 0; t < T; ++t) _mm512_storeu_ps(out + 16 * t, _mm512_add_ps(acc[t], acc_min[t]));
}

// Two row groups (16 rows) of a Q8 weight against T activation rows, the groups side by side as in
// dot_q4x16. AVX-512 has no byte `sign`: x takes w's sign through a mask (x negated where w < 0).
template <int T>
inline void dot_q8x16(const int8_t* qa, const int8_t* qb, const uint16_t* da, const uint16_t* db, int64_t nb,
                      const int8_t* xq, const float* xs, float* out) {
  const __m512i zero = _mm512_setzero_si512();
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m512i s32[T];
    for (int t = 0; t < T; ++t) s32[t] = zero;
    for (int c = 0; c < 8; ++c) {
      const __m512i wv = _mm512_inserti64x4(
          _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(qa + b * 256 + 32 * c))),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qb + b * 256 + 32 * c)), 1);
      const __m512i aw = _mm512_abs_epi8(wv);
      const __mmask64 neg = _mm512_movepi8_mask(wv);
      for (int t = 0; t < T; ++t) {
        int32_t xc;
        std::memcpy(&xc, xq + (t * nb + b) * QK + 4 * c, 4);
        const __m512i xv = _mm512_set1_epi32(xc);
        s32[t] = _mm512_dpbusd_epi32(s32[t], aw, _mm512_mask_sub_epi8(xv, neg, zero, xv));
      }
    }
    const __m512 dv = _mm512_cvtph_ps(_mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(da + b * 8))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(db + b * 8)), 1));
    for (int t = 0; t < T; ++t)
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s32[t]), _mm512_mul_ps(dv, _mm512_set1_ps(xs[t * nb + b])), acc[t]);
  }
  for (int t = 0; t < T; ++t) _mm512_storeu_ps(out + 16 * t, acc[t]);
}
#else
#define SLUICE_ZMM 0
#endif

// Activation rows per weight pass: AVX-512 builds have 32 vector registers to hold the tile's
// accumulators, AVX2 builds 16.
constexpr int TILE = SLUICE_VNNI ? 8 : 4;

// For every unit of GU row groups (units split across threads; the last unit may hold fewer groups)
// and every tile of input rows: unit_dot(g, units_groups, i, rows, out) writes groups g ..
// g + units_groups - 1's outputs for input rows i .. i + rows - 1 (rows = TILE, or 1 at the end),
// units_groups * 8 floats per row.
template <int GU, typename UnitDot>
at::Tensor run_groups(const at::Tensor& x, int64_t n, int64_t groups, int64_t nb, UnitDot&& unit_dot) {
  const int64_t m = x.size(0);
  at::Tensor y = at::empty({m, n}, x.options().dtype(at::kFloat));
  float* out = y.data_ptr<float>();
  const int64_t units = (groups + GU - 1) / GU;
  // Small grain: even a 576-row projection should use every thread (parallel_for makes at most one
  // chunk per thread; the grain only stops it from splitting tiny matrices).
  const int64_t grain = std::max<int64_t>(1, 256 / (nb * m * GU));
  at::parallel_for(0, units, grain, [&](int64_t u0, int64_t u1) {
    alignas(64) float tmp[8 * GU * TILE];
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t g = u * GU, ng = std::min<int64_t>(GU, groups - g);
      const int64_t n0 = g * 8, cols = std::min<int64_t>(8 * ng, n - n0);
      for (int64_t i = 0; i < m;) {
        const int rows = m - i >= TILE ? TILE : 1;
        unit_dot(g, ng, i, rows, tmp);
        for (int t = 0; t < rows; ++t) std::memcpy(out + (i + t) * n + n0, tmp + 8 * ng * t, cols * sizeof(float));
        i += rows;
      }
    }
  });
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

at::Tensor q4_linear(const at::Tensor& x_in, const at::Tensor& qs, const at::Tensor& d, const at::Tensor& m,
                     int64_t n) {
  const auto [groups, nb] = check_weight(x_in, qs, n, 128, at::kByte, "q4_linear");
  check_groups(d, groups, nb, 8, at::kHalf, "q4_linear: d");
  check_groups(m, groups, nb, 8, at::kHalf, "q4_linear: m");
  const at::Tensor x = x_in.contiguous();
  const QuantizedActivations qa = quantize_input(x);
  const uint8_t* w = qs.data_ptr<uint8_t>();
  const uint16_t *dp = half_bits(d), *mp = half_bits(m);
  constexpr int GU = SLUICE_ZMM ? 2 : 1;
  return run_groups<GU>(x, n, groups, nb, [&](int64_t g, int64_t ng, int64_t i, int rows, float* out) {
    const uint8_t* wg = w + g * nb * 128;
    const uint16_t *dg = dp + g * nb * 8, *mg = mp + g * nb * 8;
    const int8_t* xq = qa.codes.data() + i * nb * QK;
    const float *xs = qa.scale.data() + i * nb, *xsum = qa.sum.data() + i * nb;
#if SLUICE_ZMM
    if (ng == 2 && rows > 1) {  // one row is bound by weight bytes: the 8-row path reads them as fast
      const int64_t next = nb * 128, nextd = nb * 8;
      dot_q4x16<TILE>(wg, wg + next, dg, dg + nextd, mg, mg + nextd, nb, xq, xs, xsum, out);
      return;
    }
    if (ng == 2) {  // a single row against two groups: 8 outputs each, side by side
      dot_q4x8<1>(wg, dg, mg, nb, xq, xs, xsum, out);
      dot_q4x8<1>(wg + nb * 128, dg + nb * 8, mg + nb * 8, nb, xq, xs, xsum, out + 8);
      return;
    }
#endif
    // one group (ng == 1): 8 outputs per row, the layout run_groups expects for it
    if (rows == TILE) dot_q4x8<TILE>(wg, dg, mg, nb, xq, xs, xsum, out);
    else dot_q4x8<1>(wg, dg, mg, nb, xq, xs, xsum, out);
  });
}

at::Tensor q8_linear(const at::Tensor& x_in, const at::Tensor& qs, const at::Tensor& d, int64_t n) {
  const auto [groups, nb] = check_weight(x_in, qs, n, 256, at::kChar, "q8_linear");
  check_groups(d, groups, nb, 8, at::kHalf, "q8_linear: d");
  const at::Tensor x = x_in.contiguous();
  const QuantizedActivations qa = quantize_input(x);
  const int8_t* w = qs.data_ptr<int8_t>();
  const uint16_t* dp = half_bits(d);
  constexpr int GU = SLUICE_ZMM ? 2 : 1;
  return run_groups<GU>(x, n, groups, nb, [&](int64_t g, int64_t ng, int64_t i, int rows, float* out) {
    const int8_t* wg = w + g * nb * 256;
    const uint16_t* dg = dp + g * nb * 8;
    const int8_t* xq = qa.codes.data() + i * nb * QK;
    const float* xs = qa.scale.data() + i * nb;
#if SLUICE_ZMM
    if (ng == 2 && rows > 1) {
      dot_q8x16<TILE>(wg, wg + nb * 256, dg, dg + nb * 8, nb, xq, xs, out);
      return;
    }
    if (ng == 2) {
      dot_q8x8<1>(wg, dg, nb, xq, xs, out);
      dot_q8x8<1>(wg + nb * 256, dg + nb * 8, nb, xq, xs, out + 8);
      return;
    }
#endif
    if (rows == TILE) dot_q8x8<TILE>(wg, dg, nb, xq, xs, out);
    else dot_q8x8<1>(wg, dg, nb, xq, xs, out);
  });
}

}  // namespace

SLUICE_LIBRARY(m) {
  m.def("q4_linear(Tensor x, Tensor qs, Tensor d, Tensor m, int n) -> Tensor");
  m.def("q8_linear(Tensor x, Tensor qs, Tensor d, int n) -> Tensor");
}

SLUICE_IMPL(m) {
  m.impl("q4_linear", &q4_linear);
  m.impl("q8_linear", &q8_linear);
}
