// adadfq_native::fake_quant on CUDA: the spec quantizer over given ranges, per tensor or per channel.
// Elementwise and memory bound; every float32 step comes from adadfq/quant_math.h, so the output is bit-identical
// to the reference. Also used by fake_quant_act.cu for its quantization pass (range read from device memory).
#include "cuda_common.cuh"

namespace adadfq {
namespace cuda {
namespace {

using namespace detail;

// 256 threads x 4 elements = 1024-element tiles: each of the 4 loads per thread is a fully coalesced warp access,
// and the 4 independent loads in flight per thread hide memory latency. The grid is capped and strides over
// the tiles, so huge tensors don't need billions of blocks.
constexpr int kThreads = 256;
constexpr int kUnroll = 4;
constexpr int64_t kTile = int64_t{kThreads} * kUnroll;
constexpr int64_t kMaxBlocks = 65536;

template <typename T, typename Index, typename Div>
__global__ void __launch_bounds__(kThreads)
    fake_quant_kernel(const T* __restrict__ x, T* __restrict__ out, Index numel, ChannelOf<Index, Div> channel_of,
                      bool per_tensor, const float* __restrict__ lo, const float* __restrict__ hi, int bits) {
  // Quantizer parameters are recomputed only when the channel changes: never per tensor, rarely for NCHW
  // (inner = H*W spans many tiles), and for channels_last a thread's 4 elements are 256 apart, which is often
  // the same channel too.
  Index cached = 0;
  QuantParams p = make_quant_params(bits, lo[0], hi[0]);
  for (Index base = static_cast<Index>(blockIdx.x) * kTile; base < numel;
       base += static_cast<Index>(gridDim.x) * kTile) {
    float v[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const Index i = base + threadIdx.x + k * kThreads;
      v[k] = i < numel ? to_float(x[i]) : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const Index i = base + threadIdx.x + k * kThreads;
      if (i < numel) {
        if (!per_tensor) {
          const Index c = channel_of(i);
          if (c != cached) {
            p = make_quant_params(bits, lo[c], hi[c]);
            cached = c;
          }
        }
        out[i] = from_float<T>(fake_quant_value(v[k], p));
      }
    }
  }
}

template <typename T>
cudaError_t launch_typed(const void* x, void* out, int64_t numel, int64_t inner, int64_t channels, const float* lo,
                         const float* hi, int bits, cudaStream_t stream) {
  const int64_t tiles = (numel + kTile - 1) / kTile;
  const unsigned blocks = static_cast<unsigned>(tiles < kMaxBlocks ? tiles : kMaxBlocks);
  const bool per_tensor = channels <= 1;
  const T* in = static_cast<const T*>(x);
  T* o = static_cast<T*>(out);
  if (fits_fast_div(numel)) {
    ChannelOf<uint32_t, FastDiv32> ch{FastDiv32(static_cast<uint32_t>(per_tensor ? 1 : inner)),
                                      FastDiv32(static_cast<uint32_t>(per_tensor ? 1 : channels))};
    fake_quant_kernel<T, uint32_t, FastDiv32><<<blocks, kThreads, 0, stream>>>(
        in, o, static_cast<uint32_t>(numel), ch, per_tensor, lo, hi, bits);
  } else {
    ChannelOf<int64_t, Div64> ch{Div64(per_tensor ? 1 : inner), Div64(per_tensor ? 1 : channels)};
    fake_quant_kernel<T, int64_t, Div64><<<blocks, kThreads, 0, stream>>>(in, o, numel, ch, per_tensor, lo, hi, bits);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_fake_quant(const void* x, void* out, DType dtype, int64_t numel, int64_t inner, int64_t channels,
                              const float* lo, const float* hi, int bits, cudaStream_t stream) {
  if (numel <= 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat16:
      return launch_typed<__half>(x, out, numel, inner, channels, lo, hi, bits, stream);
    case DType::kBFloat16:
      return launch_typed<__nv_bfloat16>(x, out, numel, inner, channels, lo, hi, bits, stream);
    default:
      return launch_typed<float>(x, out, numel, inner, channels, lo, hi, bits, stream);
  }
}

}  // namespace cuda
}  // namespace adadfq
