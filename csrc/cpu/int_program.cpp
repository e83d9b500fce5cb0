// adadfq_native.IntProgram: the integer model's whole forward on CPU in one call (a TorchScript custom class).
//
// adadfq_fast/deploy/modules.py builds the program once from an exported model (IntegerModel._build) and runs
// it per forward. Every step calls the same ATen ops or kernels, with the same arguments and in the same order,
// as the layer runners of modules.py, so the answers are the same bits (tests/test_int_program.py); what goes away
// is the per-layer cost around them: the Python runner, the dispatcher and the argument parsing of each op call,
// about 8 us per layer (ResNet-20 at batch 1: 20 layers of 15-35 us of kernel time each). Steps:
//   * float_conv: the first conv on the float image (modules._FloatConv with its one-pass codes kernel): optional
//     zero channel (1-channel images), at::conv2d, optional max pool, quantize_codes with the BN as an fma;
//   * int_conv: int_conv2d (modules._IntConv);
//   * head_codes: global (or fixed-size) average pool + linear on codes, in exact float64 sums (modules._Head).
// A model with any other layer kind runs on the Python runners (IntegerModel decides; build() never sees it).
// Registers hold the activations between steps; each is released after its last reader.
#include <torch/custom_class.h>

#include <algorithm>
#include <array>
#include <mutex>
#include <vector>

#include "cpu_common.h"
#include "int_kernels.h"

namespace adadfq::cpu {
namespace {

struct FloatConvStep {
  at::Tensor weight;
  std::optional<at::Tensor> bias;
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups = 1;
  bool pad_channel = false;
  std::vector<int64_t> pool;  // empty, or kernel(2) stride(2) padding(2) dilation(2) ceil(1)
  double scale = 1.0, zero = 0.0;
  int64_t bits = 8;
  bool relu = false;
  std::optional<at::Tensor> bn_mult, bn_add;
};

struct IntConvStep {
  at::Tensor weight, zero, mult, bias;
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups = 1;
  double res_scale = 1.0;
  bool relu = false;
  int64_t out_bits = 0;
  double out_scale = 1.0, out_zero = 0.0;
};

struct HeadStep {
  at::Tensor w, z, inv, bias;  // float64: [C, O], [O], [O], [O]
  std::vector<int64_t> pool;   // empty: global; else the required (H, W)
};

enum class Kind { FloatConv, IntConv, Head };

struct Step {
  Kind kind;
  int64_t inp, out, res;  // registers (res = -1: none)
  size_t index;           // into the vector of its kind
};

struct IntProgram : torch::CustomClassHolder {
  std::vector<Step> steps;
  std::vector<FloatConvStep> float_convs;
  std::vector<IntConvStep> int_convs;
  std::vector<HeadStep> heads;
  std::vector<std::vector<int64_t>> frees;  // per step: registers whose last reader it is
  int64_t num_registers = 1, output_register = -1;

  void add(Kind kind, int64_t inp, int64_t out, int64_t res, size_t index) {
    TORCH_CHECK(frees.empty(), "IntProgram: add a step before finish()");
    TORCH_CHECK(inp >= 0 && out >= 0 && res >= -1, "IntProgram: bad register numbers");
    steps.push_back({kind, inp, out, res, index});
    num_registers = std::max({num_registers, inp + 1, out + 1, res + 1});
  }

  void add_float_conv(int64_t inp, int64_t out, at::Tensor weight, std::optional<at::Tensor> bias,
                      std::vector<int64_t> stride, std::vector<int64_t> padding, std::vector<int64_t> dilation,
                      int64_t groups, bool pad_channel, std::vector<int64_t> pool, double scale, double zero,
                      int64_t bits, bool relu, std::optional<at::Tensor> bn_mult, std::optional<at::Tensor> bn_add) {
    TORCH_CHECK(pool.empty() || pool.size() == 9, "IntProgram.add_float_conv: pool needs 9 values");
    float_convs.push_back({std::move(weight), std::move(bias), std::move(stride), std::move(padding),
                           std::move(dilation), groups, pad_channel, std::move(pool), scale, zero, bits, relu,
                           std::move(bn_mult), std::move(bn_add)});
    add(Kind::FloatConv, inp, out, -1, float_convs.size() - 1);
  }

  void add_int_conv(int64_t inp, int64_t out, int64_t res, at::Tensor weight, at::Tensor zero, at::Tensor mult,
                    at::Tensor bias, std::vector<int64_t> stride, std::vector<int64_t> padding,
                    std::vector<int64_t> dilation, int64_t groups, double res_scale, bool relu, int64_t out_bits,
                    double out_scale, double out_zero) {
    int_convs.push_back({std::move(weight), std::move(zero), std::move(mult), std::move(bias), std::move(stride),
                         std::move(padding), std::move(dilation), groups, res_scale, relu, out_bits, out_scale,
                         out_zero});
    add(Kind::IntConv, inp, out, res, int_convs.size() - 1);
  }

