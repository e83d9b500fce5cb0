// Autograd formulas of the kernel-level ops (adadfq_native::*), registered at the Autograd dispatch key.
//
// Why in C++: at the game loop's sizes (logits of 16 x 10, ResNet-20 weights) a Python autograd.Function costs
// more than the fused kernels themselves. With these formulas the public ops' eager path is one dispatcher
// call per direction, for whichever device kernel (CPU here, CUDA from _C_cuda) is registered below Autograd.
// The formulas mirror the Python ones in adadfq_fast/ops/*.py, which serve the reference and Triton backends.
#include <torch/autograd.h>
#include <torch/library.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include <tuple>

namespace adadfq::autograd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using at::Tensor;

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// ---- fake-quant family: straight-through identity gradient to the input ----
struct FakeQuantFn : torch::autograd::Function<FakeQuantFn> {
  static Tensor forward(AutogradContext*, const Tensor& x, int64_t bits, const Tensor& lo, const Tensor& hi,
                        int64_t axis) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto k = op<Tensor(const Tensor&, int64_t, const Tensor&, const Tensor&, int64_t)>("adadfq_native::fake_quant");
    return k.call(x, bits, lo, hi, axis);
  }
  static variable_list backward(AutogradContext*, variable_list g) { return {g[0], Tensor(), Tensor(), Tensor(), Tensor()}; }
};

struct FakeQuantWeightFn : torch::autograd::Function<FakeQuantWeightFn> {
  static Tensor forward(AutogradContext*, const Tensor& w, int64_t bits) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto k = op<Tensor(const Tensor&, int64_t)>("adadfq_native::fake_quant_weight");
    return k.call(w, bits);
  }
  static variable_list backward(AutogradContext*, variable_list g) { return {g[0], Tensor()}; }
};

struct FakeQuantActFn : torch::autograd::Function<FakeQuantActFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, int64_t bits, const Tensor& state, double beta,
                               bool update) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto k = op<std::tuple<Tensor, Tensor>(const Tensor&, int64_t, const Tensor&, double, bool)>(
        "adadfq_native::fake_quant_act");
    auto [out, new_state] = k.call(x, bits, state, beta, update);
    ctx->mark_non_differentiable({new_state});
    return {out, new_state};
  }
  static variable_list backward(AutogradContext*, variable_list g) {
    return {g[0], Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// ---- AdaDFQ losses: the fused backward kernels ----
struct GeneratorLossFn : torch::autograd::Function<GeneratorLossFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& t, const Tensor& s, const Tensor& y,
                               double lambda_l, double lambda_u, double alpha_ds, double alpha_as) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto k = op<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, double, double,
                                                          double, double)>("adadfq_native::generator_loss");
    auto [margin, bal, row_stats] = k.call(t, s, y, lambda_l, lambda_u, alpha_ds, alpha_as);
    ctx->save_for_backward({t, s, y, row_stats});
    ctx->saved_data["hp"] = std::vector<double>{lambda_l, lambda_u, alpha_ds, alpha_as};
    ctx->mark_non_differentiable({row_stats});
    return {margin, bal, row_stats};
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    static auto k = op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                  const Tensor&, const Tensor&, double, double, double, double)>(
        "adadfq_native::generator_loss_backward");
    auto saved = ctx->get_saved_variables();
    const auto hp = ctx->saved_data["hp"].toDoubleVector();
    // A loss that did not reach the output arrives undefined: its gradient is zero.
    auto zero = [&](const Tensor& v) { return v.defined() ? v : at::zeros({}, saved[0].options().dtype(at::kFloat)); };
    auto [gt, gs] = k.call(zero(g[0]), zero(g[1]), saved[0], saved[1], saved[2], saved[3], hp[0], hp[1], hp[2], hp[3]);
    return {gt, gs, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

struct StudentLossFn : torch::autograd::Function<StudentLossFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& t, const Tensor& s, double temperature) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto k = op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, double)>("adadfq_native::student_loss");
    auto [loss, row_stats] = k.call(t, s, temperature);
    ctx->save_for_backward({t, s, row_stats});
    ctx->saved_data["T"] = temperature;
    ctx->mark_non_differentiable({row_stats});
    return {loss, row_stats};
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    static auto k = op<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, double)>(
        "adadfq_native::student_loss_backward");
    auto saved = ctx->get_saved_variables();
    Tensor gs = k.call(g[0], saved[0], saved[1], saved[2], ctx->saved_data["T"].toDouble());
    return {Tensor(), gs, Tensor()};  // t is a constant of L_Q
  }
};

std::tuple<Tensor, Tensor> fake_quant_act(const Tensor& x, int64_t bits, const Tensor& state, double beta,
                                          bool update) {
  auto r = FakeQuantActFn::apply(x, bits, state, beta, update);
  return {r[0], r[1]};
}

std::tuple<Tensor, Tensor, Tensor> generator_loss(const Tensor& t, const Tensor& s, const Tensor& y, double lambda_l,
                                                  double lambda_u, double alpha_ds, double alpha_as) {
  auto r = GeneratorLossFn::apply(t, s, y, lambda_l, lambda_u, alpha_ds, alpha_as);
  return {r[0], r[1], r[2]};
}

std::tuple<Tensor, Tensor> student_loss(const Tensor& t, const Tensor& s, double temperature) {
  auto r = StudentLossFn::apply(t, s, temperature);
  return {r[0], r[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(adadfq_native, Autograd, m) {
  m.impl("fake_quant", [](const Tensor& x, int64_t bits, const Tensor& lo, const Tensor& hi, int64_t axis) {
    return FakeQuantFn::apply(x, bits, lo, hi, axis);
  });
  m.impl("fake_quant_weight", [](const Tensor& w, int64_t bits) { return FakeQuantWeightFn::apply(w, bits); });
  m.impl("fake_quant_act", &fake_quant_act);
  m.impl("generator_loss", &generator_loss);
  m.impl("student_loss", &student_loss);
}

}  // namespace adadfq::autograd
