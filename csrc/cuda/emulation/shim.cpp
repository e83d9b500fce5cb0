// C entry points over the CUDA launchers, for the CPU emulation test (tests/test_cuda_compile.py loads this with
// ctypes, passing CPU tensors' data pointers). They mirror what the torch bindings do: derive the float32
// constants from the Python doubles, plan and allocate scratch (plain host memory here), launch.
#include <cmath>
#include <vector>

#include "adadfq/cuda_kernels.h"

using namespace adadfq::cuda;

namespace {

std::vector<BnLayer> describe(int n, const void* const* xs, const void* const* rms, const void* const* rvs,
                              void* const* grads, const int* dtypes, const int64_t* numel, const int64_t* inner,
                              const int64_t* channels) {
  std::vector<BnLayer> layers(n);
  for (int l = 0; l < n; ++l) {
    BnLayer& b = layers[l];
    b = BnLayer{};
    b.x = xs[l];
    b.running_mean = rms[l];
    b.running_var = rvs[l];
    b.grad_x = grads ? grads[l] : nullptr;
    b.numel = numel[l];
    b.inner = inner[l];
    b.channels = channels[l];
    b.x_dtype = DType(dtypes[3 * l]);
    b.rm_dtype = DType(dtypes[3 * l + 1]);
    b.rv_dtype = DType(dtypes[3 * l + 2]);
  }
  return layers;
}

GeneratorLossArgs generator_args(const void* t, const void* s, int t_dtype, int s_dtype, const int64_t* y, int64_t b,
                                 int64_t c, double ll, double lu, double ads, double aas) {
  return GeneratorLossArgs{t, s, DType(t_dtype), DType(s_dtype), y, b, c, float(ll), float(lu), float(ads), float(aas),
                           float(std::log(double(c)))};
}

StudentLossArgs student_args(const void* t, const void* s, int t_dtype, int s_dtype, int64_t b, int64_t c, double T) {
  return StudentLossArgs{t, s, DType(t_dtype), DType(s_dtype), b, c, float(T), float(-(T * T)), float(T / double(b))};
}

}  // namespace

