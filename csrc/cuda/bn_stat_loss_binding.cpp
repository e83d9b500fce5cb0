// Torch bindings of adadfq_native::bn_stat_loss and bn_stat_loss_backward for CUDA (kernels: bn_stat_loss.cu).
// All layers go to the kernels together: the binding describes each layer (pointers, sizes, dtypes) in a host
// table, the launcher plans the blocks and ships the table to the device inside the scratch buffer.
#include <tuple>
#include <vector>

#include "binding_common.h"

namespace adadfq {
namespace cuda {
namespace {

using namespace binding;

// Dense inputs and contiguous running statistics, kept alive until the launches are queued (the caching
// allocator only hands freed memory to later work on the same stream, so temporaries may die right after).
struct Layers {
  std::vector<at::Tensor> keep;
  std::vector<BnLayer> table;
};

Layers describe(at::TensorList feats, at::TensorList running_means, at::TensorList running_vars) {
  TORCH_CHECK(!feats.empty(), "feats: expected at least one BN input");
  TORCH_CHECK(feats.size() == running_means.size() && feats.size() == running_vars.size(),
              "running_means/running_vars: expected one per feature (", feats.size(), "), got ",
              running_means.size(), " and ", running_vars.size());
  check_cuda(feats[0], "feats[0]");
  Layers layers;
  for (size_t l = 0; l < feats.size(); ++l) {
    const at::Tensor x = dense(feats[l]);
    check_same_device(x, "feats[i]", feats[0]);
    check_same_device(running_means[l], "running_means[i]", feats[0]);
    check_same_device(running_vars[l], "running_vars[i]", feats[0]);
    TORCH_CHECK(x.dim() >= 2, "feats[", l, "]: expected at least 2 dims [N, C, ...], got ", x.dim());
    const int64_t channels = x.size(1);
    const at::Tensor rm = running_means[l].contiguous(), rv = running_vars[l].contiguous();
    TORCH_CHECK(rm.numel() == channels && rv.numel() == channels, "running_means/running_vars[", l,
                "]: expected ", channels, " values, got ", rm.numel(), " and ", rv.numel());
    BnLayer layer{};
    layer.x = x.const_data_ptr();
    layer.running_mean = rm.const_data_ptr();
    layer.running_var = rv.const_data_ptr();
    layer.grad_x = nullptr;
    layer.numel = x.numel();
    layer.inner = inner_size(x, 1, channels);
    layer.channels = channels;
    layer.x_dtype = dtype_of(x, "feats[i]");
    layer.rm_dtype = dtype_of(rm, "running_means[i]");
    layer.rv_dtype = dtype_of(rv, "running_vars[i]");
    layers.table.push_back(layer);
    layers.keep.push_back(x);
    layers.keep.push_back(rm);
    layers.keep.push_back(rv);
  }
  return layers;
}

at::Tensor scratch_bytes(int64_t bytes, const at::Tensor& like) {
  return at::empty({bytes > 0 ? bytes : 1}, like.options().dtype(at::kByte));
}

std::tuple<at::Tensor, at::Tensor> bn_stat_loss(at::TensorList feats, at::TensorList running_means,
                                                at::TensorList running_vars) {
  Layers layers = describe(feats, running_means, running_vars);
  const at::Tensor& x0 = layers.keep[0];
  const c10::cuda::CUDAGuard guard(x0.device());
  const int num_layers = static_cast<int>(layers.table.size());
  const BnPlan plan = bn_stat_loss_plan(layers.table.data(), num_layers);
  const auto f32 = x0.options().dtype(at::kFloat);
  at::Tensor loss = at::empty({}, f32);
  at::Tensor stats = at::empty({2, plan.total_channels}, f32);
  at::Tensor scratch = scratch_bytes(plan.scratch_bytes, x0);
  check_launch(launch_bn_stat_loss(layers.table.data(), num_layers, plan, loss.data_ptr<float>(),
                                   stats.data_ptr<float>(), scratch.data_ptr(), current_stream(x0)),
               "bn_stat_loss");
  return {loss, stats};
}

std::vector<at::Tensor> bn_stat_loss_backward(const at::Tensor& grad, at::TensorList feats,
                                              at::TensorList running_means, at::TensorList running_vars,
                                              const at::Tensor& stats) {
  Layers layers = describe(feats, running_means, running_vars);
  const at::Tensor& x0 = layers.keep[0];
  check_same_device(grad, "grad", x0);
  check_same_device(stats, "stats", x0);
  const c10::cuda::CUDAGuard guard(x0.device());
  const int num_layers = static_cast<int>(layers.table.size());
  std::vector<at::Tensor> grads;
  grads.reserve(num_layers);
  for (int l = 0; l < num_layers; ++l) {
    grads.push_back(at::empty_like(layers.keep[3 * l]));
    layers.table[l].grad_x = grads.back().data_ptr();
  }
  const BnPlan plan = bn_stat_loss_plan(layers.table.data(), num_layers);
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == 2 && stats.size(1) == plan.total_channels,
              "stats: expected shape [2, ", plan.total_channels, "], got ", stats.sizes());
  TORCH_CHECK(grad.numel() == 1, "grad: expected the loss's scalar gradient, got ", grad.numel(), " values");
  const at::Tensor g = float32(grad), st = float32(stats);
  at::Tensor scratch = scratch_bytes(plan.backward_scratch_bytes, x0);
  check_launch(launch_bn_stat_loss_backward(layers.table.data(), num_layers, plan, g.const_data_ptr<float>(),
                                            st.const_data_ptr<float>(), scratch.data_ptr(), current_stream(x0)),
               "bn_stat_loss_backward");
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(adadfq_native, CUDA, m) {
  m.impl("bn_stat_loss", &bn_stat_loss);
  m.impl("bn_stat_loss_backward", &bn_stat_loss_backward);
}

}  // namespace cuda
}  // namespace adadfq
