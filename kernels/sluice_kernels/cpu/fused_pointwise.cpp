// Fused pointwise ops of a Llama block for float32 CPU activations.
//
// At batch 1 a decode step is ~60 small ATen calls per layer; an RMSNorm written as ATen ops is
// nine of them (~45 us on 2 cores for a [1, 576] row), a SwiGLU three. These do the same arithmetic
// in one pass each:
//
//   add_rms_norm(x [T, H], residual [T, H] or None, weight [H], eps) -> (normed, x + residual)
//       s = x (+ residual); normed = weight * s / sqrt(mean(s^2) + eps)   (statistics in float32)
//   silu_and_mul(x [T, 2I]) -> [T, I] = silu(x[:, :I]) * x[:, I:]
//   rotary_(x [T, H, D] (any token/head strides, unit last stride), cos, signed_sin [T, 1, D]) -> x,
//       in place: x * cos + roll(x, D/2) * signed_sin, i.e. HF's rotate_half RoPE (see
//       serve/layers/rotary.py), for the Q and K heads of a fused QKV output without copying them out.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include "isa.h"

#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>

namespace {

void check_f32_rows(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 2,
              what, " must be a float32 [T, H] CPU tensor");
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x_in, const std::optional<at::Tensor>& residual,
                                                const at::Tensor& weight, double eps) {
  check_f32_rows(x_in, "add_rms_norm: x");
  const int64_t t = x_in.size(0), h = x_in.size(1);
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.numel() == h, "add_rms_norm: weight must be float32 [H]");
  const at::Tensor x = x_in.contiguous(), w = weight.contiguous();
  at::Tensor sum = x;
  if (residual.has_value()) {
    check_f32_rows(*residual, "add_rms_norm: residual");
    TORCH_CHECK(residual->sizes() == x.sizes(), "add_rms_norm: residual shape differs from x");
    sum = at::empty_like(x);
  }
  at::Tensor out = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  const float* rp = residual.has_value() ? residual->contiguous().data_ptr<float>() : nullptr;
  const float* wp = w.data_ptr<float>();
  float* sp = sum.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, t, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* a = xp + r * h;
      float* s = sp + r * h;
      double ss = 0.0;  // wide accumulator: the statistic must not depend on the summation order much
      if (rp != nullptr) {
        const float* b = rp + r * h;
        for (int64_t i = 0; i < h; ++i) {
          s[i] = a[i] + b[i];
          ss += static_cast<double>(s[i]) * s[i];
        }
      } else {
        for (int64_t i = 0; i < h; ++i) ss += static_cast<double>(a[i]) * a[i];
        s = const_cast<float*>(a);
      }
      const float inv = 1.f / std::sqrt(static_cast<float>(ss / h) + static_cast<float>(eps));
      float* o = op + r * h;
      for (int64_t i = 0; i < h; ++i) o[i] = wp[i] * (s[i] * inv);
    }
  });
  return {out, sum};
}

at::Tensor silu_and_mul(const at::Tensor& x_in) {
  check_f32_rows(x_in, "silu_and_mul: x");
  TORCH_CHECK(x_in.size(1) % 2 == 0, "silu_and_mul: x must have an even number of columns");
  const at::Tensor x = x_in.contiguous();
  const int64_t t = x.size(0), half = x.size(1) / 2;
  at::Tensor out = at::empty({t, half}, x.options());
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, t, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* gate = xp + r * 2 * half;
      const float* up = gate + half;
      float* o = op + r * half;
      // Scalar std::exp on purpose: a vectorised exp differs in the last bit, enough to move a
      // near-tie downstream (measured: the w8a8 vs float agreement test flips a position).
      for (int64_t i = 0; i < half; ++i) o[i] = gate[i] / (1.f + std::exp(-gate[i])) * up[i];
    }
  });
  return out;
}

at::Tensor& rotary_(at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 3 && x.stride(2) == 1,
              "rotary_: x must be a float32 [T, H, D] CPU tensor with contiguous rows");
  const int64_t t = x.size(0), heads = x.size(1), d = x.size(2), half = d / 2;
  TORCH_CHECK(d % 2 == 0 && cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat &&
                  cos.numel() == t * d && sin.numel() == t * d,
              "rotary_: cos and signed_sin must be float32 [T, 1, D]");
  const at::Tensor c = cos.contiguous(), s = sin.contiguous();
  const float* cp = c.data_ptr<float>();
  const float* sp = s.data_ptr<float>();
  float* xp = x.data_ptr<float>();
  const int64_t st = x.stride(0), sh = x.stride(1);
  at::parallel_for(0, t, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* cr = cp + r * d;
      const float* sr = sp + r * d;
      for (int64_t h = 0; h < heads; ++h) {
        float* v = xp + r * st + h * sh;
        for (int64_t i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * cr[i] + b * sr[i];                // sr[i] = -sin: rotate_half's first half is -x2
          v[i + half] = b * cr[i + half] + a * sr[i + half];
        }
      }
    }
  });
  return x;
}

}  // namespace

SLUICE_FRAGMENT(m) {
  m.def("add_rms_norm(Tensor x, Tensor? residual, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def("silu_and_mul(Tensor x) -> Tensor");
  m.def("rotary_(Tensor(a!) x, Tensor cos, Tensor sin) -> Tensor(a!)");
}

SLUICE_IMPL(m) {
  m.impl("add_rms_norm", &add_rms_norm);
  m.impl("silu_and_mul", &silu_and_mul);
  m.impl("rotary_", &rotary_);
}
