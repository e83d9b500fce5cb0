// adadfq_native::fake_quant_weight on CUDA: per-output-channel (dim 0) min/max, then quantization, in one launch.
//
// One block per output channel: the block reduces its channel's min/max, computes the quantizer parameters once,
// then writes the channel's outputs, re-reading the weights from L1/L2 (a channel is at most a few tens of KB).
// Fusing the two passes needs no scratch buffer and no second launch; weights are small, so one block per
// channel (64..4096 channels in practice) fills the GPU well enough.
#include "cuda_common.cuh"

namespace adadfq {
namespace cuda {
namespace {

using namespace detail;

constexpr int kMaxThreads = 256;

// Element k (0 <= k < per_channel) of channel c. When dim 0 is outermost in memory (the usual case,
// `contiguous`), the channel is one contiguous span; otherwise (e.g. a transposed Linear weight) its elements
// form `outer` spans of `inner`, one per slice of dim 0's outer dimensions.
struct ChannelSpan {
  int64_t base, inner, row_stride;
  bool contiguous;
  __device__ __forceinline__ int64_t operator()(int64_t k) const {
    return contiguous ? base + k : (k / inner) * row_stride + base + k % inner;
  }
};

template <typename T>
__global__ void __launch_bounds__(kMaxThreads)
    fake_quant_weight_kernel(const T* __restrict__ w, T* __restrict__ out, int64_t per_channel, int64_t inner,
                             int64_t channels, int bits) {
  __shared__ float smem[32];
  __shared__ QuantParams params;
  const int64_t c = blockIdx.x;
  const ChannelSpan at{c * inner, inner, channels * inner, per_channel == inner};

  const float inf = __int_as_float(0x7f800000);
  float mn = inf, mx = -inf;
  for (int64_t k = threadIdx.x; k < per_channel; k += blockDim.x) {
    const float v = to_float(w[at(k)]);
    mn = nan_min(mn, v);
    mx = nan_max(mx, v);
  }
  mn = block_reduce(mn, MinOp{}, inf, smem);
  mx = block_reduce(mx, MaxOp{}, -inf, smem);
  if (threadIdx.x == 0) params = make_quant_params(bits, mn, mx);
  __syncthreads();
  const QuantParams p = params;
  for (int64_t k = threadIdx.x; k < per_channel; k += blockDim.x) {
    const int64_t i = at(k);
    out[i] = from_float<T>(fake_quant_value(to_float(w[i]), p));
  }
}

template <typename T>
cudaError_t launch_typed(const void* w, void* out, int64_t numel, int64_t inner, int64_t channels, int bits,
                         cudaStream_t stream) {
  const int64_t per_channel = numel / channels;
  // Block size: enough warps to cover the channel once (small depthwise kernels use a single warp), at most 256.
  int threads = 32;
  while (threads < kMaxThreads && threads < per_channel) threads *= 2;
  fake_quant_weight_kernel<T><<<static_cast<unsigned>(channels), threads, 0, stream>>>(
      static_cast<const T*>(w), static_cast<T*>(out), per_channel, inner, channels, bits);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_fake_quant_weight(const void* w, void* out, DType dtype, int64_t numel, int64_t inner,
                                     int64_t channels, int bits, cudaStream_t stream) {
  if (numel <= 0 || channels <= 0) return cudaSuccess;
  if (channels == 1) inner = numel;
  switch (dtype) {
    case DType::kFloat16:
      return launch_typed<__half>(w, out, numel, inner, channels, bits, stream);
    case DType::kBFloat16:
      return launch_typed<__nv_bfloat16>(w, out, numel, inner, channels, bits, stream);
    default:
      return launch_typed<float>(w, out, numel, inner, channels, bits, stream);
  }
}

}  // namespace cuda
}  // namespace adadfq
