// adadfq_native::fake_quant_weight on CPU: per-output-channel (dim 0) min/max, then quantization.
// Two passes over the weight: one reduction (min, max per channel), one elementwise.
#include <vector>

#include "cpu_common.h"

namespace adadfq::cpu {
namespace {

at::Tensor fake_quant_weight(const at::Tensor& w, int64_t bits) {
  check_cpu(w, "w");
  if (w.numel() == 0) return at::empty_like(w);
  const int64_t channels = w.size(0);
  const int64_t numel = w.numel();
  const int64_t inner = inner_size(w, 0, channels);
  const int64_t outer = numel / (channels * inner);  // > 1 only when dim 0 is not outermost in memory
  std::vector<QuantParams> params(channels);
  at::Tensor out = at::empty_like(w);
  ADADFQ_DISPATCH_FLOATS(w.scalar_type(), "adadfq_fake_quant_weight_cpu", [&] {
    const scalar_t* in = w.const_data_ptr<scalar_t>();
    // One task per group of channels; each scans its channels' spans (contiguous when dim 0 is outermost).
    const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, numel / channels));
    at::parallel_for(0, channels, grain, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        float mn = std::numeric_limits<float>::infinity(), mx = -mn;
        bool has_nan = false;
        for (int64_t o = 0; o < outer; ++o) minmax(in + (o * channels + c) * inner, inner, mn, mx, has_nan);
        if (has_nan) mn = mx = std::numeric_limits<float>::quiet_NaN();
        params[c] = make_quant_params(static_cast<int>(bits), mn, mx);
      }
    });
    fake_quant_flat(in, out.data_ptr<scalar_t>(), numel, inner, channels, params.data());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(adadfq_native, CPU, m) { m.impl("fake_quant_weight", &fake_quant_weight); }

}  // namespace adadfq::cpu
