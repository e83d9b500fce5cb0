// Torch bindings of adadfq_native::student_loss and student_loss_backward for CUDA (kernels: student_loss.cu).
#include <tuple>

#include "binding_common.h"

namespace adadfq {
namespace cuda {
namespace {

using namespace binding;

StudentLossArgs make_args(const at::Tensor& t, const at::Tensor& s, double temperature) {
  check_cuda(t, "t");
  check_same_device(s, "s", t);
  TORCH_CHECK(t.dim() == 2 && s.sizes() == t.sizes(), "t/s: expected two [batch, classes] tensors, got ", t.sizes(),
              " and ", s.sizes());
  TORCH_CHECK(temperature > 0, "temperature: expected a positive number, got ", temperature);
  StudentLossArgs a{};
  a.t = t.const_data_ptr();
  a.s = s.const_data_ptr();
  a.t_dtype = dtype_of(t, "t");
  a.s_dtype = dtype_of(s, "s");
  a.batch = t.size(0);
  a.classes = t.size(1);
  // The reference's Python-float factors, each rounded once to float32 where they meet a tensor.
  a.temperature = static_cast<float>(temperature);
  a.neg_t_squared = static_cast<float>(-(temperature * temperature));
  a.t_over_batch = static_cast<float>(temperature / static_cast<double>(a.batch > 0 ? a.batch : 1));
  return a;
}

std::tuple<at::Tensor, at::Tensor> student_loss(const at::Tensor& t_in, const at::Tensor& s_in, double temperature) {
  check_cuda(t_in, "t");
  const c10::cuda::CUDAGuard guard(t_in.device());
  const at::Tensor t = t_in.contiguous(), s = s_in.contiguous();
  const StudentLossArgs args = make_args(t, s, temperature);
  const auto f32 = t.options().dtype(at::kFloat);
  at::Tensor loss = at::empty({}, f32);
  at::Tensor row_stats = at::empty({2, args.batch}, f32);
  check_launch(launch_student_loss(args, loss.data_ptr<float>(), row_stats.data_ptr<float>(), current_stream(t)),
               "student_loss");
  return {loss, row_stats};
}

at::Tensor student_loss_backward(const at::Tensor& grad, const at::Tensor& t_in, const at::Tensor& s_in,
                                 const at::Tensor& row_stats, double temperature) {
  check_cuda(t_in, "t");
  check_same_device(grad, "grad", t_in);
  check_same_device(row_stats, "row_stats", t_in);
  TORCH_CHECK(grad.numel() == 1, "grad: expected the loss's scalar gradient, got ", grad.numel(), " values");
  const c10::cuda::CUDAGuard guard(t_in.device());
  const at::Tensor t = t_in.contiguous(), s = s_in.contiguous();
  const StudentLossArgs args = make_args(t, s, temperature);
  TORCH_CHECK(row_stats.dim() == 2 && row_stats.size(0) == 2 && row_stats.size(1) == args.batch,
              "row_stats: expected shape [2, ", args.batch, "], got ", row_stats.sizes());
  const at::Tensor g = float32(grad), rs = float32(row_stats);
  at::Tensor grad_s = at::empty_like(s);
  check_launch(launch_student_loss_backward(args, g.const_data_ptr<float>(), rs.const_data_ptr<float>(),
                                            grad_s.data_ptr(), current_stream(t)),
               "student_loss_backward");
  return grad_s;
}

}  // namespace

TORCH_LIBRARY_IMPL(adadfq_native, CUDA, m) {
  m.impl("student_loss", &student_loss);
  m.impl("student_loss_backward", &student_loss_backward);
}

}  // namespace cuda
}  // namespace adadfq
