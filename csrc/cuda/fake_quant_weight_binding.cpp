// Torch binding of adadfq_native::fake_quant_weight for CUDA (kernel: fake_quant_weight.cu).
#include "binding_common.h"

namespace adadfq {
namespace cuda {
namespace {

using namespace binding;

at::Tensor fake_quant_weight(const at::Tensor& w_in, int64_t bits) {
  check_cuda(w_in, "w");
  TORCH_CHECK(w_in.dim() >= 1, "w: expected at least 1 dim (output channels first), got a 0-d tensor");
  TORCH_CHECK(bits >= 2 && bits <= 8, "bits: expected 2..8, got ", bits);
  const c10::cuda::CUDAGuard guard(w_in.device());
  const at::Tensor w = dense(w_in);
  const DType dtype = dtype_of(w, "w");
  at::Tensor out = at::empty_like(w);
  if (w.numel() == 0) return out;
  const int64_t channels = w.size(0);
  check_launch(launch_fake_quant_weight(w.const_data_ptr(), out.data_ptr(), dtype, w.numel(),
                                        inner_size(w, 0, channels), channels, static_cast<int>(bits),
                                        current_stream(w)),
               "fake_quant_weight");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(adadfq_native, CUDA, m) { m.impl("fake_quant_weight", &fake_quant_weight); }

}  // namespace cuda
}  // namespace adadfq
