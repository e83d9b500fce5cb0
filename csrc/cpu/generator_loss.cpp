// adadfq_native::generator_loss and generator_loss_backward on CPU: AdaDFQ's (L_margin, L_bal) and their
// gradients to t and s, one pass over the logits each way (rows in parallel; batch-level terms are O(B)).
#include <tuple>
#include <vector>

#include "softmax_rows.h"

namespace adadfq::cpu {
namespace {

constexpr int64_t kRowsPerTask = 8;

std::tuple<at::Tensor, at::Tensor, at::Tensor> generator_loss(const at::Tensor& t, const at::Tensor& s,
                                                              const at::Tensor& y, double lambda_l,
                                                              double lambda_u, double alpha_ds,
                                                              double alpha_as) {
  check_cpu(t, "t");
  const int64_t batch = t.size(0), classes = t.size(1);
  at::Tensor row_stats = at::empty({3, batch}, t.options().dtype(at::kFloat));
  float* h = row_stats.data_ptr<float>();
  float* lse_d = h + batch;
  float* lse_a = lse_d + batch;
  std::vector<float> ce_d(batch), ce_a(batch);
  const int64_t* labels = y.const_data_ptr<int64_t>();
  ADADFQ_DISPATCH_FLOATS(t.scalar_type(), "adadfq_generator_loss_cpu", [&] {
    const scalar_t* pt = t.const_data_ptr<scalar_t>();
    const scalar_t* ps = s.const_data_ptr<scalar_t>();
    at::parallel_for(0, batch, kRowsPerTask, [&](int64_t r0, int64_t r1) {
      std::vector<float> d(classes), a(classes);
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* tr = pt + r * classes;
        const scalar_t* sr = ps + r * classes;
ADADFQ_SIMD
        for (int64_t k = 0; k < classes; ++k) {
          const float tk = static_cast<float>(tr[k]), sk = static_cast<float>(sr[k]);
          d[k] = tk - sk;
          a[k] = tk + sk;
        }
        const RowSoftmax rd = row_softmax(d.data(), classes), ra = row_softmax(a.data(), classes);
        h[r] = rd.entropy;
        lse_d[r] = rd.lse;
        lse_a[r] = ra.lse;
        ce_d[r] = rd.lse - d[labels[r]];
        ce_a[r] = ra.lse - a[labels[r]];
      }
    });
  });
  // Batch terms: H' = (H - min H) / (ln C - min H), margins, and the two cross-entropies.
  float h_min = std::numeric_limits<float>::infinity();
  bool h_nan = false;
  for (int64_t r = 0; r < batch; ++r) {
    h_min = h[r] < h_min ? h[r] : h_min;
    h_nan = h_nan || h[r] != h[r];
  }
  if (h_nan) h_min = NAN;
  const double log_c = std::log(static_cast<double>(classes));
  double margin = 0.0, cd = 0.0, ca = 0.0;
  for (int64_t r = 0; r < batch; ++r) {
    const double hn = (static_cast<double>(h[r]) - h_min) / (log_c - h_min);
    margin += std::max(lambda_l - hn, 0.0) + std::max(hn - lambda_u, 0.0);
    if (hn != hn) margin += hn;  // NaN propagates as in torch.relu
    cd += ce_d[r];
    ca += ce_a[r];
  }
  const double inv_b = 1.0 / static_cast<double>(batch);
  auto opts = t.options().dtype(at::kFloat);
  return {at::scalar_tensor(margin * inv_b, opts), at::scalar_tensor((alpha_ds * cd + alpha_as * ca) * inv_b, opts),
          row_stats};
}

std::tuple<at::Tensor, at::Tensor> generator_loss_backward(const at::Tensor& grad_margin, const at::Tensor& grad_bal,
                                                           const at::Tensor& t, const at::Tensor& s,
                                                           const at::Tensor& y, const at::Tensor& row_stats,
                                                           double lambda_l, double lambda_u, double alpha_ds,
                                                           double alpha_as) {
  check_cpu(t, "t");
  const int64_t batch = t.size(0), classes = t.size(1);
  const float gm = grad_margin.to(at::kFloat).item<float>(), gb = grad_bal.to(at::kFloat).item<float>();
  const at::Tensor rs = row_stats.contiguous();
  const float* h = rs.const_data_ptr<float>();
  const float* lse_d = h + batch;
  const float* lse_a = lse_d + batch;

  // dL_margin/dH_i, including the path through the (undetached) batch minimum, split among ties.
  float h_min = std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < batch; ++r) h_min = h[r] < h_min ? h[r] : h_min;
  const float log_c = static_cast<float>(std::log(static_cast<double>(classes)));
  const float denom = log_c - h_min;
  std::vector<float> m(batch), dh(batch);
  float through_min = 0.f;
  int64_t ties = 0;
  for (int64_t r = 0; r < batch; ++r) {
    const float hn = (h[r] - h_min) / denom;
    m[r] = (static_cast<float>(hn - lambda_u > 0) - static_cast<float>(lambda_l - hn > 0)) / batch;
    through_min += m[r] * (h[r] - log_c);
    ties += h[r] == h_min;
  }
  for (int64_t r = 0; r < batch; ++r) {
    dh[r] = gm * (m[r] / denom + (h[r] == h_min ? through_min / (denom * denom) / ties : 0.f));
  }
  const float cd = gb * static_cast<float>(alpha_ds) / batch, ca = gb * static_cast<float>(alpha_as) / batch;

  at::Tensor grad_t = at::empty_like(t), grad_s = at::empty_like(s);
  const int64_t* labels = y.const_data_ptr<int64_t>();
  ADADFQ_DISPATCH_FLOATS(t.scalar_type(), "adadfq_generator_loss_backward_cpu", [&] {
    const scalar_t* pt = t.const_data_ptr<scalar_t>();
    const scalar_t* ps = s.const_data_ptr<scalar_t>();
    scalar_t* gt = grad_t.data_ptr<scalar_t>();
    scalar_t* gs = grad_s.data_ptr<scalar_t>();
    at::parallel_for(0, batch, kRowsPerTask, [&](int64_t r0, int64_t r1) {
      std::vector<float> tb, sb, gtb, gsb;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t base = r * classes;
        float* gtr = out_row_as_float(gt + base, classes, gtb);
        float* gsr = out_row_as_float(gs + base, classes, gsb);
        generator_grad_row(row_as_float(pt + base, classes, tb), row_as_float(ps + base, classes, sb), gtr, gsr,
                           classes, labels[r], h[r], lse_d[r], lse_a[r], dh[r], cd, ca);
        store_row(gtr, gt + base, classes);
        store_row(gsr, gs + base, classes);
      }
    });
  });
  return {grad_t, grad_s};
}

}  // namespace

TORCH_LIBRARY_IMPL(adadfq_native, CPU, m) {
  m.impl("generator_loss", &generator_loss);
  m.impl("generator_loss_backward", &generator_loss_backward);
}

}  // namespace adadfq::cpu
