// The integer-inference kernels that other C++ files call directly (the whole-network executor,
// int_program.cpp), with the signatures of their adadfq_native schemas (adadfq_fast/ops/native.py).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace adadfq::cpu {

// csrc/cpu/int_conv2d.cpp
at::Tensor int_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_zero,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      const at::Tensor& out_mult, const at::Tensor& out_bias, const std::optional<at::Tensor>& residual,
                      double residual_scale, bool relu, int64_t out_bits, double out_scale, double out_zero);

// The same with two options for callers that run a whole network (int_program.cpp): x_max_bound >= 0 is an upper
// bound of x's codes that the caller guarantees (else x is scanned); `reuse` (if not null) holds an output buffer
// from an earlier call, used when its shape, dtype and layout fit, else replaced by the new output.
at::Tensor int_conv2d_into(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_zero,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           const at::Tensor& out_mult, const at::Tensor& out_bias,
                           const std::optional<at::Tensor>& residual, double residual_scale, bool relu,
                           int64_t out_bits, double out_scale, double out_zero, int x_max_bound, at::Tensor* reuse);

// csrc/cpu/quantize_codes.cpp
at::Tensor quantize_codes(const at::Tensor& y, double scale, double zero, int64_t bits, bool relu,
                          const std::optional<at::Tensor>& channel_mult, const std::optional<at::Tensor>& channel_add);

}  // namespace adadfq::cpu
