// adadfq_native::fake_quant_act on CUDA: the original QuantAct. With `update`:
//   1. minmax_partial_kernel: each block reduces a grid-strided share of x to one (min, max) pair (scratch);
//   2. range_update_kernel (one block): reduces the block pairs in a fixed order and applies the original EMA
//      update (adadfq::ema_range_update) to the old state, writing new_state on the device;
//   3. the fake_quant kernel (fake_quant.cu) quantizes x over new_state[0..1], read from device memory.
// Three launches and no host synchronization, so it is CUDA-graph safe. The second tiny kernel (rather than
// atomics on ordered-int encodings) keeps the reduction deterministic and NaN-propagating like torch.amin/amax,
// and needs no zero-initialised buffer.
#include "cuda_common.cuh"

namespace adadfq {
namespace cuda {
namespace {

using namespace detail;

constexpr int kThreads = 256;
constexpr int kUnroll = 4;
constexpr int64_t kTile = int64_t{kThreads} * kUnroll;
// Enough blocks to fill every SM several times over, few enough for one block to combine their partials; each
// block then handles at least 4 tiles (16 elements per thread), amortising its final reduction.
constexpr int64_t kMaxPartials = 1024;
constexpr int64_t kMinTilesPerBlock = 4;

int64_t num_partials(int64_t numel) {
  const int64_t tiles = (numel + kTile - 1) / kTile;
  int64_t blocks = (tiles + kMinTilesPerBlock - 1) / kMinTilesPerBlock;
  return blocks < 1 ? 1 : (blocks > kMaxPartials ? kMaxPartials : blocks);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    minmax_partial_kernel(const T* __restrict__ x, int64_t numel, float* __restrict__ partials) {
  __shared__ float smem[32];
  const float inf = __int_as_float(0x7f800000);
  float mn = inf, mx = -inf;
  for (int64_t base = int64_t{blockIdx.x} * kTile; base < numel; base += int64_t{gridDim.x} * kTile) {
    float v[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t i = base + threadIdx.x + k * kThreads;
      v[k] = i < numel ? to_float(x[i]) : inf;  // +inf is neutral for the min; the max ignores it below
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t i = base + threadIdx.x + k * kThreads;
      mn = nan_min(mn, v[k]);
      if (i < numel) mx = nan_max(mx, v[k]);
    }
  }
  mn = block_reduce(mn, MinOp{}, inf, smem);
  mx = block_reduce(mx, MaxOp{}, -inf, smem);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = mn;
    partials[gridDim.x + blockIdx.x] = mx;
  }
}

__global__ void __launch_bounds__(kThreads)
    range_update_kernel(const float* __restrict__ partials, int num_partials, const float* __restrict__ state,
                        float* __restrict__ new_state, float beta, float one_minus_beta) {
  __shared__ float smem[32];
  const float inf = __int_as_float(0x7f800000);
  float mn = inf, mx = -inf;
  for (int b = threadIdx.x; b < num_partials; b += blockDim.x) {
    mn = nan_min(mn, partials[b]);
    mx = nan_max(mx, partials[num_partials + b]);
  }
  mn = block_reduce(mn, MinOp{}, inf, smem);
  mx = block_reduce(mx, MaxOp{}, -inf, smem);
  if (threadIdx.x == 0) {
    const ActRange r = ema_range_update(ActRange{state[0], state[1], state[2]}, mn, mx, beta, one_minus_beta);
    new_state[0] = r.x_min;
    new_state[1] = r.x_max;
    new_state[2] = r.beta_t;
  }
}

template <typename T>
cudaError_t reduce_and_update(const void* x, int64_t numel, const float* state, float* new_state, float* scratch,
                              float beta, float one_minus_beta, cudaStream_t stream) {
  const int64_t partials = num_partials(numel);
  minmax_partial_kernel<T><<<static_cast<unsigned>(partials), kThreads, 0, stream>>>(static_cast<const T*>(x),
                                                                                        numel, scratch);
  range_update_kernel<<<1, kThreads, 0, stream>>>(scratch, static_cast<int>(partials), state, new_state, beta,
                                                  one_minus_beta);
  return cudaGetLastError();
}

}  // namespace

int64_t fake_quant_act_scratch_floats(int64_t numel) { return 2 * num_partials(numel); }

cudaError_t launch_fake_quant_act(const void* x, void* out, DType dtype, int64_t numel, const float* state,
                                  float* new_state, float* scratch, int bits, float beta, float one_minus_beta,
                                  bool update, cudaStream_t stream) {
  if (numel <= 0) return cudaSuccess;  // the reference leaves the state untouched for an empty x
  const float* range = state;
  if (update) {
    cudaError_t err;
    switch (dtype) {
      case DType::kFloat16:
        err = reduce_and_update<__half>(x, numel, state, new_state, scratch, beta, one_minus_beta, stream);
        break;
      case DType::kBFloat16:
        err = reduce_and_update<__nv_bfloat16>(x, numel, state, new_state, scratch, beta, one_minus_beta, stream);
        break;
      default:
        err = reduce_and_update<float>(x, numel, state, new_state, scratch, beta, one_minus_beta, stream);
    }
    if (err != cudaSuccess) return err;
    range = new_state;
  }
  // Per tensor: one channel whose inner span is the whole tensor; lo/hi are read on the device.
  return launch_fake_quant(x, out, dtype, numel, numel, 1, range, range + 1, bits, stream);
}

}  // namespace cuda
}  // namespace adadfq
