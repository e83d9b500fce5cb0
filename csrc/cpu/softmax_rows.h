// Row-wise softmax statistics shared by the two AdaDFQ loss kernels on CPU.
#pragma once

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

}  // namespace adadfq::cpu
