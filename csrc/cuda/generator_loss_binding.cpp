// Torch bindings of adadfq_native::generator_loss and generator_loss_backward for CUDA (kernels:
// generator_loss.cu). The Python floats become float32 exactly where the reference's tensor ops round them.
#include <cmath>
#include <tuple>

#include "binding_common.h"

namespace adadfq {
namespace cuda {
namespace {

using namespace binding;

GeneratorLossArgs make_args(const at::Tensor& t, const at::Tensor& s, const at::Tensor& y, double lambda_l,
                            double lambda_u, double alpha_ds, double alpha_as) {
  check_cuda(t, "t");
  check_same_device(s, "s", t);
  check_same_device(y, "y", t);
  TORCH_CHECK(t.dim() == 2 && s.sizes() == t.sizes(), "t/s: expected two [batch, classes] tensors, got ", t.sizes(),
              " and ", s.sizes());
  TORCH_CHECK(t.size(1) >= 1, "t: expected at least one class");
  TORCH_CHECK(y.scalar_type() == at::kLong && y.dim() == 1 && y.size(0) == t.size(0),
              "y: expected int64 labels of shape [", t.size(0), "], got ", y.scalar_type(), " ", y.sizes());
  GeneratorLossArgs a{};
  a.t = t.const_data_ptr();
  a.s = s.const_data_ptr();
  a.t_dtype = dtype_of(t, "t");
  a.s_dtype = dtype_of(s, "s");
  a.y = y.const_data_ptr<int64_t>();
  a.batch = t.size(0);
  a.classes = t.size(1);
  a.lambda_l = static_cast<float>(lambda_l);
  a.lambda_u = static_cast<float>(lambda_u);
  a.alpha_ds = static_cast<float>(alpha_ds);
  a.alpha_as = static_cast<float>(alpha_as);
  a.log_c = static_cast<float>(std::log(static_cast<double>(a.classes)));
  return a;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> generator_loss(const at::Tensor& t_in, const at::Tensor& s_in,
                                                              const at::Tensor& y_in, double lambda_l,
                                                              double lambda_u, double alpha_ds, double alpha_as) {
  check_cuda(t_in, "t");
  const c10::cuda::CUDAGuard guard(t_in.device());
  const at::Tensor t = t_in.contiguous(), s = s_in.contiguous(), y = y_in.contiguous();
  const GeneratorLossArgs args = make_args(t, s, y, lambda_l, lambda_u, alpha_ds, alpha_as);
  const auto f32 = t.options().dtype(at::kFloat);
  at::Tensor margin = at::empty({}, f32), bal = at::empty({}, f32);
  at::Tensor row_stats = at::empty({3, args.batch}, f32);
  check_launch(launch_generator_loss(args, margin.data_ptr<float>(), bal.data_ptr<float>(),
                                     row_stats.data_ptr<float>(), current_stream(t)),
               "generator_loss");
  return {margin, bal, row_stats};
}

std::tuple<at::Tensor, at::Tensor> generator_loss_backward(const at::Tensor& grad_margin, const at::Tensor& grad_bal,
                                                           const at::Tensor& t_in, const at::Tensor& s_in,
                                                           const at::Tensor& y_in, const at::Tensor& row_stats,
                                                           double lambda_l, double lambda_u, double alpha_ds,
                                                           double alpha_as) {
  check_cuda(t_in, "t");
  check_same_device(grad_margin, "grad_margin", t_in);
  check_same_device(grad_bal, "grad_bal", t_in);
  check_same_device(row_stats, "row_stats", t_in);
  TORCH_CHECK(grad_margin.numel() == 1 && grad_bal.numel() == 1, "grad_margin/grad_bal: expected scalars");
  const c10::cuda::CUDAGuard guard(t_in.device());
  const at::Tensor t = t_in.contiguous(), s = s_in.contiguous(), y = y_in.contiguous();
  const GeneratorLossArgs args = make_args(t, s, y, lambda_l, lambda_u, alpha_ds, alpha_as);
  TORCH_CHECK(row_stats.dim() == 2 && row_stats.size(0) == 3 && row_stats.size(1) == args.batch,
              "row_stats: expected shape [3, ", args.batch, "], got ", row_stats.sizes());
  const at::Tensor gm = float32(grad_margin), gb = float32(grad_bal), rs = float32(row_stats);
  at::Tensor grad_t = at::empty_like(t), grad_s = at::empty_like(s);
  check_launch(launch_generator_loss_backward(args, gm.const_data_ptr<float>(), gb.const_data_ptr<float>(),
                                              rs.const_data_ptr<float>(), grad_t.data_ptr(), grad_s.data_ptr(),
                                              current_stream(t)),
               "generator_loss_backward");
  return {grad_t, grad_s};
}

}  // namespace

TORCH_LIBRARY_IMPL(adadfq_native, CUDA, m) {
  m.impl("generator_loss", &generator_loss);
  m.impl("generator_loss_backward", &generator_loss_backward);
}

}  // namespace cuda
}  // namespace adadfq