extern "C" {

int emu_fake_quant(const void* x, void* out, int dtype, int64_t numel, int64_t inner, int64_t channels,
                   const float* lo, const float* hi, int bits) {
  return launch_fake_quant(x, out, DType(dtype), numel, inner, channels, lo, hi, bits, nullptr);
}

int emu_fake_quant_weight(const void* w, void* out, int dtype, int64_t numel, int64_t inner, int64_t channels,
                          int bits) {
  return launch_fake_quant_weight(w, out, DType(dtype), numel, inner, channels, bits, nullptr);
}

int emu_fake_quant_act(const void* x, void* out, int dtype, int64_t numel, const float* state, float* new_state,
                       int bits, double beta, int update) {
  std::vector<float> scratch(fake_quant_act_scratch_floats(numel), 1e30f);  // garbage: kernels must overwrite
  return launch_fake_quant_act(x, out, DType(dtype), numel, state, new_state, scratch.data(), bits, float(beta),
                               float(1.0 - beta), update != 0, nullptr);
}

int64_t emu_bn_total_channels(int n, const void* const* xs, const void* const* rms, const void* const* rvs,
                              const int* dtypes, const int64_t* numel, const int64_t* inner, const int64_t* channels) {
  std::vector<BnLayer> layers = describe(n, xs, rms, rvs, nullptr, dtypes, numel, inner, channels);
  return bn_stat_loss_plan(layers.data(), n).total_channels;
}

int emu_bn_stat_loss(int n, const void* const* xs, const void* const* rms, const void* const* rvs, const int* dtypes,
                     const int64_t* numel, const int64_t* inner, const int64_t* channels, float* loss, float* stats) {
  std::vector<BnLayer> layers = describe(n, xs, rms, rvs, nullptr, dtypes, numel, inner, channels);
  const BnPlan plan = bn_stat_loss_plan(layers.data(), n);
  std::vector<char> scratch(plan.scratch_bytes, char(0x5a));  // garbage, including the counter
  return launch_bn_stat_loss(layers.data(), n, plan, loss, stats, scratch.data(), nullptr);
}

int emu_bn_stat_loss_backward(int n, const void* const* xs, const void* const* rms, const void* const* rvs,
                              void* const* grads, const int* dtypes, const int64_t* numel, const int64_t* inner,
                              const int64_t* channels, const float* grad, const float* stats) {
  std::vector<BnLayer> layers = describe(n, xs, rms, rvs, grads, dtypes, numel, inner, channels);
  const BnPlan plan = bn_stat_loss_plan(layers.data(), n);
  std::vector<char> scratch(plan.backward_scratch_bytes, char(0x5a));
  return launch_bn_stat_loss_backward(layers.data(), n, plan, grad, stats, scratch.data(), nullptr);
}

int emu_generator_loss(const void* t, const void* s, int t_dtype, int s_dtype, const int64_t* y, int64_t b, int64_t c,
                       double ll, double lu, double ads, double aas, float* margin, float* bal, float* row_stats) {
  return launch_generator_loss(generator_args(t, s, t_dtype, s_dtype, y, b, c, ll, lu, ads, aas), margin, bal,
                               row_stats, nullptr);
}

int emu_generator_loss_backward(const float* grad_margin, const float* grad_bal, const void* t, const void* s,
                                int t_dtype, int s_dtype, const int64_t* y, int64_t b, int64_t c,
                                const float* row_stats, double ll, double lu, double ads, double aas, void* grad_t,
                                void* grad_s) {
  return launch_generator_loss_backward(generator_args(t, s, t_dtype, s_dtype, y, b, c, ll, lu, ads, aas), grad_margin,
                                        grad_bal, row_stats, grad_t, grad_s, nullptr);
}

int emu_student_loss(const void* t, const void* s, int t_dtype, int s_dtype, int64_t b, int64_t c, double T,
                     float* loss, float* row_stats) {
  return launch_student_loss(student_args(t, s, t_dtype, s_dtype, b, c, T), loss, row_stats, nullptr);
}

int emu_student_loss_backward(const float* grad, const void* t, const void* s, int t_dtype, int s_dtype, int64_t b,
                              int64_t c, const float* row_stats, double T, void* grad_s) {
  return launch_student_loss_backward(student_args(t, s, t_dtype, s_dtype, b, c, T), grad, row_stats, grad_s,
                                      nullptr);
}

// sizes: N, C, H, W, O, kh, kw, Ho, Wo; conv: stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups.
int emu_int_conv2d(const uint8_t* x, const int64_t* x_stride, const int8_t* weight, const int64_t* w_stride,
                   const int32_t* weight_zero, const float* out_mult, const float* out_bias, const void* residual,
                   int residual_kind, const int64_t* r_stride, void* out, const int64_t* o_stride,
                   const int64_t* sizes, const int* conv, int relu, int out_bits, double residual_scale,
                   double out_scale, double out_zero) {
  IntConv2dArgs a{};
  a.x = x;
  a.weight = weight;
  for (int d = 0; d < 4; ++d) {
    a.x_stride[d] = x_stride[d];
    a.w_stride[d] = w_stride[d];
    a.r_stride[d] = residual_kind ? r_stride[d] : 0;
    a.o_stride[d] = o_stride[d];
  }
  a.weight_zero = weight_zero;
  a.out_mult = out_mult;
  a.out_bias = out_bias;
  a.residual = residual;
  a.residual_kind = residual_kind;
  a.out = out;
  a.batch = sizes[0], a.in_channels = sizes[1], a.height = sizes[2], a.width = sizes[3], a.out_channels = sizes[4];
  a.kernel_h = sizes[5], a.kernel_w = sizes[6], a.out_h = sizes[7], a.out_w = sizes[8];
  a.stride_h = conv[0], a.stride_w = conv[1], a.pad_h = conv[2], a.pad_w = conv[3], a.dil_h = conv[4];
  a.dil_w = conv[5], a.groups = conv[6];
  a.relu = relu;
  a.out_bits = out_bits;
  a.residual_scale = float(residual_scale);  // float32 values of the Python floats, as the binding
  a.out_scale = float(out_scale);
  a.out_zero = float(out_zero);
  return launch_int_conv2d(a, nullptr);
}

}  // extern "C"
