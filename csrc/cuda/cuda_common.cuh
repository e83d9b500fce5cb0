// Device helpers shared by the CUDA kernels (csrc/cuda/*.cu). Pure CUDA: no torch headers, so every .cu file
// compiles alone with `nvcc -I csrc/include`. Torch builds .cu files with -D__CUDA_NO_HALF_CONVERSIONS__ (and
// friends), so half/bfloat16 values are converted only through the explicit intrinsics below.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "adadfq/cuda_kernels.h"
#include "adadfq/quant_math.h"

namespace adadfq {
namespace cuda {
namespace detail {

constexpr unsigned kFullMask = 0xffffffffu;

// ---- float32 <-> storage type. Stores round to nearest even, like torch's .to(dtype).
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Runtime-typed access, for the small loss kernels whose operands may each have a different dtype (the branch is
// uniform across the whole launch, so it costs no divergence).
__device__ __forceinline__ float load_as_float(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::kFloat16:
      return __half2float(static_cast<const __half*>(p)[i]);
    case DType::kBFloat16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}

__device__ __forceinline__ void store_from_float(void* p, DType dt, int64_t i, float v) {
  switch (dt) {
    case DType::kFloat16:
      static_cast<__half*>(p)[i] = __float2half_rn(v);
      break;
    case DType::kBFloat16:
      static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
      break;
    default:
      static_cast<float*>(p)[i] = v;
  }
}

// ---- NaN-propagating min/max (torch.amin/amax semantics: any NaN makes the result NaN).
__device__ __forceinline__ float nan_min(float a, float b) { return (a != a || a < b) ? a : b; }
__device__ __forceinline__ float nan_max(float a, float b) { return (a != a || a > b) ? a : b; }

// torch.relu: max(v, 0) that lets NaN through.
__device__ __forceinline__ float relu_nan(float v) { return v < 0.0f ? 0.0f : v; }

// ---- Warp and block reductions (blockDim.x a multiple of 32, at most 1024). Tree order is fixed, so results
// are deterministic run to run (no atomics on values anywhere in these kernels).
struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct MinOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return nan_min(a, b); }
};
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return nan_max(a, b); }
};

template <typename Op>
__device__ __forceinline__ float warp_reduce(float v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// Every thread of the block gets the result. `smem` holds 32 floats; callers reusing it back to back are safe
// because of the barrier at entry.
template <typename Op>
__device__ float block_reduce(float v, Op op, float identity, float* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_reduce(v, op);
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = lane < warps ? smem[lane] : identity;
  return warp_reduce(v, op);
}

// ---- Division by a launch-invariant divisor without a hardware divide (the round-up multiply of Granlund and
// Montgomery). Exact for dividends and divisors below 2^31; kernels use it when numel < 2^31 and fall back to
// plain 64-bit division otherwise. It turns the per-element channel computation (i / inner) % C into a few
// integer multiplies, which keeps the elementwise kernels memory bound.
struct FastDiv32 {
  uint32_t divisor, multiplier, shift;
  __host__ __device__ FastDiv32() : divisor(1), multiplier(1), shift(0) {}
  __host__ __device__ explicit FastDiv32(uint32_t d) : divisor(d) {
    shift = 0;
    while (shift < 32 && (uint64_t{1} << shift) < d) ++shift;
    multiplier = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d)) / d + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return (__umulhi(n, multiplier) + n) >> shift; }
};

struct Div64 {
  int64_t divisor;
  __host__ __device__ Div64() : divisor(1) {}
  __host__ __device__ explicit Div64(int64_t d) : divisor(d) {}
  __device__ __forceinline__ int64_t div(int64_t n) const { return n / divisor; }
};

// Channel of flat element i: (i / inner) % channels.
template <typename Index, typename Div>
struct ChannelOf {
  Div inner, channels;
  __device__ __forceinline__ Index operator()(Index i) const {
    const Index q = static_cast<Index>(inner.div(i));
    return q - static_cast<Index>(channels.div(q)) * static_cast<Index>(channels.divisor);
  }
};

__host__ __device__ inline bool fits_fast_div(int64_t numel) { return numel < (int64_t{1} << 31) - (int64_t{1} << 27); }

inline unsigned ceil_div(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

}  // namespace detail
}  // namespace cuda
}  // namespace adadfq
