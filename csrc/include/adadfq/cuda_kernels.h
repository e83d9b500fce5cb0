// Launchers of the CUDA kernels (csrc/cuda/*.cu), callable from host C++ without torch.
//
// The .cu files hold pure CUDA (no torch headers, so each compiles alone with nvcc and this folder); the torch
// bindings (csrc/cuda/*_binding.cpp) allocate every buffer, pick the stream and call these. Conventions:
// * Pointers are device pointers. Element data is float32, float16 or bfloat16 (`DType`); arithmetic is float32.
// * A dense tensor is read as flat memory: element i belongs to channel (i / inner) % channels, where
//   inner = x.stride(axis) (or numel when there is a single channel).
// * Nothing here allocates, synchronizes or reads device memory on the host, so every launcher may run while a
//   CUDA graph is being captured. Scratch buffers come from the caller (the torch caching allocator).
// * Each launcher returns cudaGetLastError() after its launches (cudaSuccess when there was nothing to do).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace adadfq {
namespace cuda {

enum class DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// ---- fake_quant: the spec quantizer over given ranges. lo/hi: float32 arrays of `channels` values.
cudaError_t launch_fake_quant(const void* x, void* out, DType dtype, int64_t numel, int64_t inner, int64_t channels,
                              const float* lo, const float* hi, int bits, cudaStream_t stream);

// ---- fake_quant_weight: per-channel min/max along the weight's dim 0, then quantization (one fused launch).
cudaError_t launch_fake_quant_weight(const void* w, void* out, DType dtype, int64_t numel, int64_t inner,
                                     int64_t channels, int bits, cudaStream_t stream);

// ---- fake_quant_act: batch min/max, the original EMA range update, quantization over the new range.
// Float32 scratch entries the launcher needs for `numel` elements (block partials of min and max).
int64_t fake_quant_act_scratch_floats(int64_t numel);
// update: new_state = ema_range_update(state, min(x), max(x)) written on the device, then x is quantized over
// new_state[0..1]. Without update, x is quantized over state[0..1] and new_state is not touched (the caller
// copies state). `beta` and `one_minus_beta` are float32 values each rounded from the double momentum.
cudaError_t launch_fake_quant_act(const void* x, void* out, DType dtype, int64_t numel, const float* state,
                                  float* new_state, float* scratch, int bits, float beta, float one_minus_beta,
                                  bool update, cudaStream_t stream);

// ---- bn_stat_loss: one entry per BatchNorm input. The caller fills the first block of fields; the plan
// fields are filled by bn_stat_loss_plan (host only) and travel to the device inside the scratch buffer.
struct BnLayer {
  // Filled by the caller.
  const void* x;              // [N, C, ...] dense; channel of flat element i = (i / inner) % channels
  const void* running_mean;   // [C], contiguous
  const void* running_var;    // [C], contiguous
  void* grad_x;               // backward only: output like x (same strides)
  int64_t numel;
  int64_t inner;              // x.stride(1) (numel when C == 1)
  int64_t channels;
  DType x_dtype, rm_dtype, rv_dtype;
  // Filled by bn_stat_loss_plan.
  int32_t row_major;          // 1: inner == 1 (channels_last, [N, C]); a block reads 32 channels side by side
  int64_t per_channel;        // M = numel / C, the elements behind each statistic
  int64_t chan_offset;        // first column of this layer in stats [2, sum C]
  int64_t split_len;          // elements of one channel handled by one forward block
  int64_t splits;             // forward blocks per channel (group)
  int64_t fwd_block_offset;   // first forward block of this layer
  int64_t bwd_block_offset;   // first backward block of this layer
  int64_t part_offset;        // first partial-sum slot (channels * splits of them)
  float grad_denom;           // float32(L * C * M), the reference's divisor of the upstream gradient
};

struct BnPlan {
  int64_t scratch_bytes;           // forward device scratch the caller allocates (layer table, partial sums, counter)
  int64_t backward_scratch_bytes;  // backward device scratch (the layer table only)
  int64_t total_channels;     // sum of C: stats is float32 [2, total_channels]
  int64_t fwd_blocks;
  int64_t bwd_blocks;
};

// Fills the plan fields of `layers` (host array) and returns the sizes. Pure host arithmetic.
BnPlan bn_stat_loss_plan(BnLayer* layers, int num_layers);
// loss: float32 scalar; stats: float32 [2, total_channels] (means; biased variances).
cudaError_t launch_bn_stat_loss(const BnLayer* layers, int num_layers, const BnPlan& plan, float* loss,
                                float* stats, void* scratch, cudaStream_t stream);
// grad: float32 scalar (device); writes every layer's grad_x.
cudaError_t launch_bn_stat_loss_backward(const BnLayer* layers, int num_layers, const BnPlan& plan,
                                         const float* grad, const float* stats, void* scratch, cudaStream_t stream);

// ---- generator loss (L_margin, L_bal). t, s: [B, C] contiguous (dtypes may differ); y: int64 [B].
// row_stats: float32 [3, B] = [H; lse(t - s); lse(t + s)]. scalars: float32 L_margin, L_bal.
// log_c: float32(ln C) rounded from the double; lambda/alpha: float32 values of the Python floats.
struct GeneratorLossArgs {
  const void* t;
  const void* s;
  DType t_dtype, s_dtype;
  const int64_t* y;
  int64_t batch, classes;
  float lambda_l, lambda_u, alpha_ds, alpha_as, log_c;
};
cudaError_t launch_generator_loss(const GeneratorLossArgs& args, float* margin, float* bal, float* row_stats,
                                  cudaStream_t stream);
// grad_margin, grad_bal: float32 scalars (device). grad_t / grad_s: [B, C] contiguous in t's / s's dtype.
cudaError_t launch_generator_loss_backward(const GeneratorLossArgs& args, const float* grad_margin,
                                           const float* grad_bal, const float* row_stats, void* grad_t, void* grad_s,
                                           cudaStream_t stream);

// ---- student loss L_Q. row_stats: float32 [2, B] = [H; lse((t - s) / T)]; loss: float32 scalar.
struct StudentLossArgs {
  const void* t;
  const void* s;
  DType t_dtype, s_dtype;
  int64_t batch, classes;
  float temperature;     // float32(T)
  float neg_t_squared;   // float32(-(T * T)), the reference's Python-float factor
  float t_over_batch;    // float32(T / B)
};
cudaError_t launch_student_loss(const StudentLossArgs& args, float* loss, float* row_stats, cudaStream_t stream);
// grad: float32 scalar (device); grad_s: [B, C] contiguous in s's dtype.
cudaError_t launch_student_loss_backward(const StudentLossArgs& args, const float* grad, const float* row_stats,
                                         void* grad_s, cudaStream_t stream);

// ---- int_conv2d: uint8 activation codes x int8 weight levels (integer inference; schema in
// adadfq_fast/ops/native.py, math in adadfq_fast/reference.py int_conv2d_forward). Every tensor is read and
// written through its element strides, in (n, c, h, w) / (o, c, kh, kw) order. The sums are exact integers
// (int32 dot products, int64 for acc + z_w * box), then the float32 epilogue in the reference's order.
struct IntConv2dArgs {
  const uint8_t* x;           // [N, C, H, W] codes m
  int64_t x_stride[4];
  const int8_t* weight;       // [O, C/groups, kh, kw] levels q_w (fastest when input channels are contiguous)
  int64_t w_stride[4];
  const int32_t* weight_zero; // [O] z_w, contiguous
  const float* out_mult;      // [O], contiguous
  const float* out_bias;      // [O], contiguous
  const void* residual;       // nullptr, float32 or uint8 codes [N, O, Ho, Wo]
  int32_t residual_kind;      // 0: none, 1: float32, 2: uint8 codes (divided by residual_scale)
  int64_t r_stride[4];
  void* out;                  // [N, O, Ho, Wo]: float32 (out_bits == 0) or uint8 codes
  int64_t o_stride[4];
  int64_t batch, in_channels, height, width, out_channels, kernel_h, kernel_w, out_h, out_w;
  int32_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups;
  int32_t relu;
  int32_t out_bits;           // 0: float32 output, else 2..8
  float residual_scale, out_scale, out_zero;  // float32 values of the schema's doubles
};
// Returns cudaErrorInvalidValue for sizes outside the kernels' 32-bit pixel and tap indexing.
cudaError_t launch_int_conv2d(const IntConv2dArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace adadfq
