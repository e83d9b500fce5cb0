// adadfq_native::fake_quant_act on CPU: batch min/max (one pass), the original EMA range update, then
// quantization over the new range (second pass). Functional: returns (out, new_state).
#include <tuple>
#include <vector>

#include "cpu_common.h"

namespace adadfq::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> fake_quant_act(const at::Tensor& x, int64_t bits, const at::Tensor& state,
                                                  double beta, bool update) {
  check_cpu(x, "x");
  at::Tensor new_state = state.clone();
  float* st = new_state.data_ptr<float>();
  at::Tensor out = at::empty_like(x);
  const int64_t numel = x.numel();
  ADADFQ_DISPATCH_FLOATS(x.scalar_type(), "adadfq_fake_quant_act_cpu", [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    if (update && numel > 0) {
      const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), numel / kGrain));
      const int64_t chunk = (numel + tasks - 1) / tasks;
      std::vector<float> mins(tasks, std::numeric_limits<float>::infinity());
      std::vector<float> maxs(tasks, -std::numeric_limits<float>::infinity());
      std::vector<char> nans(tasks, 0);
      at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t b = t * chunk, e = std::min(numel, b + chunk);
          bool has_nan = false;
          if (e > b) minmax(in + b, e - b, mins[t], maxs[t], has_nan);
          nans[t] = has_nan;
        }
      });
      float mn = std::numeric_limits<float>::infinity(), mx = -mn;
      bool has_nan = false;
      for (int64_t t = 0; t < tasks; ++t) {
        mn = mins[t] < mn ? mins[t] : mn;
        mx = maxs[t] > mx ? maxs[t] : mx;
        has_nan = has_nan || nans[t];
      }
      if (has_nan) mn = mx = std::numeric_limits<float>::quiet_NaN();
      const ActRange r = ema_range_update({st[0], st[1], st[2]}, mn, mx, static_cast<float>(beta),
                                          static_cast<float>(1.0 - beta));
      st[0] = r.x_min;
      st[1] = r.x_max;
      st[2] = r.beta_t;
    }
    const QuantParams p = make_quant_params(static_cast<int>(bits), st[0], st[1]);
    fake_quant_flat(in, out.data_ptr<scalar_t>(), numel, numel, 1, &p);
  });
  return {out, new_state};
}

}  // namespace

TORCH_LIBRARY_IMPL(adadfq_native, CPU, m) { m.impl("fake_quant_act", &fake_quant_act); }

}  // namespace adadfq::cpu
