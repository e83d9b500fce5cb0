// Torch binding of adadfq_native::fake_quant for CUDA (kernel: fake_quant.cu).
#include "binding_common.h"

namespace adadfq {
namespace cuda {
namespace {

using namespace binding;

at::Tensor fake_quant(const at::Tensor& x_in, int64_t bits, const at::Tensor& lo, const at::Tensor& hi, int64_t axis) {
  check_cuda(x_in, "x");
  check_same_device(lo, "lo", x_in);
  check_same_device(hi, "hi", x_in);
  TORCH_CHECK(bits >= 2 && bits <= 8, "bits: expected 2..8, got ", bits);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = dense(x_in);
  const DType dtype = dtype_of(x, "x");
  TORCH_CHECK(axis < x.dim(), "axis: ", axis, " is out of range for x of ", x.dim(), " dims");
  const int64_t channels = axis < 0 ? 1 : x.size(axis);
  TORCH_CHECK(lo.numel() == channels && hi.numel() == channels, "lo/hi: expected ", channels, " values each, got ",
              lo.numel(), " and ", hi.numel());
  const at::Tensor lo32 = float32(lo), hi32 = float32(hi);
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  check_launch(launch_fake_quant(x.const_data_ptr(), out.data_ptr(), dtype, x.numel(),
                                 inner_size(x, axis < 0 ? 0 : axis, channels), channels,
                                 lo32.const_data_ptr<float>(), hi32.const_data_ptr<float>(), static_cast<int>(bits),
                                 current_stream(x)),
               "fake_quant");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(adadfq_native, CUDA, m) { m.impl("fake_quant", &fake_quant); }

}  // namespace cuda
}  // namespace adadfq
