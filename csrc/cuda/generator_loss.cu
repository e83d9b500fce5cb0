// adadfq_native::generator_loss / generator_loss_backward on CUDA: AdaDFQ's (L_margin, L_bal) for logits t, s.
//
// One warp per row: three passes over the row (max; sum of exponentials; entropy), re-reading t and s from L1,
// give H = entropy(softmax(t - s)), lse(t - s) and lse(t + s). The batch quantities (min H, the means) need every
// row, so for the usual small batches (B = 16, C <= 1000) one block does the rows and then the batch reduction
// in a single launch; large batches use a row kernel over many blocks plus a one-block finishing kernel.
// Backward: one launch; every block recomputes the batch quantities (min H, ties, sum m_i (H_i - ln C)) from the
// saved row statistics (B floats), then its warps write one row of both gradients each.
// Arithmetic follows the reference's float32 order with explicit round-to-nearest steps (no FMA contraction).
#include "cuda_common.cuh"

namespace adadfq {
namespace cuda {
namespace {

using namespace detail;

constexpr int kRowThreads = 256;      // 8 rows per block in the row and backward kernels
constexpr int kSingleThreads = 512;   // one block: 16 warps share the rows, then reduce the batch
constexpr int64_t kSingleBlockMaxElements = 65536;
constexpr int64_t kSingleBlockMaxRows = 128;

// Element j of row `row` of t and s, as float32 (held by value: no reference into kernel-parameter space).
struct Logits {
  const void* t_ptr;
  const void* s_ptr;
  DType t_dtype, s_dtype;
  int64_t offset;
  __device__ Logits(const GeneratorLossArgs& a, int64_t row)
      : t_ptr(a.t), s_ptr(a.s), t_dtype(a.t_dtype), s_dtype(a.s_dtype), offset(row * a.classes) {}
  __device__ __forceinline__ float t(int64_t j) const { return load_as_float(t_ptr, t_dtype, offset + j); }
  __device__ __forceinline__ float s(int64_t j) const { return load_as_float(s_ptr, s_dtype, offset + j); }
};

// torch.logsumexp's shift: the max, or 0 when the max is infinite.
__device__ __forceinline__ float lse_shift(float mx) { return isinf(mx) ? 0.0f : mx; }

// Row statistics of one row by one warp; lane 0 writes [H; lse_d; lse_a].
__device__ void row_pass(const GeneratorLossArgs& args, int64_t row, float* __restrict__ row_stats) {
  const int lane = threadIdx.x & 31;
  const Logits z(args, row);
  const int64_t C = args.classes;
  const float inf = __int_as_float(0x7f800000);
  float max_d = -inf, max_a = -inf;
  for (int64_t j = lane; j < C; j += 32) {
    const float t = z.t(j), s = z.s(j);
    max_d = nan_max(max_d, t - s);
    max_a = nan_max(max_a, t + s);
  }
  const float shift_d = lse_shift(warp_reduce(max_d, MaxOp{}));
  const float shift_a = lse_shift(warp_reduce(max_a, MaxOp{}));
  float sum_d = 0.0f, sum_a = 0.0f;
  for (int64_t j = lane; j < C; j += 32) {
    const float t = z.t(j), s = z.s(j);
    sum_d += expf((t - s) - shift_d);
    sum_a += expf((t + s) - shift_a);
  }
  const float lse_d = logf(warp_reduce(sum_d, SumOp{})) + shift_d;
  const float lse_a = logf(warp_reduce(sum_a, SumOp{})) + shift_a;
  float plogp = 0.0f;
  for (int64_t j = lane; j < C; j += 32) {
    const float logp = (z.t(j) - z.s(j)) - lse_d;
    plogp = add_rn(plogp, mul_rn(expf(logp), logp));
  }
  const float h = -warp_reduce(plogp, SumOp{});
  if (lane == 0) {
    row_stats[row] = h;
    row_stats[args.batch + row] = lse_d;
    row_stats[2 * args.batch + row] = lse_a;
  }
}

// t[i, y_i] -/+ s[i, y_i], NaN for a label outside [0, C) (never read out of bounds; torch would raise).
__device__ __forceinline__ void label_logits(const GeneratorLossArgs& args, int64_t row, float& d, float& a) {
  const int64_t y = args.y[row];
  if (y < 0 || y >= args.classes) {
    d = a = __int_as_float(0x7fc00000);
    return;
  }
  const Logits z(args, row);
  const float t = z.t(y), s = z.s(y);
  d = t - s;
  a = t + s;
}

// Batch reduction by one block, after row_stats is complete and visible to it.
__device__ void finish(const GeneratorLossArgs& args, const float* __restrict__ row_stats, float* __restrict__ margin,
                       float* __restrict__ bal) {
  __shared__ float smem[32];
  const int64_t B = args.batch;
  const float inf = __int_as_float(0x7f800000);
  float h_min = inf;
  for (int64_t i = threadIdx.x; i < B; i += blockDim.x) h_min = nan_min(h_min, row_stats[i]);
  h_min = block_reduce(h_min, MinOp{}, inf, smem);
  const float denom = sub_rn(args.log_c, h_min);
  float low = 0.0f, high = 0.0f, ce_d = 0.0f, ce_a = 0.0f;
  for (int64_t i = threadIdx.x; i < B; i += blockDim.x) {
    const float hn = div_rn(sub_rn(row_stats[i], h_min), denom);
    low += relu_nan(sub_rn(args.lambda_l, hn));
    high += relu_nan(sub_rn(hn, args.lambda_u));
    float zd, za;
    label_logits(args, i, zd, za);
    ce_d += row_stats[B + i] - zd;
    ce_a += row_stats[2 * B + i] - za;
  }
  low = block_reduce(low, SumOp{}, 0.0f, smem);
  high = block_reduce(high, SumOp{}, 0.0f, smem);
  ce_d = block_reduce(ce_d, SumOp{}, 0.0f, smem);
  ce_a = block_reduce(ce_a, SumOp{}, 0.0f, smem);
  if (threadIdx.x == 0) {
    const float b = static_cast<float>(B);
    *margin = add_rn(div_rn(low, b), div_rn(high, b));
    *bal = add_rn(mul_rn(args.alpha_ds, div_rn(ce_d, b)), mul_rn(args.alpha_as, div_rn(ce_a, b)));
  }
}

__global__ void __launch_bounds__(kSingleThreads)
    generator_loss_single_kernel(const GeneratorLossArgs args, float* margin, float* bal, float* row_stats) {
  const int warps = blockDim.x >> 5;
  for (int64_t row = threadIdx.x >> 5; row < args.batch; row += warps) row_pass(args, row, row_stats);
  __syncthreads();  // row_stats written by this block's warps is now visible to all its threads
  finish(args, row_stats, margin, bal);
}

__global__ void __launch_bounds__(kRowThreads) generator_loss_rows_kernel(const GeneratorLossArgs args, float* row_stats) {
  const int64_t row = int64_t{blockIdx.x} * (kRowThreads / 32) + (threadIdx.x >> 5);
  if (row < args.batch) row_pass(args, row, row_stats);
}

__global__ void __launch_bounds__(kSingleThreads)
    generator_loss_finish_kernel(const GeneratorLossArgs args, float* margin, float* bal, const float* row_stats) {
  finish(args, row_stats, margin, bal);
}

__global__ void __launch_bounds__(kRowThreads)
    generator_loss_backward_kernel(const GeneratorLossArgs args, const float* __restrict__ grad_margin,
                                   const float* __restrict__ grad_bal, const float* __restrict__ row_stats,
                                   void* grad_t, void* grad_s) {
  __shared__ float smem[32];
  const int64_t B = args.batch, C = args.classes;
  const float b = static_cast<float>(B);
  // Batch quantities, recomputed by every block (B floats, cheap) so that one launch suffices.
  const float inf = __int_as_float(0x7f800000);
  float h_min = inf;
  for (int64_t i = threadIdx.x; i < B; i += blockDim.x) h_min = nan_min(h_min, row_stats[i]);
  h_min = block_reduce(h_min, MinOp{}, inf, smem);
  const float denom = sub_rn(args.log_c, h_min);
  // m_i = dL_margin / dH'_i; the sample(s) at the minimum also carry sum_i m_i (H_i - ln C) / D^2, split evenly.
  auto m_of = [&](float h) {
    const float hn = div_rn(sub_rn(h, h_min), denom);
    const float up = sub_rn(hn, args.lambda_u) > 0.0f ? 1.0f : 0.0f;
    const float down = sub_rn(args.lambda_l, hn) > 0.0f ? 1.0f : 0.0f;
    return div_rn(up - down, b);
  };
  float ties = 0.0f, through_min = 0.0f;
  for (int64_t i = threadIdx.x; i < B; i += blockDim.x) {
    const float h = row_stats[i];
    ties += h == h_min ? 1.0f : 0.0f;
    through_min += mul_rn(m_of(h), sub_rn(h, args.log_c));
  }
  ties = block_reduce(ties, SumOp{}, 0.0f, smem);
  through_min = block_reduce(through_min, SumOp{}, 0.0f, smem);

  const int64_t row = int64_t{blockIdx.x} * (kRowThreads / 32) + (threadIdx.x >> 5);
  if (row >= B) return;
  const int lane = threadIdx.x & 31;
  const float h = row_stats[row], lse_d = row_stats[B + row], lse_a = row_stats[2 * B + row];
  const float is_min = h == h_min ? 1.0f : 0.0f;
  const float dh = add_rn(div_rn(m_of(h), denom), div_rn(mul_rn(div_rn(is_min, ties), through_min),
                                                         mul_rn(denom, denom)));
  const float gm = *grad_margin, gb = *grad_bal;
  const float c_margin = mul_rn(gm, dh);
  const float c_ds = div_rn(mul_rn(gb, args.alpha_ds), b);
  const float c_as = div_rn(mul_rn(gb, args.alpha_as), b);
  const int64_t y = args.y[row];
  const Logits z(args, row);
  for (int64_t j = lane; j < C; j += 32) {
    const float t = z.t(j), s = z.s(j);
    const float onehot = j == y ? 1.0f : 0.0f;
    const float logp_d = sub_rn(sub_rn(t, s), lse_d);
    const float p_d = expf(logp_d);
    const float p_a = expf(sub_rn(add_rn(t, s), lse_a));
    const float entropy_grad = mul_rn(-p_d, add_rn(logp_d, h));
    const float g_d = add_rn(mul_rn(c_margin, entropy_grad), mul_rn(c_ds, sub_rn(p_d, onehot)));
    const float g_a = mul_rn(c_as, sub_rn(p_a, onehot));
    store_from_float(grad_t, args.t_dtype, row * C + j, add_rn(g_d, g_a));
    store_from_float(grad_s, args.s_dtype, row * C + j, sub_rn(g_a, g_d));
  }
}

}  // namespace

cudaError_t launch_generator_loss(const GeneratorLossArgs& args, float* margin, float* bal, float* row_stats,
                                  cudaStream_t stream) {
  if (args.batch <= 0) {
    // No rows: the reference's means over nothing are NaN. Let one block write them (B = 0 gives 0 / 0).
    generator_loss_finish_kernel<<<1, 32, 0, stream>>>(args, margin, bal, row_stats);
    return cudaGetLastError();
  }
  if (args.batch <= kSingleBlockMaxRows && args.batch * args.classes <= kSingleBlockMaxElements) {
    generator_loss_single_kernel<<<1, kSingleThreads, 0, stream>>>(args, margin, bal, row_stats);
  } else {
    generator_loss_rows_kernel<<<ceil_div(args.batch, kRowThreads / 32), kRowThreads, 0, stream>>>(args, row_stats);
    generator_loss_finish_kernel<<<1, kSingleThreads, 0, stream>>>(args, margin, bal, row_stats);
  }
  return cudaGetLastError();
}

cudaError_t launch_generator_loss_backward(const GeneratorLossArgs& args, const float* grad_margin,
                                           const float* grad_bal, const float* row_stats, void* grad_t, void* grad_s,
                                           cudaStream_t stream) {
  if (args.batch <= 0 || args.classes <= 0) return cudaSuccess;
  generator_loss_backward_kernel<<<ceil_div(args.batch, kRowThreads / 32), kRowThreads, 0, stream>>>(
      args, grad_margin, grad_bal, row_stats, grad_t, grad_s);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace adadfq
