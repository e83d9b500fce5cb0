// adadfq_native::bn_stat_loss and bn_stat_loss_backward on CPU.
//
// Forward: per-channel mean and biased variance of every BN input in one pass per tensor. Each span of a
// channel is summed in float32 around a shift (the channel's first element, which keeps the one-pass variance
// free of cancellation for data far from zero), and spans are combined in double. All layers' channels are
// one pool of parallel work, so the 19 small tensors of ResNet-20 cost one parallel region, not 19.
// Backward: dL/dx = a_c + b_c (x - mu_c), one elementwise pass per tensor.
#include <tuple>
#include <vector>

#include "cpu_common.h"

namespace adadfq::cpu {
namespace {

struct Layout {
  int64_t outer, channels, inner;  // flat memory viewed as [outer, channels, inner]
};

Layout layout_of(const at::Tensor& x) {
  const int64_t c = x.size(1);
  const int64_t inner = inner_size(x, 1, c);
  return {c > 0 && inner > 0 ? x.numel() / (c * inner) : 0, c, inner};
}

// Sums of (x - shift) and (x - shift)^2 over n contiguous elements.
template <typename scalar_t>
inline void shifted_sums(const scalar_t* p, int64_t n, float shift, double& s1, double& s2) {
  float a = 0.f, b = 0.f;
#pragma omp simd reduction(+ : a, b)
  for (int64_t i = 0; i < n; ++i) {
    const float d = static_cast<float>(p[i]) - shift;
    a += d;
    b += d * d;
  }
  s1 += a;
  s2 += b;
}

// Statistics of one channel of a [outer, C, inner>1] tensor (NCHW-like).
template <typename scalar_t>
void channel_stats(const scalar_t* x, const Layout& l, int64_t c, float* mean, float* var) {
  const float shift = static_cast<float>(x[c * l.inner]);
  double s1 = 0.0, s2 = 0.0;
  for (int64_t o = 0; o < l.outer; ++o) shifted_sums(x + (o * l.channels + c) * l.inner, l.inner, shift, s1, s2);
  const double m = static_cast<double>(l.outer * l.inner);
  mean[c] = static_cast<float>(shift + s1 / m);
  var[c] = static_cast<float>(s2 / m - (s1 / m) * (s1 / m));
}

// Statistics of all channels of a [rows, C] tensor (channels_last or 2-D): rows are split over threads, each
// accumulating a row of C partial sums (vectorized across channels), then partials are added.
template <typename scalar_t>
void row_stats(const scalar_t* x, const Layout& l, float* mean, float* var) {
  const int64_t rows = l.outer, c = l.channels;
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows * c / kGrain));
  const int64_t chunk = (rows + tasks - 1) / tasks;
  std::vector<double> s1(tasks * c, 0.0), s2(tasks * c, 0.0);
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> a(c), b(c);
    for (int64_t t = t0; t < t1; ++t) {
      std::fill(a.begin(), a.end(), 0.f);
      std::fill(b.begin(), b.end(), 0.f);
      const int64_t r1 = std::min(rows, (t + 1) * chunk);
      for (int64_t r = t * chunk; r < r1; ++r) {
        const scalar_t* row = x + r * c;
#pragma omp simd
        for (int64_t k = 0; k < c; ++k) {
          const float d = static_cast<float>(row[k]) - static_cast<float>(x[k]);
          a[k] += d;
          b[k] += d * d;
        }
      }
      for (int64_t k = 0; k < c; ++k) {
        s1[t * c + k] = a[k];
        s2[t * c + k] = b[k];
      }
    }
  });
  const double m = static_cast<double>(rows);
  for (int64_t k = 0; k < c; ++k) {
    double a = 0.0, b = 0.0;
    for (int64_t t = 0; t < tasks; ++t) {
      a += s1[t * c + k];
      b += s2[t * c + k];
    }
    mean[k] = static_cast<float>(static_cast<double>(x[k]) + a / m);
    var[k] = static_cast<float>(b / m - (a / m) * (a / m));
  }
}

