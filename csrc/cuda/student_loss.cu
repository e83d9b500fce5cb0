// adadfq_native::student_loss / student_loss_backward on CUDA: L_Q = -T^2 mean_i entropy(softmax((t_i - s_i) / T)).
//
// Same structure as generator_loss.cu: one warp per row (max; sum of exponentials; entropy), one block for the
// usual small batches (rows, barrier, batch mean in a single launch), a row kernel plus a one-block finishing
// kernel for large ones. Backward: one launch, one warp per row, no batch quantity besides B.
#include "cuda_common.cuh"

namespace adadfq {
namespace cuda {
namespace {

using namespace detail;

constexpr int kRowThreads = 256;
constexpr int kSingleThreads = 512;
constexpr int64_t kSingleBlockMaxElements = 65536;
constexpr int64_t kSingleBlockMaxRows = 128;

// d_j = (t_j - s_j) / T of one row, as the reference rounds it (subtract, then a true division).
struct ScaledDiff {
  const void* t_ptr;
  const void* s_ptr;
  DType t_dtype, s_dtype;
  int64_t offset;
  float temperature;
  __device__ ScaledDiff(const StudentLossArgs& a, int64_t row)
      : t_ptr(a.t), s_ptr(a.s), t_dtype(a.t_dtype), s_dtype(a.s_dtype), offset(row * a.classes),
        temperature(a.temperature) {}
  __device__ __forceinline__ float operator()(int64_t j) const {
    return div_rn(load_as_float(t_ptr, t_dtype, offset + j) - load_as_float(s_ptr, s_dtype, offset + j), temperature);
  }
};

__device__ void row_pass(const StudentLossArgs& args, int64_t row, float* __restrict__ row_stats) {
  const int lane = threadIdx.x & 31;
  const ScaledDiff d(args, row);
  const int64_t C = args.classes;
  float mx = -__int_as_float(0x7f800000);
  for (int64_t j = lane; j < C; j += 32) mx = nan_max(mx, d(j));
  mx = warp_reduce(mx, MaxOp{});
  const float shift = isinf(mx) ? 0.0f : mx;  // torch.logsumexp's shift
  float sum = 0.0f;
  for (int64_t j = lane; j < C; j += 32) sum += expf(d(j) - shift);
  const float lse = logf(warp_reduce(sum, SumOp{})) + shift;
  float plogp = 0.0f;
  for (int64_t j = lane; j < C; j += 32) {
    const float logp = d(j) - lse;
    plogp = add_rn(plogp, mul_rn(expf(logp), logp));
  }
  const float h = -warp_reduce(plogp, SumOp{});
  if (lane == 0) {
    row_stats[row] = h;
    row_stats[args.batch + row] = lse;
  }
}

__device__ void finish(const StudentLossArgs& args, const float* __restrict__ row_stats, float* __restrict__ loss) {
  __shared__ float smem[32];
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < args.batch; i += blockDim.x) sum += row_stats[i];
  sum = block_reduce(sum, SumOp{}, 0.0f, smem);
  if (threadIdx.x == 0) *loss = mul_rn(args.neg_t_squared, div_rn(sum, static_cast<float>(args.batch)));
}

__global__ void __launch_bounds__(kSingleThreads)
    student_loss_single_kernel(const StudentLossArgs args, float* loss, float* row_stats) {
  const int warps = blockDim.x >> 5;
  for (int64_t row = threadIdx.x >> 5; row < args.batch; row += warps) row_pass(args, row, row_stats);
  __syncthreads();  // row_stats written by this block's warps is now visible to all its threads
  finish(args, row_stats, loss);
}

__global__ void __launch_bounds__(kRowThreads) student_loss_rows_kernel(const StudentLossArgs args, float* row_stats) {
  const int64_t row = int64_t{blockIdx.x} * (kRowThreads / 32) + (threadIdx.x >> 5);
  if (row < args.batch) row_pass(args, row, row_stats);
}

__global__ void __launch_bounds__(kSingleThreads)
    student_loss_finish_kernel(const StudentLossArgs args, float* loss, const float* row_stats) {
  finish(args, row_stats, loss);
}

// dL_Q/ds_j = g * (T / B) * (-p_j (log p_j + H)).
__global__ void __launch_bounds__(kRowThreads)
    student_loss_backward_kernel(const StudentLossArgs args, const float* __restrict__ grad,
                                 const float* __restrict__ row_stats, void* grad_s) {
  const int64_t row = int64_t{blockIdx.x} * (kRowThreads / 32) + (threadIdx.x >> 5);
  if (row >= args.batch) return;
  const int lane = threadIdx.x & 31;
  const ScaledDiff d(args, row);
  const float h = row_stats[row], lse = row_stats[args.batch + row];
  const float coef = mul_rn(*grad, args.t_over_batch);
  for (int64_t j = lane; j < args.classes; j += 32) {
    const float logp = sub_rn(d(j), lse);
    const float p = expf(logp);
    store_from_float(grad_s, args.s_dtype, row * args.classes + j, mul_rn(coef, mul_rn(-p, add_rn(logp, h))));
  }
}

}  // namespace

cudaError_t launch_student_loss(const StudentLossArgs& args, float* loss, float* row_stats, cudaStream_t stream) {
  if (args.batch <= 0) {
    student_loss_finish_kernel<<<1, 32, 0, stream>>>(args, loss, row_stats);  // mean of nothing: NaN
    return cudaGetLastError();
  }
  if (args.batch <= kSingleBlockMaxRows && args.batch * args.classes <= kSingleBlockMaxElements) {
    student_loss_single_kernel<<<1, kSingleThreads, 0, stream>>>(args, loss, row_stats);
  } else {
    student_loss_rows_kernel<<<detail::ceil_div(args.batch, kRowThreads / 32), kRowThreads, 0, stream>>>(args,
                                                                                                          row_stats);
    student_loss_finish_kernel<<<1, kSingleThreads, 0, stream>>>(args, loss, row_stats);
  }
  return cudaGetLastError();
}

cudaError_t launch_student_loss_backward(const StudentLossArgs& args, const float* grad, const float* row_stats,
                                         void* grad_s, cudaStream_t stream) {
  if (args.batch <= 0 || args.classes <= 0) return cudaSuccess;
  student_loss_backward_kernel<<<detail::ceil_div(args.batch, kRowThreads / 32), kRowThreads, 0, stream>>>(
      args, grad, row_stats, grad_s);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace adadfq
