// The spec's asymmetric ("zeroq-asym") quantizer, shared by the C++ CPU and CUDA kernels.
//
// Every operation is written as one IEEE float32 step in the order of adadfq_fast/reference.py, so the
// kernels reproduce the reference bit for bit. That is why device code uses the explicit round-to-nearest
// intrinsics (nvcc would otherwise contract `scale * x - zp` into one fused multiply-add) and why the host
// build passes -ffp-contract=off. No torch headers here: nvcc must compile the .cu files with only this folder.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define ADADFQ_HD __host__ __device__ __forceinline__
#else
#define ADADFQ_HD inline
#endif

namespace adadfq {

// Smallest range width (spec: max(hi - lo, 1e-8)); keeps the scale finite for constant tensors.
constexpr float kRangeEps = 1e-8f;

ADADFQ_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

ADADFQ_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

ADADFQ_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

ADADFQ_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// Round half to even (torch.round), under the default rounding mode.
ADADFQ_HD float round_even(float v) {
#if defined(__CUDA_ARCH__)
  return rintf(v);
#else
  return std::nearbyint(v);
#endif
}

// Clamp that lets NaN through, like torch.clamp (comparisons with NaN are false).
ADADFQ_HD float clamp_nan(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

struct QuantParams {
  float scale;       // (1 / max(hi - lo, eps)) * (2^k - 1)
  float zero_point;  // round(scale * lo) + 2^(k-1)
  float qmin;        // -2^(k-1)
  float qmax;        // 2^(k-1) - 1
};

ADADFQ_HD QuantParams make_quant_params(int bits, float lo, float hi) {
  // scale = reciprocal(width) * (2^k - 1): the original's `n / clamp(hi - lo, 1e-8)` is a Python int divided by
  // a tensor, which PyTorch evaluates as a reciprocal then a multiply (two roundings), not one division.
  float width = sub_rn(hi, lo);
  width = width < kRangeEps ? kRangeEps : width;  // NaN stays NaN, as torch.clamp(min=eps) keeps it
  const float half = static_cast<float>(1 << (bits - 1));
  QuantParams p;
  p.scale = mul_rn(div_rn(1.0f, width), static_cast<float>((1 << bits) - 1));
  p.zero_point = add_rn(round_even(mul_rn(p.scale, lo)), half);
  p.qmin = -half;
  p.qmax = half - 1.0f;
  return p;
}

// Integer level q of x (as a float): clamp(round(scale * x - zp), qmin, qmax). Clamping first is exact because
// the bounds are integers.
ADADFQ_HD float quant_level(float x, const QuantParams& p) {
  return round_even(clamp_nan(sub_rn(mul_rn(p.scale, x), p.zero_point), p.qmin, p.qmax));
}

// x^ = (q + zp) / scale.
ADADFQ_HD float fake_quant_value(float x, const QuantParams& p) {
  return div_rn(add_rn(quant_level(x, p), p.zero_point), p.scale);
}

// The original QuantAct range update on (x_min, x_max, beta_t) from a batch's min/max. `beta` and `1 - beta`
// arrive as float32 values rounded separately from the double momentum (as the original's Python floats are).
struct ActRange {
  float x_min, x_max, beta_t;
};

ADADFQ_HD ActRange ema_range_update(ActRange s, float batch_min, float batch_max, float beta, float one_minus_beta) {
  ActRange r;
  r.beta_t = mul_rn(s.beta_t, beta);
  const float denom = sub_rn(1.0f, r.beta_t);
  r.x_min = div_rn(add_rn(mul_rn(s.x_min, beta), mul_rn(batch_min, one_minus_beta)), denom);
  r.x_max = div_rn(add_rn(mul_rn(s.x_max, beta), mul_rn(batch_max, one_minus_beta)), denom);
  return r;
}

}  // namespace adadfq