  void add_head_codes(int64_t inp, int64_t out, at::Tensor w, at::Tensor z, at::Tensor inv, at::Tensor bias,
                      std::vector<int64_t> pool) {
    TORCH_CHECK(pool.empty() || pool.size() == 2, "IntProgram.add_head_codes: pool needs 2 values or none");
    heads.push_back({std::move(w), std::move(z), std::move(inv), std::move(bias), std::move(pool)});
    add(Kind::Head, inp, out, -1, heads.size() - 1);
  }

  // After the last step: which register to return, and when each register can be released.
  void finish(int64_t output) {
    TORCH_CHECK(!steps.empty() && frees.empty(), "IntProgram.finish: no steps, or finished already");
    output_register = output;
    std::vector<int64_t> last(num_registers, -1);
    for (size_t i = 0; i < steps.size(); ++i) {
      last[steps[i].inp] = static_cast<int64_t>(i);
      if (steps[i].res >= 0) last[steps[i].res] = static_cast<int64_t>(i);
    }
    frees.assign(steps.size(), {});
    for (int64_t r = 0; r < num_registers; ++r)
      if (last[r] >= 0 && r != output) frees[last[r]].push_back(r);
  }

  at::Tensor run(const at::Tensor& x) const {
    TORCH_CHECK(!frees.empty(), "IntProgram.run: call finish() first");
    // Buffers of released registers are kept (pool_) for the next steps and the next call: at batch 256 each
    // fresh multi-MB output was a new mapping whose pages the kernel faulted in and zeroed. A concurrent call
    // (another thread) allocates as usual instead of waiting.
    std::unique_lock<std::mutex> lock(pool_mutex_, std::try_to_lock);
    std::vector<at::Tensor>* pool = lock.owns_lock() ? &pool_ : nullptr;
    std::vector<at::Tensor> regs(num_registers);
    std::vector<int> bound(num_registers, -1);  // largest code a register can hold, where its producer says
    regs[0] = x;
    for (size_t i = 0; i < steps.size(); ++i) {
      const Step& s = steps[i];
      const at::Tensor& in = regs[s.inp];
      TORCH_CHECK(in.defined(), "IntProgram: step ", i, " reads register ", s.inp, ", which holds nothing");
      switch (s.kind) {
        case Kind::FloatConv: {
          const FloatConvStep& c = float_convs[s.index];
          regs[s.out] = float_conv(c, in);
          bound[s.out] = code_bound(c.zero, c.bits);
          break;
        }
        case Kind::IntConv: {
          const IntConvStep& c = int_convs[s.index];
          std::optional<at::Tensor> res;
          if (s.res >= 0) res = regs[s.res];
          at::Tensor buf = s.out == output_register ? at::Tensor() : take(pool, c, in);
          regs[s.out] = int_conv2d_into(in, c.weight, c.zero, c.stride, c.padding, c.dilation, c.groups, c.mult,
                                        c.bias, res, c.res_scale, c.relu, c.out_bits, c.out_scale, c.out_zero,
                                        bound[s.inp], buf.defined() ? &buf : nullptr);
          bound[s.out] = c.out_bits ? code_bound(c.out_zero, c.out_bits) : -1;
          break;
        }
        case Kind::Head: regs[s.out] = head(heads[s.index], in); break;
      }
      for (int64_t r : frees[i]) {
        if (pool != nullptr && regs[r].defined() && regs[r].use_count() == 1 && pool->size() < kMaxPooled &&
            !regs[r].is_same(x))
          pool->push_back(std::move(regs[r]));
        regs[r].reset();
      }
    }
    return regs[output_register];
  }

  static int code_bound(double zero, int64_t bits) {
    return static_cast<int>(zero) + (1 << (bits - 1)) - 1;
  }

  // A pooled buffer of an int conv's output shape (NHWC), removed from the pool; else undefined.
  static at::Tensor take(std::vector<at::Tensor>* pool, const IntConvStep& c, const at::Tensor& x) {
    if (pool == nullptr || x.dim() != 4) return {};
    const int64_t kh = c.weight.size(2), kw = c.weight.size(3);
    const int64_t ho = (x.size(2) + 2 * c.padding[0] - c.dilation[0] * (kh - 1) - 1) / c.stride[0] + 1;
    const int64_t wo = (x.size(3) + 2 * c.padding[1] - c.dilation[1] * (kw - 1) - 1) / c.stride[1] + 1;
    const std::array<int64_t, 4> shape{x.size(0), c.weight.size(0), ho, wo};
    const auto dtype = c.out_bits ? at::kByte : at::kFloat;
    for (size_t j = 0; j < pool->size(); ++j) {
      const at::Tensor& t = (*pool)[j];
      if (t.scalar_type() == dtype && t.sizes() == at::IntArrayRef(shape) &&
          t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
        at::Tensor found = std::move((*pool)[j]);
        pool->erase(pool->begin() + static_cast<std::ptrdiff_t>(j));
        return found;
      }
    }
    return {};
  }

