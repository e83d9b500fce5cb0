// Torch binding of adadfq_native::fake_quant_act for CUDA (kernels: fake_quant_act.cu, fake_quant.cu).
// Functional: `state` is only read; the updated range comes back as a new tensor written on the device.
#include <tuple>

#include "binding_common.h"

namespace adadfq {
namespace cuda {
namespace {

using namespace binding;

std::tuple<at::Tensor, at::Tensor> fake_quant_act(const at::Tensor& x_in, int64_t bits, const at::Tensor& state,
                                                  double beta, bool update) {
  check_cuda(x_in, "x");
  check_same_device(state, "state", x_in);
  TORCH_CHECK(bits >= 2 && bits <= 8, "bits: expected 2..8, got ", bits);
  TORCH_CHECK(state.scalar_type() == at::kFloat && state.numel() == 3,
              "state: expected a float32 tensor of 3 values [x_min, x_max, beta_t], got ", state.scalar_type(),
              " with ", state.numel(), " values");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = dense(x_in);
  const DType dtype = dtype_of(x, "x");
  const at::Tensor st = state.contiguous();
  at::Tensor out = at::empty_like(x);
  const int64_t numel = x.numel();
  // An empty x, or a frozen range, leaves the state as it is.
  if (!update || numel == 0) {
    at::Tensor new_state = st.clone();
    if (numel == 0) return {out, new_state};
    check_launch(launch_fake_quant_act(x.const_data_ptr(), out.data_ptr(), dtype, numel, st.const_data_ptr<float>(),
                                       nullptr, nullptr, static_cast<int>(bits), 0.0f, 0.0f, false,
                                       current_stream(x)),
                 "fake_quant_act");
    return {out, new_state};
  }
  at::Tensor new_state = at::empty_like(st);
  at::Tensor scratch = at::empty({fake_quant_act_scratch_floats(numel)}, st.options());
  // beta and 1 - beta are each rounded to float32 from the double, as the original's Python floats are.
  check_launch(launch_fake_quant_act(x.const_data_ptr(), out.data_ptr(), dtype, numel, st.const_data_ptr<float>(),
                                     new_state.data_ptr<float>(), scratch.data_ptr<float>(), static_cast<int>(bits),
                                     static_cast<float>(beta), static_cast<float>(1.0 - beta), true,
                                     current_stream(x)),
               "fake_quant_act");
  return {out, new_state};
}

}  // namespace

TORCH_LIBRARY_IMPL(adadfq_native, CUDA, m) { m.impl("fake_quant_act", &fake_quant_act); }

}  // namespace cuda
}  // namespace adadfq
