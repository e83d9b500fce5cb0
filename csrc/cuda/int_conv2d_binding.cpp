// Torch binding of adadfq_native::int_conv2d for CUDA (kernel: int_conv2d.cu). Checks the arguments (the public op
// checks them too; this guards direct calls of the native op), allocates the output in x's memory format, brings
// the weight to channels_last (input channels contiguous: one 32-bit load per 4 channels) when it is not already,
// and passes every other tensor through its strides (no copies).
#include "binding_common.h"

namespace adadfq {
namespace cuda {
namespace {

using namespace binding;

void strides_of(const at::Tensor& t, int64_t (&dst)[4]) {
  for (int d = 0; d < 4; ++d) dst[d] = t.stride(d);
}

at::Tensor int_conv2d(const at::Tensor& x, const at::Tensor& weight_in, const at::Tensor& weight_zero,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      const at::Tensor& out_mult, const at::Tensor& out_bias, const c10::optional<at::Tensor>& residual,
                      double residual_scale, bool relu, int64_t out_bits, double out_scale, double out_zero) {
  check_cuda(x, "x");
  TORCH_CHECK(x.scalar_type() == at::kByte && x.dim() == 4, "x: expected uint8 codes [N, C, H, W], got ",
              x.scalar_type(), " of shape ", x.sizes());
  TORCH_CHECK(weight_in.scalar_type() == at::kChar && weight_in.dim() == 4,
              "weight: expected int8 levels [O, C/groups, kh, kw], got ", weight_in.scalar_type(), " of shape ",
              weight_in.sizes());
  check_same_device(weight_in, "weight", x);
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "stride/padding/dilation: expected two values each");
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1, "stride: expected values >= 1, got ", stride);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, "padding: expected values >= 0, got ", padding);
  TORCH_CHECK(dilation[0] >= 1 && dilation[1] >= 1, "dilation: expected values >= 1, got ", dilation);
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t o = weight_in.size(0), cg = weight_in.size(1), kh = weight_in.size(2), kw = weight_in.size(3);
  TORCH_CHECK(groups >= 1 && c % groups == 0 && o % groups == 0 && cg * groups == c, "groups: ", groups,
              " does not fit x of ", c, " channels and weight of shape ", weight_in.sizes());
  for (const auto& [t, name, dtype] : {std::make_tuple(&weight_zero, "weight_zero", at::kInt),
                                       std::make_tuple(&out_mult, "out_mult", at::kFloat),
                                       std::make_tuple(&out_bias, "out_bias", at::kFloat)}) {
    TORCH_CHECK(t->scalar_type() == dtype && t->dim() == 1 && t->size(0) == o, name, ": expected ", dtype, " [", o,
                "], got ", t->scalar_type(), " of shape ", t->sizes());
    check_same_device(*t, name, x);
  }
  TORCH_CHECK(out_bits == 0 || (out_bits >= 2 && out_bits <= 8), "out_bits: expected 0 or 2..8, got ", out_bits);
  const int64_t ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) / stride[0] + 1;
  const int64_t wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) / stride[1] + 1;
  TORCH_CHECK(ho >= 1 && wo >= 1, "x: input of ", h, "x", w, " is too small for a ", kh, "x", kw, " kernel");
  int32_t residual_kind = 0;
  if (residual.has_value()) {
    const at::Tensor& r = *residual;
    check_same_device(r, "residual", x);
    TORCH_CHECK(r.scalar_type() == at::kFloat || r.scalar_type() == at::kByte,
                "residual: expected float32 values or uint8 codes, got ", r.scalar_type());
    TORCH_CHECK(r.dim() == 4 && r.size(0) == n && r.size(1) == o && r.size(2) == ho && r.size(3) == wo,
                "residual: expected the output shape [", n, ", ", o, ", ", ho, ", ", wo, "], got ", r.sizes());
    residual_kind = r.scalar_type() == at::kByte ? 2 : 1;
  }
  const c10::cuda::CUDAGuard guard(x.device());
  // The output follows x: channels_last when x is (and is not also contiguous), as the reference.
  const bool channels_last = x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
  at::Tensor out = at::empty({n, o, ho, wo}, x.options().dtype(out_bits ? at::kByte : at::kFloat),
                             channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  const at::Tensor weight = weight_in.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor zero = weight_zero.contiguous(), mult = out_mult.contiguous(), bias = out_bias.contiguous();

  IntConv2dArgs a{};
  a.x = x.const_data_ptr<uint8_t>();
  strides_of(x, a.x_stride);
  a.weight = weight.const_data_ptr<int8_t>();
  strides_of(weight, a.w_stride);
  a.weight_zero = zero.const_data_ptr<int32_t>();
  a.out_mult = mult.const_data_ptr<float>();
  a.out_bias = bias.const_data_ptr<float>();
  a.residual_kind = residual_kind;
  if (residual_kind) {
    a.residual = residual->const_data_ptr();
    strides_of(*residual, a.r_stride);
  }
  a.out = out.data_ptr();
  strides_of(out, a.o_stride);
  a.batch = n, a.in_channels = c, a.height = h, a.width = w, a.out_channels = o;
  a.kernel_h = kh, a.kernel_w = kw, a.out_h = ho, a.out_w = wo;
  a.stride_h = static_cast<int32_t>(stride[0]), a.stride_w = static_cast<int32_t>(stride[1]);
  a.pad_h = static_cast<int32_t>(padding[0]), a.pad_w = static_cast<int32_t>(padding[1]);
  a.dil_h = static_cast<int32_t>(dilation[0]), a.dil_w = static_cast<int32_t>(dilation[1]);
  a.groups = static_cast<int32_t>(groups);
  a.relu = relu ? 1 : 0;
  a.out_bits = static_cast<int32_t>(out_bits);
  // float32 values of the Python floats, as the reference's float32 tensors built from them.
  a.residual_scale = static_cast<float>(residual_scale);
  a.out_scale = static_cast<float>(out_scale);
  a.out_zero = static_cast<float>(out_zero);
  const cudaError_t err = launch_int_conv2d(a, current_stream(x));
  TORCH_CHECK(err != cudaErrorInvalidValue, "int_conv2d: sizes outside the CUDA kernel's range (more than ",
              (int64_t{1} << 31) / (128 * 255), " taps per output, or 2^31 output pixels): x ", x.sizes(),
              ", weight ", weight_in.sizes());
  check_launch(err, "int_conv2d");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(adadfq_native, CUDA, m) { m.impl("int_conv2d", &int_conv2d); }

}  // namespace cuda
}  // namespace adadfq
