// Helpers shared by the torch bindings of the CUDA kernels (csrc/cuda/*_binding.cpp). Only the bindings include
// torch; they check arguments, allocate every buffer with the caching allocator (so the kernels may run inside a
// CUDA graph capture), take the current stream and call the launchers of adadfq/cuda_kernels.h.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "adadfq/cuda_kernels.h"

namespace adadfq {
namespace cuda {
namespace binding {

inline DType dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kHalf:
      return DType::kFloat16;
    case at::kBFloat16:
      return DType::kBFloat16;
    default:
      TORCH_CHECK(false, name, ": expected float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got one on ", t.device());
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), name, ": expected a tensor on ", ref.device(), ", got ", t.device());
}

// The kernels read x as flat memory: any dense layout (contiguous, channels_last, ...) is used as it is; anything
// else (a strided view) is copied first. Outputs are allocated with empty_like(x), which keeps a dense layout.
inline at::Tensor dense(const at::Tensor& x) { return x.is_non_overlapping_and_dense() ? x : x.contiguous(); }

// Stride of the channel dim, i.e. the run length of one channel in flat memory; the whole tensor for one channel.
inline int64_t inner_size(const at::Tensor& x, int64_t axis, int64_t channels) {
  return channels > 1 ? x.stride(axis) : x.numel();
}

// A device float32 copy only when needed (0-d upstream gradients, running statistics of another dtype): an
// asynchronous op, so it is CUDA-graph safe.
inline at::Tensor float32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

inline cudaStream_t current_stream(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.get_device()).stream();
}

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "adadfq_native::", op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace binding
}  // namespace cuda
}  // namespace adadfq
