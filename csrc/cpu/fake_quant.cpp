// adadfq_native::fake_quant on CPU: the spec quantizer with a given range, per tensor or per channel.
#include <vector>

#include "cpu_common.h"

namespace adadfq::cpu {
namespace {

at::Tensor fake_quant(const at::Tensor& x, int64_t bits, const at::Tensor& lo, const at::Tensor& hi, int64_t axis) {
  check_cpu(x, "x");
  const int64_t channels = lo.numel();
  const at::Tensor lo32 = lo.to(at::kFloat).contiguous(), hi32 = hi.to(at::kFloat).contiguous();
  std::vector<QuantParams> params(channels);
  for (int64_t c = 0; c < channels; ++c) {
    params[c] = make_quant_params(static_cast<int>(bits), lo32.data_ptr<float>()[c], hi32.data_ptr<float>()[c]);
  }
  at::Tensor out = at::empty_like(x);
  const int64_t inner = inner_size(x, axis, channels);
  ADADFQ_DISPATCH_FLOATS(x.scalar_type(), "adadfq_fake_quant_cpu", [&] {
    fake_quant_flat(x.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), x.numel(), inner, channels, params.data());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(adadfq_native, CPU, m) { m.impl("fake_quant", &fake_quant); }

}  // namespace adadfq::cpu
