// Row-wise softmax statistics shared by the two AdaDFQ loss kernels on CPU.
#pragma once

#include <type_traits>
#include <vector>

#include "cpu_common.h"

namespace adadfq::cpu {

// For one row z[0..n): log-sum-exp and the entropy of softmax(z), computed around the row max so that
// H = log(sum e) - sum(e * (z - max)) / sum(e) has no cancellation between two large numbers.
struct RowSoftmax {
  float lse;
  float entropy;
};

inline RowSoftmax row_softmax(const float* z, int64_t n) {
  float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
  for (int64_t k = 0; k < n; ++k) mx = z[k] > mx ? z[k] : mx;
  float se = 0.f, sez = 0.f;
#pragma omp simd reduction(+ : se, sez)
  for (int64_t k = 0; k < n; ++k) {
    const float zc = z[k] - mx;
    const float e = exp_approx(zc);
    se += e;
    sez += e * zc;
  }
  const float log_se = std::log(se);
  return {mx + log_se, log_se - sez / se};
}



// Rows of any storage type as float32: float rows are used in place, half/bfloat16 rows are converted into a
// scratch buffer. Keeps the arithmetic loops below free of conversions, which stop GCC from vectorizing them.
template <typename scalar_t>
inline const float* row_as_float(const scalar_t* row, int64_t n, std::vector<float>& scratch) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return row;
  } else {
    scratch.resize(n);
    for (int64_t k = 0; k < n; ++k) scratch[k] = static_cast<float>(row[k]);
    return scratch.data();
  }
}

template <typename scalar_t>
inline float* out_row_as_float(scalar_t* row, int64_t n, std::vector<float>& scratch) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return row;
  } else {
    scratch.resize(n);
    return scratch.data();
  }
}

template <typename scalar_t>
inline void store_row(const float* src, scalar_t* row, int64_t n) {
  if constexpr (!std::is_same_v<scalar_t, float>) {
    for (int64_t k = 0; k < n; ++k) row[k] = static_cast<scalar_t>(src[k]);
  }
}

// Gradients of one row of the generator loss: g_d = dh * dH/dd + cd * (p_d - onehot), g_a = ca * (p_a - onehot),
// dL/dt = g_d + g_a, dL/ds = g_a - g_d. The one-hot terms touch one element, so they are applied after the
// vector loop (a compare against the label inside it would stop vectorization).
inline void generator_grad_row(const float* t, const float* s, float* gt, float* gs, int64_t n, int64_t label,
                               float h, float lse_d, float lse_a, float dh, float cd, float ca) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    const float logp_d = (t[k] - s[k]) - lse_d;
    const float p_d = exp_approx(logp_d);
    const float p_a = exp_approx((t[k] + s[k]) - lse_a);
    const float g_d = dh * (-p_d * (logp_d + h)) + cd * p_d;
    const float g_a = ca * p_a;
    gt[k] = g_d + g_a;
    gs[k] = g_a - g_d;
  }
  if (label >= 0 && label < n) {
    gt[label] -= cd + ca;
    gs[label] -= ca - cd;
  }
}

// Gradient of one row of the student loss: coef * (-p (log p + H)), log p = (t - s) / T - lse.
inline void student_grad_row(const float* t, const float* s, float* gs, int64_t n, float inv_t, float lse, float h,
                             float coef) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    const float logp = (t[k] - s[k]) * inv_t - lse;
    const float p = exp_approx(logp);
    gs[k] = coef * (-p * (logp + h));
  }
}

}  // namespace adadfq::cpu