std::tuple<at::Tensor, at::Tensor> bn_stat_loss(at::TensorList feats, at::TensorList running_means,
                                                at::TensorList running_vars) {
  const int64_t num_layers = feats.size();
  std::vector<Layout> layouts;
  std::vector<int64_t> offsets;  // first channel of each layer in the stats columns
  int64_t total = 0;
  for (const auto& x : feats) {
    check_cpu(x, "feats");
    layouts.push_back(layout_of(x));
    offsets.push_back(total);
    total += x.size(1);
  }
  at::Tensor stats = at::empty({2, total}, feats[0].options().dtype(at::kFloat));
  float* mean = stats.data_ptr<float>();
  float* var = mean + total;

  // Channel-major layers: one work item per (layer, channel), all layers in one parallel region.
  std::vector<std::pair<int64_t, int64_t>> items;
  for (int64_t l = 0; l < num_layers; ++l) {
    if (layouts[l].inner > 1 && layouts[l].outer * layouts[l].inner > 0) {
      for (int64_t c = 0; c < layouts[l].channels; ++c) items.emplace_back(l, c);
    }
  }
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const auto [l, c] = items[i];
      ADADFQ_DISPATCH_FLOATS(feats[l].scalar_type(), "adadfq_bn_stats_cpu", [&] {
        channel_stats(feats[l].const_data_ptr<scalar_t>(), layouts[l], c, mean + offsets[l], var + offsets[l]);
      });
    }
  });
  for (int64_t l = 0; l < num_layers; ++l) {
    const Layout& lay = layouts[l];
    if (lay.outer * lay.inner == 0) {  // empty batch: mean and variance are undefined, as in torch
      for (int64_t c = 0; c < lay.channels; ++c) mean[offsets[l] + c] = var[offsets[l] + c] = NAN;
    } else if (lay.inner == 1) {
      ADADFQ_DISPATCH_FLOATS(feats[l].scalar_type(), "adadfq_bn_stats_rows_cpu", [&] {
        row_stats(feats[l].const_data_ptr<scalar_t>(), lay, mean + offsets[l], var + offsets[l]);
      });
    }
  }

  double loss = 0.0;
  for (int64_t l = 0; l < num_layers; ++l) {
    const at::Tensor rm = running_means[l].to(at::kFloat), rv = running_vars[l].to(at::kFloat);
    const float* prm = rm.const_data_ptr<float>();
    const float* prv = rv.const_data_ptr<float>();
    double dm = 0.0, dv = 0.0;
    for (int64_t c = 0; c < layouts[l].channels; ++c) {
      const double a = static_cast<double>(mean[offsets[l] + c]) - prm[c];
      const double b = static_cast<double>(var[offsets[l] + c]) - prv[c];
      dm += a * a;
      dv += b * b;
    }
    loss += (dm + dv) / static_cast<double>(layouts[l].channels);
  }
  return {at::scalar_tensor(loss / num_layers, stats.options()), stats};
}

// out = a_c + b_c * (x - mu_c) for every element of a [outer, C, inner] tensor.
template <typename scalar_t>
void channel_affine(const scalar_t* x, scalar_t* out, const Layout& l, const float* a, const float* b,
                    const float* mu) {
  const int64_t numel = l.outer * l.channels * l.inner;
  at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    while (i < end) {
      const int64_t segment = i / l.inner;
      const int64_t stop = std::min(end, (segment + 1) * l.inner);
      const int64_t c = segment % l.channels;
      const float ac = a[c], bc = b[c], mc = mu[c];
#pragma omp simd
      for (int64_t k = i; k < stop; ++k) out[k] = static_cast<scalar_t>(ac + bc * (static_cast<float>(x[k]) - mc));
      i = stop;
    }
  });
}

// The same for a [rows, C] tensor (channels_last or 2-D, inner == 1): rows split over threads, each row one
// vectorized pass across the channels. (channel_affine would see segments of one element there: an integer
// division per element, which made the backward 15x slower than the forward on channels_last features.)
template <typename scalar_t>
void row_affine(const scalar_t* x, scalar_t* out, const Layout& l, const float* a, const float* b, const float* mu) {
  const int64_t c = l.channels;
  at::parallel_for(0, l.outer, std::max<int64_t>(1, kGrain / std::max<int64_t>(c, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* row = x + r * c;
      scalar_t* dst = out + r * c;
#pragma omp simd
      for (int64_t k = 0; k < c; ++k) dst[k] = static_cast<scalar_t>(a[k] + b[k] * (static_cast<float>(row[k]) - mu[k]));
    }
  });
}

std::vector<at::Tensor> bn_stat_loss_backward(const at::Tensor& grad, at::TensorList feats,
                                              at::TensorList running_means, at::TensorList running_vars,
                                              const at::Tensor& stats) {
  const int64_t num_layers = feats.size();
  const float g = grad.to(at::kFloat).item<float>();
  const at::Tensor st = stats.contiguous();
  const int64_t total = st.size(1);
  const float* mean = st.const_data_ptr<float>();
  const float* var = mean + total;
  std::vector<at::Tensor> grads;
  int64_t offset = 0;
  for (int64_t l = 0; l < num_layers; ++l) {
    const at::Tensor& x = feats[l];
    const Layout lay = layout_of(x);
    const at::Tensor rm = running_means[l].to(at::kFloat), rv = running_vars[l].to(at::kFloat);
    const float* prm = rm.const_data_ptr<float>();
    const float* prv = rv.const_data_ptr<float>();
    const float coef = g / static_cast<float>(num_layers * lay.channels * std::max<int64_t>(1, lay.outer * lay.inner));
    std::vector<float> a(lay.channels), b(lay.channels);
    for (int64_t c = 0; c < lay.channels; ++c) {
      a[c] = 2.0f * coef * (mean[offset + c] - prm[c]);
      b[c] = 4.0f * coef * (var[offset + c] - prv[c]);
    }
    at::Tensor out = at::empty_like(x);
    if (x.numel() > 0) {
      ADADFQ_DISPATCH_FLOATS(x.scalar_type(), "adadfq_bn_stat_loss_backward_cpu", [&] {
        if (lay.inner == 1) {
          row_affine(x.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lay, a.data(), b.data(), mean + offset);
        } else {
          channel_affine(x.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lay, a.data(), b.data(),
                         mean + offset);
        }
      });
    }
    grads.push_back(out);
    offset += lay.channels;
  }
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(adadfq_native, CPU, m) {
  m.impl("bn_stat_loss", &bn_stat_loss);
  m.impl("bn_stat_loss_backward", &bn_stat_loss_backward);
}

}  // namespace adadfq::cpu