  static constexpr size_t kMaxPooled = 8;
  mutable std::mutex pool_mutex_;
  mutable std::vector<at::Tensor> pool_;

  // modules._FloatConv.__call__ with a float image in, codes out, BN (if any) as the codes kernel's fma.
  static at::Tensor float_conv(const FloatConvStep& c, at::Tensor x) {
    if (c.pad_channel) x = at::cat({x, at::zeros_like(x)}, 1);
    x = first_conv_layout(x);
    at::Tensor y = at::conv2d(x, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups);
    if (!c.pool.empty()) {
      const auto& p = c.pool;
      y = at::max_pool2d(y, {p[0], p[1]}, {p[2], p[3]}, {p[4], p[5]}, {p[6], p[7]}, p[8] != 0);
    }
    at::Tensor codes = quantize_codes(y, c.scale, c.zero, c.bits, c.relu, c.bn_mult, c.bn_add);
    return codes.is_contiguous(at::MemoryFormat::ChannelsLast) ? codes
                                                               : codes.contiguous(at::MemoryFormat::ChannelsLast);
  }

  // modules._FloatConv's layout for the image (modules._nchw_first_conv): NCHW for one image of at most 64x64
  // pixels (2-3x faster there, and the layout a user hands Q), else channels_last (2x faster at 224 px, 5x at a
  // batch of 32 small images).
  static at::Tensor first_conv_layout(const at::Tensor& x) {
    return x.size(0) == 1 && x.size(2) * x.size(3) <= 64 * 64 ? x.contiguous()
                                                               : x.contiguous(at::MemoryFormat::ChannelsLast);
  }

  // modules._Head.__call__ on codes, written out as loops (its ten small ATen calls took 40 us at batch 1):
  // S[n,c] = sum_hw m and acc = S @ q_w^T + (sum_c S) z_w are integers below 2^53, so float64 holds every partial
  // sum exactly in any order; then one multiply and one add per logit (no fma: -ffp-contract=off), as in Python.
  static at::Tensor head(const HeadStep& h, const at::Tensor& x_in) {
    const int64_t n = x_in.size(0), c = x_in.size(1), hw = x_in.size(2) * x_in.size(3), o = h.w.size(1);
    TORCH_CHECK(h.pool.empty() || (x_in.size(2) == h.pool[0] && x_in.size(3) == h.pool[1]), "the model's final ",
                h.pool.empty() ? 0 : h.pool[0], "x", h.pool.empty() ? 0 : h.pool[1], " average pool needs a feature "
                "map of that size, got (", x_in.size(2), ", ", x_in.size(3), ") (input size differs from the exported model's)");
    TORCH_CHECK(h.w.size(0) == c, "head: expected ", h.w.size(0), " channels, got ", c);
    const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);  // NHWC bytes
    const uint8_t* px = x.const_data_ptr<uint8_t>();
    const at::Tensor w = h.w.contiguous(), z = h.z.contiguous(), inv = h.inv.contiguous(), bias = h.bias.contiguous();
    const double *pw = w.const_data_ptr<double>(), *pz = z.const_data_ptr<double>();
    const double *pinv = inv.const_data_ptr<double>(), *pb = bias.const_data_ptr<double>();
    at::Tensor out = at::empty({n, o}, x.options().dtype(at::kFloat));
    float* po = out.data_ptr<float>();
    std::vector<int32_t> sums(c);
    std::vector<double> s(c);
    for (int64_t i = 0; i < n; ++i) {
      std::fill(sums.begin(), sums.end(), 0);
      const uint8_t* img = px + i * hw * c;
      for (int64_t p = 0; p < hw; ++p)
        for (int64_t ch = 0; ch < c; ++ch) sums[ch] += img[p * c + ch];
      double total = 0.0;
      for (int64_t ch = 0; ch < c; ++ch) total += (s[ch] = static_cast<double>(sums[ch]));
      for (int64_t k = 0; k < o; ++k) {
        double acc = total * pz[k];
        for (int64_t ch = 0; ch < c; ++ch) acc += s[ch] * pw[ch * o + k];
        const double scale = pinv[k] / static_cast<double>(hw);
        po[i * o + k] = static_cast<float>(acc * scale + pb[k]);
      }
    }
    return out;
  }

  int64_t size() const { return static_cast<int64_t>(steps.size()); }
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(adadfq_native, m) {
  m.class_<IntProgram>("IntProgram")
      .def(torch::init<>())
      .def("add_float_conv", &IntProgram::add_float_conv)
      .def("add_int_conv", &IntProgram::add_int_conv)
      .def("add_head_codes", &IntProgram::add_head_codes)
      .def("finish", &IntProgram::finish)
      .def("run", &IntProgram::run)
      .def("size", &IntProgram::size);
}

}  // namespace adadfq::cpu
