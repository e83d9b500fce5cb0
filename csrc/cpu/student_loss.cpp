// adadfq_native::student_loss and student_loss_backward on CPU: L_Q = -T^2 mean_i H(softmax((t_i - s_i) / T))
// and its gradient to s, one pass over the logits each way.
#include <tuple>
#include <vector>

#include "softmax_rows.h"

namespace adadfq::cpu {
namespace {

constexpr int64_t kRowsPerTask = 8;

std::tuple<at::Tensor, at::Tensor> student_loss(const at::Tensor& t, const at::Tensor& s, double temperature) {
  check_cpu(t, "t");
  const int64_t batch = t.size(0), classes = t.size(1);
  at::Tensor row_stats = at::empty({2, batch}, t.options().dtype(at::kFloat));
  float* h = row_stats.data_ptr<float>();
  float* lse = h + batch;
  const float inv_t = static_cast<float>(1.0 / temperature);
  ADADFQ_DISPATCH_FLOATS(t.scalar_type(), "adadfq_student_loss_cpu", [&] {
    const scalar_t* pt = t.const_data_ptr<scalar_t>();
    const scalar_t* ps = s.const_data_ptr<scalar_t>();
    at::parallel_for(0, batch, kRowsPerTask, [&](int64_t r0, int64_t r1) {
      std::vector<float> d(classes);
      for (int64_t r = r0; r < r1; ++r) {
ADADFQ_SIMD
        for (int64_t k = 0; k < classes; ++k) {
          d[k] = (static_cast<float>(pt[r * classes + k]) - static_cast<float>(ps[r * classes + k])) * inv_t;
        }
        const RowSoftmax rs = row_softmax(d.data(), classes);
        h[r] = rs.entropy;
        lse[r] = rs.lse;
      }
    });
  });
  double sum_h = 0.0;
  for (int64_t r = 0; r < batch; ++r) sum_h += h[r];
  const double loss = -temperature * temperature * sum_h / static_cast<double>(batch);
  return {at::scalar_tensor(loss, t.options().dtype(at::kFloat)), row_stats};
}

at::Tensor student_loss_backward(const at::Tensor& grad, const at::Tensor& t, const at::Tensor& s,
                                 const at::Tensor& row_stats, double temperature) {
  check_cpu(t, "t");
  const int64_t batch = t.size(0), classes = t.size(1);
  const at::Tensor rs = row_stats.contiguous();
  const float* h = rs.const_data_ptr<float>();
  const float* lse = h + batch;
  // dL/ds = g * T / B * (-p (log p + H)), from L = -T^2 mean H(d) and dd/ds = -1/T.
  const float coef = grad.to(at::kFloat).item<float>() * static_cast<float>(temperature / batch);
  const float inv_t = static_cast<float>(1.0 / temperature);
  at::Tensor grad_s = at::empty_like(s);
  ADADFQ_DISPATCH_FLOATS(t.scalar_type(), "adadfq_student_loss_backward_cpu", [&] {
    const scalar_t* pt = t.const_data_ptr<scalar_t>();
    const scalar_t* ps = s.const_data_ptr<scalar_t>();
    scalar_t* gs = grad_s.data_ptr<scalar_t>();
    at::parallel_for(0, batch, kRowsPerTask, [&](int64_t r0, int64_t r1) {
      std::vector<float> tb, sb, gb;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t base = r * classes;
        float* gsr = out_row_as_float(gs + base, classes, gb);
        student_grad_row(row_as_float(pt + base, classes, tb), row_as_float(ps + base, classes, sb), gsr, classes,
                         inv_t, lse[r], h[r], coef);
        store_row(gsr, gs + base, classes);
      }
    });
  });
  return grad_s;
}

}  // namespace

TORCH_LIBRARY_IMPL(adadfq_native, CPU, m) {
  m.impl("student_loss", &student_loss);
  m.impl("student_loss_backward", &student_loss_backward);
}

}  // namespace adadfq::cpu
