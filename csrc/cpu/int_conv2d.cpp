// adadfq_native::int_conv2d on CPU: convolution of uint8 activation codes with int8 weight levels, with the whole
// float32 epilogue fused (BN-folded scale and bias, residual, ReLU, requantization). Math and schema:
// adadfq_fast/ops/int_conv2d.py and adadfq_fast/reference.py (int_conv2d_forward), whose float32 order this
// file reproduces bit for bit.
//
// Layout. The kernel works on NHWC, K = (kh, kw, c): a window is kh*kw contiguous runs of channels. The VNNI path
// reads a channels_last x in place when its channels are whole 4-byte steps (one group, no column dilation, no
// box sums, blocks of weights up to 96 KB): every tile then skips the padding of its windows (see run_vnni).
// Otherwise the input is copied into a zero-padded NHWC layout whose channels are padded to a multiple of 4 per
// group (one image at a time per thread, or the whole batch). The output is written NHWC (channels_last); an
// NCHW caller gets one conversion at the end.
//
// Integer sums. total[o,p] = acc[o,p] + z_w[o] * box[p] is an exact integer, however it is computed. When every
// q_w + z_w fits int8 (weights of up to 7 bits, and 8-bit channels whose levels allow it) the zero point is
// folded into the packed weights, so total = sum (q_w + z_w) * m_x and no box sum is needed; otherwise box sums
// come from a per-pixel channel-sum map S (one pass over the input) added over the window in the epilogue.
//
// AVX-512 VNNI path (when compiled with __AVX512VNNI__ and a group has >= 8 output channels): weights packed as
// [group][o-block][K/4][NB][16 lanes][4 bytes]; a micro-kernel keeps P output pixels x NB*16 output channels of
// int32 accumulators in zmm registers and, per 4 reduction steps, loads NB weight vectors and broadcasts 4 input
// bytes per pixel into vpdpbusd (u8 x s8 -> s32, no saturation: 4 * 255 * 128 < 2^31). Other cases (depthwise,
// tiny groups, builds without VNNI) use a portable loop with the same integer result and the same epilogue.
//
// Packing is cached per weight tensor (keyed on the TensorImpl, held weakly so its address cannot be reused
// while cached, plus the version counter, so an in-place change repacks), since the deploy model calls the op
// with the same weights every time.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <array>
#include <list>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include <c10/util/intrusive_ptr.h>

#include "cpu_common.h"
#include "int_kernels.h"

#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define ADADFQ_INT_VNNI 1
#endif
#if defined(__AVX2__)
#include <immintrin.h>
#define ADADFQ_INT_AVX2 1
#endif

namespace adadfq::cpu {
namespace {

struct Geometry {
  int64_t N, C, H, W, O, G, Cg, Og, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo;
  int64_t Cg4;  // channels per group padded to a multiple of 4
  int64_t Cp;   // channels of the padded buffer: G * Cg4
  int64_t Hp, Wp, T;
};

// ---------------------------------------------------------------------------------------------------------
// Packed weights (cached)
// ---------------------------------------------------------------------------------------------------------
// Micro-kernel families, fastest first: AVX-512 VNNI (vpdpbusd), AVX2 (vpmaddubsw with int16 sums, see
// avx2_tile), the portable loop. The best one compiled in is used; ADADFQ_INT_CONV_ISA=vnni|avx2|generic
// picks a slower one (read per call: the tests run every family this build has on the same inputs).
enum class Isa { Generic, Avx2, Vnni };

using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

struct Packed {
  Packed(const at::Tensor& w, const at::Tensor& z) : weight_ref(w.getIntrusivePtr()), zero_ref(z.getIntrusivePtr()) {}
  WeakImpl weight_ref, zero_ref;
  int64_t weight_version = -1, zero_version = -1;  // -1: inference tensors (validated by content instead)
  std::vector<int8_t> weight_copy;                  // for inference tensors only
  std::vector<int32_t> zero_copy;
  int64_t groups = 0;
  Isa isa = Isa::Generic;
  bool blocked = false;  // the [..][16 lanes][4 bytes] layout of the VNNI and AVX2 micro-kernels

  bool folded = false;
  std::vector<int32_t> zeff;  // per output channel: z_w, or 0 when folded into the weights
  int64_t max_abs_w = 0, max_abs_z = 0;
  // Blocked layout: [G][nob][K4][NB][16][4] int8 (zero-padded lanes and reduction steps); NB 16-channel vectors
  // per block (up to 4 for VNNI, 1 for AVX2, whose 16 ymm registers hold fewer accumulators).
  int NB = 1;
  int64_t nob = 0, K4 = 0;
  at::Tensor blocked_w;
  // Portable layout: [G][T * Cg][Og] int32.
  std::vector<int32_t> generic_w;
};

int64_t version_of(const at::Tensor& t) {
  return t.is_inference() ? -1 : static_cast<int64_t>(t.unsafeGetTensorImpl()->version_counter().current_version());
}

bool same_tensor(const WeakImpl& ref, const at::Tensor& t) {
  return !ref.expired() && ref._unsafe_get_target() == t.unsafeGetTensorImpl();
}

Isa best_isa() {
#if defined(ADADFQ_INT_VNNI)
  return Isa::Vnni;
#elif defined(ADADFQ_INT_AVX2)
  return Isa::Avx2;
#else
  return Isa::Generic;
#endif
}

Isa selected_isa() {
  const Isa best = best_isa();
  const char* want = std::getenv("ADADFQ_INT_CONV_ISA");
  if (want == nullptr || *want == 0) return best;
  Isa isa = Isa::Generic;
  if (std::strcmp(want, "vnni") == 0) isa = Isa::Vnni;
  else if (std::strcmp(want, "avx2") == 0) isa = Isa::Avx2;
  else TORCH_CHECK(std::strcmp(want, "generic") == 0, "ADADFQ_INT_CONV_ISA: expected vnni, avx2 or generic, got ", want);
  TORCH_CHECK(static_cast<int>(isa) <= static_cast<int>(best), "ADADFQ_INT_CONV_ISA=", want,
              ": this build of the C++ kernels does not have it (compiled for a CPU without it)");
  return isa;
}

// The blocked kernels take groups of at least 8 output channels; depthwise and tiny groups use the portable loop.
bool use_blocked(const Geometry& g, Isa isa) { return isa != Isa::Generic && g.Og >= 8; }

// Visiting order of (output-channel block, output row) pairs. Row-major (an input row stays hot across the
// blocks; every block's weights are re-read from L2/L3 per row) unless the whole zero-padded input batch fits the
// L2 cache: then weight-major (a block's weights are read once per thread, the input is re-read from L2).
// Measured on this project's Zen 4 CPU with ResNet-18's 3x3 layers (1 and 2 threads): weight-major is level at
// batch 1 and 4 on one thread, up to 1.09x faster at batch 1 on two with weights over 1 MB (each thread then reads
// its half of the weights once), and 0.75-0.98x of row-major at batch >= 16, where its batch copy comes back from
// L3. (Before, weight-major was chosen by weight size alone, > 256 KB, which cost up to 25% at batch >= 16.)
// ADADFQ_INT_CONV_ORDER=row|weight overrides the choice (tests use it to cover both orders with small inputs).
bool use_weight_major(const Geometry& g) {
  if (const char* order = std::getenv("ADADFQ_INT_CONV_ORDER")) {
    if (std::strcmp(order, "row") == 0) return false;
    if (std::strcmp(order, "weight") == 0) return true;
  }
  return g.N * g.Hp * g.Wp * g.Cp <= (512 << 10);
}

std::shared_ptr<Packed> pack(const at::Tensor& weight, const at::Tensor& weight_zero, const Geometry& g, Isa isa) {
  auto p = std::make_shared<Packed>(weight, weight_zero);
  p->isa = isa;
  p->weight_version = version_of(weight);
  p->zero_version = version_of(weight_zero);
  p->groups = g.G;
  const at::Tensor w = weight.contiguous(), z = weight_zero.contiguous();
  const int8_t* wp = w.const_data_ptr<int8_t>();
  const int32_t* zp = z.const_data_ptr<int32_t>();
  if (p->weight_version < 0 || p->zero_version < 0) {
    p->weight_copy.assign(wp, wp + w.numel());
    p->zero_copy.assign(zp, zp + z.numel());
  }
  const int64_t O = g.O, Kc = g.Cg * g.kh * g.kw;  // weight [O][Cg][kh][kw]
  // Fold z_w into the weights when every q_w + z_w fits int8: then no box sums are needed.
  bool fold = true;
  for (int64_t o = 0; o < O && fold; ++o) {
    for (int64_t k = 0; k < Kc; ++k) {
      const int64_t v = static_cast<int64_t>(wp[o * Kc + k]) + zp[o];
      if (v < -128 || v > 127) {
        fold = false;
        break;
      }
    }
  }
  p->folded = fold;
  p->zeff.assign(O, 0);
  for (int64_t o = 0; o < O; ++o) {
    if (!fold) p->zeff[o] = zp[o];
    p->max_abs_z = std::max<int64_t>(p->max_abs_z, std::abs(static_cast<int64_t>(p->zeff[o])));
  }
  auto weff = [&](int64_t o, int64_t c, int64_t i, int64_t j) -> int32_t {
    const int32_t v = wp[((o * g.Cg + c) * g.kh + i) * g.kw + j];
    return fold ? v + zp[o] : v;
  };
  for (int64_t o = 0; o < O; ++o)
    for (int64_t k = 0; k < Kc; ++k)
      p->max_abs_w = std::max<int64_t>(p->max_abs_w, std::abs(static_cast<int64_t>(wp[o * Kc + k]) + (fold ? zp[o] : 0)));

  p->blocked = use_blocked(g, isa);
  if (p->blocked) {
    const int64_t nvec = (g.Og + 15) / 16;
    p->NB = isa == Isa::Vnni ? static_cast<int>(std::min<int64_t>(4, nvec)) : 1;
    p->nob = (nvec + p->NB - 1) / p->NB;
    p->K4 = g.T * g.Cg4 / 4;
    const int64_t block = p->K4 * p->NB * 64;
    p->blocked_w = at::zeros({g.G * p->nob * block}, at::kChar);
    int8_t* dst = p->blocked_w.data_ptr<int8_t>();
    for (int64_t gr = 0; gr < g.G; ++gr)
      for (int64_t ob = 0; ob < p->nob; ++ob) {
        int8_t* blk = dst + (gr * p->nob + ob) * block;
        for (int64_t k4 = 0; k4 < p->K4; ++k4)
          for (int nb = 0; nb < p->NB; ++nb)
            for (int lane = 0; lane < 16; ++lane) {
              const int64_t og = (ob * p->NB + nb) * 16 + lane;
              if (og >= g.Og) continue;
              for (int b = 0; b < 4; ++b) {
                const int64_t kidx = k4 * 4 + b, tap = kidx / g.Cg4, c = kidx % g.Cg4;
                if (c >= g.Cg) continue;
                blk[((k4 * p->NB + nb) * 16 + lane) * 4 + b] =
                    static_cast<int8_t>(weff(gr * g.Og + og, c, tap / g.kw, tap % g.kw));
              }
            }
      }
  } else {
    p->generic_w.assign(g.G * g.T * g.Cg * g.Og, 0);
    for (int64_t gr = 0; gr < g.G; ++gr)
      for (int64_t t = 0; t < g.T; ++t)
        for (int64_t c = 0; c < g.Cg; ++c)
          for (int64_t og = 0; og < g.Og; ++og)
            p->generic_w[((gr * g.T + t) * g.Cg + c) * g.Og + og] = weff(gr * g.Og + og, c, t / g.kw, t % g.kw);
  }
  return p;
}

bool cache_hit(const Packed& p, const at::Tensor& weight, const at::Tensor& weight_zero, int64_t groups, Isa isa) {
  if (p.groups != groups || p.isa != isa || !same_tensor(p.weight_ref, weight) || !same_tensor(p.zero_ref, weight_zero)) return false;
  const int64_t wv = version_of(weight), zv = version_of(weight_zero);
  if (wv != p.weight_version || zv != p.zero_version) return false;
  if (wv >= 0 && zv >= 0) return true;
  // Inference tensors carry no version counter (and can change in place inside inference mode): compare contents.
  const at::Tensor w = weight.contiguous(), z = weight_zero.contiguous();
  return static_cast<int64_t>(p.weight_copy.size()) == w.numel() &&
         std::equal(p.weight_copy.begin(), p.weight_copy.end(), w.const_data_ptr<int8_t>()) &&
         static_cast<int64_t>(p.zero_copy.size()) == z.numel() &&
         std::equal(p.zero_copy.begin(), p.zero_copy.end(), z.const_data_ptr<int32_t>());
}

// A model's layers each hit their own entry; the bound only keeps a process that creates many weights from
// growing without limit (entries hold no tensor data of the caller, only the packing).
constexpr size_t kCacheEntries = 256;

std::shared_ptr<const Packed> packed_weights(const at::Tensor& weight, const at::Tensor& weight_zero,
                                             const Geometry& g, Isa isa) {
  static std::mutex mutex;
  static std::list<std::shared_ptr<Packed>> cache;  // most recently used first
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (auto it = cache.begin(); it != cache.end(); ++it) {
      if (cache_hit(**it, weight, weight_zero, g.G, isa)) {
        cache.splice(cache.begin(), cache, it);
        return cache.front();
      }
    }
  }
  auto p = pack(weight, weight_zero, g, isa);  // outside the lock: packing large weights takes a while
  std::lock_guard<std::mutex> lock(mutex);
  cache.remove_if([](const std::shared_ptr<Packed>& e) { return e->weight_ref.expired() || e->zero_ref.expired(); });
  cache.push_front(p);
  if (cache.size() > kCacheEntries) cache.pop_back();
  return p;
}

// ---------------------------------------------------------------------------------------------------------
// Epilogue (float32, in the reference's order)
// ---------------------------------------------------------------------------------------------------------
struct Epilogue {
  const float* mult;  // [O]
  const float* bias;  // [O]
  const int32_t* zeff;
  bool has_box;
  int res_kind;  // 0 none, 1 float32, 2 uint8 codes
  const float* res_f;
  const uint8_t* res_u8;
  float res_scale;
  bool relu;
  int out_bits;
  float out_scale, out_zero, qmin, qmax;
  int32_t out_zero_int;
  float* out_f;
  uint8_t* out_u8;
};

// One output element: e = NHWC element index, o = channel.
inline void epilogue_scalar(const Epilogue& ep, int32_t total, int64_t e, int64_t o) {
  float y = mul_rn(static_cast<float>(total), ep.mult[o]);
  y = add_rn(y, ep.bias[o]);
  if (ep.res_kind == 1) {
    y = add_rn(y, ep.res_f[e]);
  } else if (ep.res_kind == 2) {
    y = add_rn(y, div_rn(static_cast<float>(ep.res_u8[e]), ep.res_scale));
  }
  if (ep.relu) y = y < 0.f ? 0.f : y;  // torch.relu: keeps -0.0 and NaN
  if (ep.out_bits == 0) {
    ep.out_f[e] = y;
    return;
  }
  float v = sub_rn(mul_rn(ep.out_scale, y), ep.out_zero);
  v = round_even(clamp_nan(v, ep.qmin, ep.qmax));
  ep.out_u8[e] = static_cast<uint8_t>(static_cast<int32_t>(add_rn(v, ep.out_zero)));
}

// ---------------------------------------------------------------------------------------------------------
// Input preparation
// ---------------------------------------------------------------------------------------------------------
// x's codes and strides.
struct InputView {
  const uint8_t* data;
  int64_t sn, sc, sh, sw;
  explicit InputView(const at::Tensor& x)
      : data(x.const_data_ptr<uint8_t>()), sn(x.stride(0)), sc(x.stride(1)), sh(x.stride(2)), sw(x.stride(3)) {}
};

// Row hp of image n of the zero-padded NHWC layout [Hp][Wp][G * Cg4] (padding is code 0, which is float 0:
// natural zero padding) -> dst (Wp * Cp bytes).
void pad_row(const InputView& x, const Geometry& g, int64_t n, int64_t hp, uint8_t* dst) {
  const int64_t row_bytes = g.Wp * g.Cp, ih = hp - g.ph;
  if (ih < 0 || ih >= g.H) {
    std::memset(dst, 0, row_bytes);
    return;
  }
  const uint8_t* s = x.data + n * x.sn + ih * x.sh;
  if (x.sc == 1 && x.sw == g.C && g.Cp == g.C) {  // channels_last, aligned groups: the row is one run of bytes
    std::memset(dst, 0, g.pw * g.Cp);
    std::memcpy(dst + g.pw * g.Cp, s, g.W * g.C);
    std::memset(dst + (g.pw + g.W) * g.Cp, 0, g.pw * g.Cp);
    return;
  }
  std::memset(dst, 0, row_bytes);
  if (x.sc <= x.sw) {  // channels innermost in memory (channels_last): copy runs of channels
    for (int64_t iw = 0; iw < g.W; ++iw) {
      uint8_t* d = dst + (iw + g.pw) * g.Cp;
      for (int64_t gr = 0; gr < g.G; ++gr)
        for (int64_t c = 0; c < g.Cg; ++c) d[gr * g.Cg4 + c] = s[iw * x.sw + (gr * g.Cg + c) * x.sc];
    }
  } else {  // width innermost (NCHW): read rows of one channel, scatter into the L1-resident output row
    for (int64_t ch = 0; ch < g.C; ++ch) {
      const int64_t dc = (ch / g.Cg) * g.Cg4 + ch % g.Cg;
      const uint8_t* sr = s + ch * x.sc;
      uint8_t* d = dst + g.pw * g.Cp + dc;
      for (int64_t iw = 0; iw < g.W; ++iw) d[iw * g.Cp] = sr[iw * x.sw];
    }
  }
}

// The zero-padded NHWC buffer of the whole batch, [N][Hp][Wp][G * Cg4].
void pad_input(const at::Tensor& x, const Geometry& g, uint8_t* xp) {
  const InputView view(x);
  at::parallel_for(0, g.N * g.Hp, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) pad_row(view, g, r / g.Hp, r % g.Hp, xp + r * g.Wp * g.Cp);
  });
}

#if defined(ADADFQ_INT_VNNI) || defined(ADADFQ_INT_AVX2)
#define ADADFQ_INT_BLOCKED 1
// ---------------------------------------------------------------------------------------------------------
// Blocked micro-kernels (VNNI, AVX2): P output pixels (of one row, or of one column) x one block of 16-channel
// vectors of one group.
// ---------------------------------------------------------------------------------------------------------
struct Tile {
  const uint8_t* x;        // padded input at the window origin of the first pixel, group's channels
  int64_t pix_stride;      // bytes between the windows of consecutive pixels (stride_w * Cp along a row)
  int64_t out_stride;      // elements between the outputs of consecutive pixels (O along a row)
  const int64_t* tap_off;  // [T] byte offsets of the contiguous runs of the window from its origin
  int64_t T, C4;           // runs, 4-channel steps per run
  int64_t skip_front, skip_back;  // 4-channel steps left out at the start / end of every run (padding columns)
  const int8_t* w;         // packed weights of the block
  int64_t e0;              // NHWC element index of (pixel 0, first channel of the block)
  int64_t o0;              // first output channel of the block
  int valid;               // valid channels in the block (<= NB * 16)
  const int32_t* box;      // [P] box sums (when has_box)
  int64_t flush;           // AVX2: 4-channel steps whose int16 sums provably fit before widening to int32
};

using TileFn = void (*)(const Tile&, const Epilogue&);
#endif  // ADADFQ_INT_VNNI || ADADFQ_INT_AVX2

#if defined(ADADFQ_INT_VNNI)
// The epilogue's per-call scalars as broadcast vectors, built once per tile. Building them from a local copy of
// the Epilogue matters: the uint8 output stores may alias anything, so reading ep's fields after a store would
// reload them from memory (the compiler did, once per output vector, before this existed).
struct EpilogueConsts {
  explicit EpilogueConsts(const Epilogue& ep)
      : res_scale(_mm512_set1_ps(ep.res_scale)), out_scale(_mm512_set1_ps(ep.out_scale)),
        out_zero(_mm512_set1_ps(ep.out_zero)), qmin(_mm512_set1_ps(ep.qmin)), qmax(_mm512_set1_ps(ep.qmax)),
        out_zero_int(_mm512_set1_epi32(ep.out_zero_int)) {}
  __m512 res_scale, out_scale, out_zero, qmin, qmax;
  __m512i out_zero_int;
};

// 16 channels with the given per-channel mult and bias vectors, element index e, lanes in `mask`.
inline void epilogue_vec(const Epilogue& ep, const EpilogueConsts& k, __m512i total, __m512 mult, __m512 bias,
                         int64_t e, __mmask16 mask) {
  __m512 y = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(total), mult), bias);
  if (ep.res_kind == 1) {
    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, ep.res_f + e));
  } else if (ep.res_kind == 2) {
    const __m512 r = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, ep.res_u8 + e)));
    y = _mm512_add_ps(y, _mm512_div_ps(r, k.res_scale));
  }
  if (ep.out_bits == 0) {
    // max(0, y) returns its second operand for NaN and for +-0 pairs: NaN and -0.0 pass, as in torch.relu.
    if (ep.relu) y = _mm512_max_ps(_mm512_setzero_ps(), y);
    _mm512_mask_storeu_ps(ep.out_f + e, mask, y);
    return;
  }
  // Requant. ReLU needs no instruction here: out_zero >= 2^(k-1) (checked), so for y < 0, out_scale*y - out_zero
  // <= -out_zero <= qmin, which the clamp maps to qmin exactly as it maps relu(y) = 0. The clamped value is an
  // in-range float, so rounding it with the conversion (round half to even, the default mode) and adding the
  // zero point as an integer gives the reference's round(.) + zero point.
  __m512 v = _mm512_sub_ps(_mm512_mul_ps(k.out_scale, y), k.out_zero);
  v = _mm512_min_ps(_mm512_max_ps(v, k.qmin), k.qmax);
  __m128i codes = _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(v), k.out_zero_int));  // in [0, 255]
  // Keep the narrowing in a register: fused into a store (vpmovdb to memory) it is ~2x slower on Zen 4.
  asm("" : "+v"(codes));
  _mm_mask_storeu_epi8(ep.out_u8 + e, mask, codes);
}

// The P pixels' windows lie pix_stride bytes apart, their outputs out_stride elements.
template <int NB, int P>
void vnni_tile(const Tile& t, const Epilogue& ep) {
  __m512i acc[P][NB];
#pragma GCC unroll 32
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int nb = 0; nb < NB; ++nb) acc[p][nb] = _mm512_setzero_si512();
  const int8_t* w = t.w;
  const int64_t ps = t.pix_stride;
  const int64_t c4_end = t.C4 - t.skip_back;
  for (int64_t tap = 0; tap < t.T; ++tap) {
    const uint8_t* xt = t.x + t.tap_off[tap] + t.skip_front * 4;
    w += t.skip_front * NB * 64;
#pragma GCC unroll 2
    for (int64_t c4 = t.skip_front; c4 < c4_end; ++c4, w += NB * 64, xt += 4) {
      __m512i wv[NB];
#pragma GCC unroll 4
      for (int nb = 0; nb < NB; ++nb) wv[nb] = _mm512_load_si512(w + nb * 64);
#pragma GCC unroll 32
      for (int p = 0; p < P; ++p) {
        int32_t four;
        std::memcpy(&four, xt + p * ps, 4);
        const __m512i xv = _mm512_set1_epi32(four);
#pragma GCC unroll 4
        for (int nb = 0; nb < NB; ++nb) acc[p][nb] = _mm512_dpbusd_epi32(acc[p][nb], xv, wv[nb]);
      }
    }
    w += t.skip_back * NB * 64;
  }
  const Epilogue e = ep;  // a local copy, so its fields stay in registers across the output stores
  const EpilogueConsts k(e);
#pragma GCC unroll 4
  for (int nb = 0; nb < NB; ++nb) {
    const int lanes = std::min(16, t.valid - nb * 16);
    if (lanes <= 0) break;
    const __mmask16 mask = static_cast<__mmask16>(lanes == 16 ? 0xFFFFu : ((1u << lanes) - 1));
    const int64_t o = t.o0 + nb * 16;
    const __m512 mult = _mm512_maskz_loadu_ps(mask, e.mult + o), bias = _mm512_maskz_loadu_ps(mask, e.bias + o);
    const __m512i zeff = e.has_box ? _mm512_maskz_loadu_epi32(mask, e.zeff + o) : _mm512_setzero_si512();
#pragma GCC unroll 32
    for (int p = 0; p < P; ++p) {
      __m512i total = acc[p][nb];
      if (e.has_box) total = _mm512_add_epi32(total, _mm512_mullo_epi32(zeff, _mm512_set1_epi32(t.box[p])));
      epilogue_vec(e, k, total, mult, bias, t.e0 + p * t.out_stride + nb * 16, mask);
    }
  }
}

// Pixels per tile for NB output vectors: P * NB accumulators stay within the 32 zmm registers with room for the
// NB weight vectors and the broadcast. One vector (16 channels) takes 8 pixels, not 16: each pixel's window
// address needs a register, and 16 of them spilled (measured on a 16-channel 32x32 layer at batch 256: 4.35 ms
// with 8 pixels, 4.9 with 16; 10 and 12 in between).
constexpr int kMaxP[5] = {0, 8, 12, 8, 6};

template <int NB, int... Ps>
constexpr std::array<TileFn, sizeof...(Ps)> tile_table(std::integer_sequence<int, Ps...>) {
  return {&vnni_tile<NB, Ps + 1>...};
}

const TileFn* vnni_tile_fns(int nb) {
  static const auto t1 = tile_table<1>(std::make_integer_sequence<int, kMaxP[1]>{});
  static const auto t2 = tile_table<2>(std::make_integer_sequence<int, kMaxP[2]>{});
  static const auto t3 = tile_table<3>(std::make_integer_sequence<int, kMaxP[3]>{});
  static const auto t4 = tile_table<4>(std::make_integer_sequence<int, kMaxP[4]>{});
  switch (nb) {
    case 1: return t1.data();
    case 2: return t2.data();
    case 3: return t3.data();
    default: return t4.data();
  }
}

#endif  // ADADFQ_INT_VNNI

#if defined(ADADFQ_INT_AVX2)
// ---------------------------------------------------------------------------------------------------------
// AVX2 micro-kernel (CPUs without AVX-512 VNNI, e.g. Zen 3): vpmaddubsw multiplies 32 u8 x s8 pairs and adds
// neighbours into 16 int16 lanes. It saturates, so it is used only where the sums provably fit int16:
//   * a lane of one step is x_a*w_a + x_b*w_b with |.| <= 2 * max_x * max_w =: B. If B <= 32767 ("direct"),
//     the step's int16 lanes are exact, and `flush` = floor(32767 / B) steps can be added in int16 (vpaddw)
//     before they are widened to int32 (vpmaddwd with ones, which also adds the lane pair: the VNNI sum).
//     At W4A4 (codes <= 15, |w| <= 15) B = 450 and flush = 72 steps: one widening per 288 channels of a window,
//     so a step costs one multiply and one add per 32 MACs, where the usual maddubsw/maddwd/add is three.
//   * else ("split", e.g. 8-bit codes with 8-bit weights): x = 16*hi + lo with nibbles, each product pair at
//     most 2 * 15 * 128, two int16 sums widened as 16*hi + lo. Twice the multiplies, still exact.
// max_x is the largest code of x (scanned per call), max_w the largest |weight| of the block's packing.
// A 16-channel block is two ymm vectors; P pixels take 2P (direct) or 4P (split) accumulators of the 16 registers.
// ---------------------------------------------------------------------------------------------------------
struct EpilogueConsts8 {
  explicit EpilogueConsts8(const Epilogue& ep)
      : res_scale(_mm256_set1_ps(ep.res_scale)), out_scale(_mm256_set1_ps(ep.out_scale)),
        out_zero(_mm256_set1_ps(ep.out_zero)), qmin(_mm256_set1_ps(ep.qmin)), qmax(_mm256_set1_ps(ep.qmax)),
        out_zero_int(_mm256_set1_epi32(ep.out_zero_int)) {}
  __m256 res_scale, out_scale, out_zero, qmin, qmax;
  __m256i out_zero_int;
};

// 8 channels (all valid) at element index e: the same float32 steps as epilogue_scalar (and epilogue_vec). Tiles
// whose block is full take epilogue_block16 instead, the same steps staged across the tile.
inline void epilogue_vec8(const Epilogue& ep, const EpilogueConsts8& k, __m256i total, __m256 mult, __m256 bias,
                          int64_t e) {
  __m256 y = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(total), mult), bias);
  if (ep.res_kind == 1) {
    y = _mm256_add_ps(y, _mm256_loadu_ps(ep.res_f + e));
  } else if (ep.res_kind == 2) {
    const __m128i r8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(ep.res_u8 + e));
    y = _mm256_add_ps(y, _mm256_div_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(r8)), k.res_scale));
  }
  if (ep.out_bits == 0) {
    if (ep.relu) y = _mm256_max_ps(_mm256_setzero_ps(), y);  // NaN and -0.0 pass, as in torch.relu
    _mm256_storeu_ps(ep.out_f + e, y);
    return;
  }
  // As in epilogue_vec: ReLU is implied by the clamp (out_zero >= 2^(k-1)); max(v, qmin) maps NaN to qmin.
  __m256 v = _mm256_sub_ps(_mm256_mul_ps(k.out_scale, y), k.out_zero);
  v = _mm256_min_ps(_mm256_max_ps(v, k.qmin), k.qmax);
  const __m256i codes = _mm256_add_epi32(_mm256_cvtps_epi32(v), k.out_zero_int);  // in [0, 255]
  const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(codes), _mm256_extracti128_si256(codes, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(ep.out_u8 + e), _mm_packus_epi16(w16, w16));
}

// The P pixels of a full 16-channel block (total(p, v): the int32 totals of pixel p, channels 8v..8v+7), for
// residual kind RES and codes (CODES) or float32 out. Specialized, so that each tile takes one switch
// (avx2_tile) instead of a branch per pixel and vector on the residual and output kinds.
template <int RES, bool CODES, int P, typename Total>
__attribute__((always_inline)) inline void epilogue_block16(const Tile& t, const Epilogue& e, const EpilogueConsts8& k,
                                                            const Total& total) {
  // Stage by stage over all 2P vectors, not vector by vector: each vector's steps form one dependent chain of
  // ~15 float ops (~45 cycles of latency), and Zen 3's FP scheduler holds the waiting ops of only about two
  // chains, so chain after chain ran at ~27 cycles per pixel; in stages, every op has 2P independent
  // neighbours. (Same ops, same order per element: same bits.)
  const __m256 mult[2] = {_mm256_loadu_ps(e.mult + t.o0), _mm256_loadu_ps(e.mult + t.o0 + 8)};
  const __m256 bias[2] = {_mm256_loadu_ps(e.bias + t.o0), _mm256_loadu_ps(e.bias + t.o0 + 8)};
  __m256 y[P][2];
#pragma GCC unroll 16
  for (int i = 0; i < 2 * P; ++i) y[i / 2][i % 2] = _mm256_cvtepi32_ps(total(i / 2, i % 2));
#pragma GCC unroll 16
  for (int i = 0; i < 2 * P; ++i) y[i / 2][i % 2] = _mm256_mul_ps(y[i / 2][i % 2], mult[i % 2]);
#pragma GCC unroll 16
  for (int i = 0; i < 2 * P; ++i) y[i / 2][i % 2] = _mm256_add_ps(y[i / 2][i % 2], bias[i % 2]);
  if constexpr (RES == 1) {
#pragma GCC unroll 16
    for (int i = 0; i < 2 * P; ++i)
      y[i / 2][i % 2] =
          _mm256_add_ps(y[i / 2][i % 2], _mm256_loadu_ps(e.res_f + t.e0 + (i / 2) * t.out_stride + 8 * (i % 2)));
  } else if constexpr (RES == 2) {
    __m256 r[P][2];
#pragma GCC unroll 16
    for (int i = 0; i < 2 * P; ++i) {
      const uint8_t* codes = e.res_u8 + t.e0 + (i / 2) * t.out_stride + 8 * (i % 2);
      const __m128i r8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes));
      r[i / 2][i % 2] = _mm256_div_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(r8)), k.res_scale);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 2 * P; ++i) y[i / 2][i % 2] = _mm256_add_ps(y[i / 2][i % 2], r[i / 2][i % 2]);
  }
  if constexpr (CODES) {
    // As in epilogue_vec8: ReLU is implied by the clamp (out_zero >= 2^(k-1)); max(v, qmin) maps NaN to qmin.
#pragma GCC unroll 16
    for (int i = 0; i < 2 * P; ++i) y[i / 2][i % 2] = _mm256_mul_ps(k.out_scale, y[i / 2][i % 2]);
#pragma GCC unroll 16
    for (int i = 0; i < 2 * P; ++i) y[i / 2][i % 2] = _mm256_sub_ps(y[i / 2][i % 2], k.out_zero);
#pragma GCC unroll 16
    for (int i = 0; i < 2 * P; ++i)
      y[i / 2][i % 2] = _mm256_min_ps(_mm256_max_ps(y[i / 2][i % 2], k.qmin), k.qmax);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 3, 6, 7);
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      const __m256i c0 = _mm256_add_epi32(_mm256_cvtps_epi32(y[p][0]), k.out_zero_int);
      const __m256i c1 = _mm256_add_epi32(_mm256_cvtps_epi32(y[p][1]), k.out_zero_int);
      // packs: lane 0 = c0[0..3] c1[0..3], lane 1 = c0[4..7] c1[4..7] (int16); packus: the same order in bytes,
      // in the low 8 bytes of each lane; the permutation gathers the 4-byte groups c0[0..3] c0[4..7] c1[0..3]
      // c1[4..7] (one 16-byte store instead of two 8-byte ones, four narrowing steps instead of six).
      const __m256i b = _mm256_permutevar8x32_epi32(
          _mm256_packus_epi16(_mm256_packs_epi32(c0, c1), _mm256_setzero_si256()), order);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(e.out_u8 + t.e0 + p * t.out_stride), _mm256_castsi256_si128(b));
    }
  } else {
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      __m256 y0 = y[p][0], y1 = y[p][1];
      if (e.relu) {  // NaN and -0.0 pass, as in torch.relu
        y0 = _mm256_max_ps(_mm256_setzero_ps(), y0);
        y1 = _mm256_max_ps(_mm256_setzero_ps(), y1);
      }
      _mm256_storeu_ps(e.out_f + t.e0 + p * t.out_stride, y0);
      _mm256_storeu_ps(e.out_f + t.e0 + p * t.out_stride + 8, y1);
    }
  }
}

// ONE: every step of the tile fits one int16 interval (t.flush), the common case of 4-bit layers; its loop has
// no interval bookkeeping and no int32 buffer, which leaves the int16 sums in registers from the first step to the
// epilogue (with both paths in one function, GCC moved them through the stack at the start and the end of every
// tile).
template <int P, bool SPLIT, bool ONE>
void avx2_tile(const Tile& t, const Epilogue& ep) {
  constexpr int H = SPLIT ? 2 : 1;  // int16 sums per (pixel, ymm): the code itself, or its high and low nibble
  __m256i a16[P][2][H];
  // int32 sums of the earlier flush intervals, in memory (the 16 ymm registers hold the int16 sums); most tiles
  // of 4-bit layers never use them (all their steps fit one interval).
  alignas(32) int32_t a32[P][16];
  bool widened = false;
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < 2; ++v)
      for (int h = 0; h < H; ++h) a16[p][v][h] = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1), sixteen = _mm256_set1_epi16(16), nibble = _mm256_set1_epi8(0x0F);
  // int16 sums -> int32 (adding each lane pair: the VNNI sum).
  auto int32_sum = [&](int p, int v) __attribute__((always_inline)) {
    return SPLIT ? _mm256_add_epi32(_mm256_madd_epi16(a16[p][v][0], ones), _mm256_madd_epi16(a16[p][v][H - 1], sixteen))
                 : _mm256_madd_epi16(a16[p][v][0], ones);
  };
  auto widen = [&]() {  // into a32; the int16 sums restart at 0
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p)
      for (int v = 0; v < 2; ++v) {
        __m256i* dst = reinterpret_cast<__m256i*>(a32[p] + 8 * v);
        const __m256i w = int32_sum(p, v);
        _mm256_store_si256(dst, widened ? _mm256_add_epi32(_mm256_load_si256(dst), w) : w);
        for (int h = 0; h < H; ++h) a16[p][v][h] = _mm256_setzero_si256();
      }
    widened = true;
  };
  const int8_t* w = t.w;
  const int64_t ps = t.pix_stride, c4_end = t.C4 - t.skip_back;
  // One step: 4 channels of every pixel's window times the block's 16 channels.
  auto step = [&](const uint8_t* xt) __attribute__((always_inline)) {
    __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(w));
    __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + 32));
    // Keep both weight vectors in registers: left alone, GCC folds them into every vpmaddubsw as a memory
    // operand for P < 6, i.e. 2P + P loads per step, which bound the loop on Zen 3 (two 256-bit loads per
    // cycle) instead of the multiplies.
    asm("" : "+x"(w0), "+x"(w1));
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      int32_t four;
      std::memcpy(&four, xt + p * ps, 4);
      const __m256i xv = _mm256_set1_epi32(four);
      if constexpr (SPLIT) {
        const __m256i lo = _mm256_and_si256(xv, nibble), hi = _mm256_and_si256(_mm256_srli_epi16(xv, 4), nibble);
        a16[p][0][0] = _mm256_add_epi16(a16[p][0][0], _mm256_maddubs_epi16(lo, w0));
        a16[p][1][0] = _mm256_add_epi16(a16[p][1][0], _mm256_maddubs_epi16(lo, w1));
        a16[p][0][H - 1] = _mm256_add_epi16(a16[p][0][H - 1], _mm256_maddubs_epi16(hi, w0));
        a16[p][1][H - 1] = _mm256_add_epi16(a16[p][1][H - 1], _mm256_maddubs_epi16(hi, w1));
      } else {
        a16[p][0][0] = _mm256_add_epi16(a16[p][0][0], _mm256_maddubs_epi16(xv, w0));
        a16[p][1][0] = _mm256_add_epi16(a16[p][1][0], _mm256_maddubs_epi16(xv, w1));
      }
    }
    w += 64;
  };
  if constexpr (ONE) {
    for (int64_t tap = 0; tap < t.T; ++tap) {
      const uint8_t* xt = t.x + t.tap_off[tap];
      w += t.skip_front * 64;
      for (int64_t c4 = t.skip_front; c4 < c4_end; ++c4) step(xt + c4 * 4);
      w += t.skip_back * 64;
    }
  } else {
    int64_t left = t.flush;  // steps that may still be added in int16
    for (int64_t tap = 0; tap < t.T; ++tap) {
      const uint8_t* xt = t.x + t.tap_off[tap];
      w += t.skip_front * 64;
      int64_t c4 = t.skip_front;
      while (c4 < c4_end) {
        if (left == 0) {
          widen();
          left = t.flush;
        }
        const int64_t n = std::min(c4_end - c4, left);
        for (int64_t i = 0; i < n; ++i, ++c4) step(xt + c4 * 4);
        left -= n;
      }
      w += t.skip_back * 64;
    }
  }
  // The int32 totals of (pixel p, vector v): the last interval's sums straight from the registers. (Inlined by
  // force: called out of line, it takes the int16 sums by reference, which moves them to memory for the whole loop.)
  auto total = [&](int p, int v) __attribute__((always_inline)) {
    __m256i s = int32_sum(p, v);
    if (!ONE && widened) s = _mm256_add_epi32(s, _mm256_load_si256(reinterpret_cast<const __m256i*>(a32[p] + 8 * v)));
    if (ep.has_box) {
      const __m256i zeff = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ep.zeff + t.o0 + 8 * v));
      s = _mm256_add_epi32(s, _mm256_mullo_epi32(zeff, _mm256_set1_epi32(t.box[p])));
    }
    return s;
  };
  const Epilogue e = ep;  // a local copy, so its fields stay in registers across the output stores
  const EpilogueConsts8 k(e);
  if (t.valid == 16) {  // the common case: both vectors full
    switch (e.res_kind * 2 + (e.out_bits != 0)) {
      case 0: return epilogue_block16<0, false, P>(t, e, k, total);
      case 1: return epilogue_block16<0, true, P>(t, e, k, total);
      case 2: return epilogue_block16<1, false, P>(t, e, k, total);
      case 3: return epilogue_block16<1, true, P>(t, e, k, total);
      case 4: return epilogue_block16<2, false, P>(t, e, k, total);
      default: return epilogue_block16<2, true, P>(t, e, k, total);
    }
  }
  for (int v = 0; v < 2; ++v) {
    const int lanes = std::min(8, t.valid - v * 8);
    if (lanes <= 0) break;
    const int64_t o = t.o0 + v * 8;
    if (lanes < 8) {  // a partial vector (channel counts that are not a multiple of 8): lane by lane
      for (int p = 0; p < P; ++p) {
        alignas(32) int32_t sums[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(sums), int32_sum(p, v));
        for (int l = 0; l < lanes; ++l) {
          const int32_t tot =
              sums[l] + (!ONE && widened ? a32[p][8 * v + l] : 0) + (e.has_box ? e.zeff[o + l] * t.box[p] : 0);
          epilogue_scalar(e, tot, t.e0 + p * t.out_stride + v * 8 + l, o + l);
        }
      }
      continue;
    }
    const __m256 mult = _mm256_loadu_ps(e.mult + o), bias = _mm256_loadu_ps(e.bias + o);
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) epilogue_vec8(e, k, total(p, v), mult, bias, t.e0 + p * t.out_stride + v * 8);
  }
}

// Pixels per tile: direct tiles hold 2P int16 sums, 2 weight vectors and a broadcast (P = 6: 15 registers);
// split tiles 4P sums plus the nibble temporaries.
constexpr int kMaxPAvx2 = 6, kMaxPAvx2Split = 3;

template <bool SPLIT, bool ONE, int... Ps>
constexpr std::array<TileFn, sizeof...(Ps)> avx2_tile_table(std::integer_sequence<int, Ps...>) {
  return {&avx2_tile<Ps + 1, SPLIT, ONE>...};
}

const TileFn* avx2_tile_fns(bool split, bool one_interval) {
  static const auto direct = avx2_tile_table<false, false>(std::make_integer_sequence<int, kMaxPAvx2>{});
  static const auto direct_one = avx2_tile_table<false, true>(std::make_integer_sequence<int, kMaxPAvx2>{});
  static const auto nibbles = avx2_tile_table<true, false>(std::make_integer_sequence<int, kMaxPAvx2Split>{});
  static const auto nibbles_one = avx2_tile_table<true, true>(std::make_integer_sequence<int, kMaxPAvx2Split>{});
  if (split) return one_interval ? nibbles_one.data() : nibbles.data();
  return one_interval ? direct_one.data() : direct.data();
}

// Largest code of x (uint8, any strides): bounds the AVX2 kernel's int16 sums.
int max_code(const at::Tensor& x) {
  if (x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    const uint8_t* p = x.const_data_ptr<uint8_t>();
    const int64_t n = x.numel();
    uint8_t m = 0;
#pragma omp simd reduction(max : m)
    for (int64_t i = 0; i < n; ++i) m = p[i] > m ? p[i] : m;
    return m;
  }
  return x.numel() ? static_cast<int>(x.max().item<uint8_t>()) : 0;
}
#endif  // ADADFQ_INT_AVX2

#if defined(ADADFQ_INT_BLOCKED)
// The micro-kernel family a call uses: its tile functions (index P - 1), the largest P, and the int16 flush
// interval (AVX2 only).
struct TileKernels {
  const TileFn* fns;
  int maxP;
  int64_t flush;
};

TileKernels tile_kernels(const Packed& pk, int x_max) {
#if defined(ADADFQ_INT_VNNI)
  if (pk.isa == Isa::Vnni) return {vnni_tile_fns(pk.NB), kMaxP[pk.NB], 0};
#endif
#if defined(ADADFQ_INT_AVX2)
  const int64_t mw = pk.max_abs_w, mx = x_max;
  const int64_t pair = 2 * mx * mw;  // bound of one step's int16 lane (a pair of products)
  // pk.K4 steps: a whole window, the most any tile takes (tiles that skip padding take fewer).
  if (pair <= 32767) {
    const int64_t flush = pair ? 32767 / pair : (int64_t{1} << 40);
    return {avx2_tile_fns(false, pk.K4 <= flush), kMaxPAvx2, flush};
  }
  const int64_t nib = 2 * std::max<int64_t>(std::min<int64_t>(mx, 15), mx >> 4) * mw;  // <= 2 * 15 * 128
  const int64_t flush = 32767 / nib;
  return {avx2_tile_fns(true, pk.K4 <= flush), kMaxPAvx2Split, flush};
#else
  (void)x_max;
  TORCH_CHECK(false, "int_conv2d: no blocked kernel for this ISA");
#endif
}

// The micro-kernels read x in place (direct, below) or a zero-padded NHWC image: xp (the whole batch, padded
// beforehand) when given, else each thread pads the images it works on into its own buffer, one at a time
// (x_view). The per-thread copy holds one image instead of the batch (the batch copy of a 224-px ResNet-18 stem
// output at batch 256 is 837 MB) and stays in cache while the image's tiles read it. It was not measurably faster
// than the batch copy on this project's CPU (both copy the same bytes). Reading x in place gained 1-5% per conv
// over the per-image copy on ResNet-20/-18 layers with up to 128 channels (the timing noise here is +-2.5%); with
// larger weight blocks the corner tiles it needs (single pixels that reload the whole block) cost up to 4% (7x7,
// 512 channels), hence the 96 KB bound. (An earlier in-place reader that emulated the padding with small copies
// at the borders cost more than it saved.) In place (direct), every tile skips all of its windows' padding
// (below), so nothing outside the image is read; window origins are counted in x's own coordinates, where they
// may lie before a row or image start (only their in-image taps are read).
void run_blocked(const Geometry& g, const Packed& pk, const uint8_t* xp, const InputView* x_view, const int32_t* S,
                 const Epilogue& ep, bool weight_major, bool direct, int x_max) {
  // The buffer read: the zero-padded image ([Hp][Wp], origin of output pixel (oh, ow) at (oh*sh, ow*sw)) or x
  // ([H][W], origin at (oh*sh - ph, ow*sw - pw)).
  const int64_t row_px = direct ? g.W : g.Wp, oy = direct ? g.ph : 0, ox = direct ? g.pw : 0;
  std::vector<int64_t> tap_pix(g.T);
  for (int64_t t = 0; t < g.T; ++t) tap_pix[t] = (t / g.kw) * g.dh * row_px + (t % g.kw) * g.dw;
  // The reduction walks the window in runs of contiguous bytes: one per kernel row when the taps of a row are
  // adjacent pixels and a pixel holds only this group's channels (dilation 1, one group), else one per tap.
  const bool row_runs = g.dw == 1 && g.Cp == g.Cg4;
  const int64_t runs = row_runs ? g.kh : g.T, run_c4 = (row_runs ? g.kw : 1) * g.Cg4 / 4;
  std::vector<int64_t> tap_off(runs);
  for (int64_t r = 0; r < runs; ++r) tap_off[r] = tap_pix[row_runs ? r * g.kw : r] * g.Cp;
  const TileKernels kernels = tile_kernels(pk, x_max);
  const int NB = pk.NB, maxP = kernels.maxP;
  // Output rows are cut into tiles of at most maxP pixels (below). (Tiles of consecutive pixels across rows,
  // so that short rows still fill maxP pixels per weight load, were tried on 7x7 to 16x16 maps: level with row
  // tiles at 64+ channels and 3-8% slower at 32, at batch 1 to 256, through their per-pixel address registers.)
  const TileFn* fns = kernels.fns;
  const int64_t npix = g.Ho * g.Wo;
  const int64_t block = pk.K4 * NB * 64;
  const int64_t nob = pk.nob;
  const int64_t chunks = g.N * g.Ho;  // a chunk is one output row
  const int64_t items = chunks * g.G * nob;
  const int64_t image_bytes = (direct ? g.H * g.W : g.Hp * g.Wp) * g.Cp;
  // Padding is skipped where it covers a whole kernel row or column of every pixel of a tile (the sums do not
  // change: padding codes are 0, and box sums count them as 0 too). oneDNN/fbgemm skip padding taps as well; on
  // 7x7 and 8x8 maps they are 16-18% of the window MACs. Kernel rows: per output row (all its pixels share them).
  // Kernel columns: the output columns whose windows reach into the left/right padding (L and R of them) are
  // taken out of the rows between the top and bottom border rows (rows [top, bottom)) and computed as column
  // tiles of up to maxP pixels, each starting at an output row with (oh - top) % maxP == 0; a column tile reads
  // only its window's columns inside the image (row runs only: one run per kernel row).
  int64_t top = 0, bottom = g.Ho, L = 0, R = 0;
  while (top < g.Ho && top * g.sh - g.ph < 0) ++top;
  while (bottom > top && (bottom - 1) * g.sh - g.ph + (g.kh - 1) * g.dh >= g.H) --bottom;
  if (row_runs && (bottom > top || direct)) {
    while (L < g.Wo && L * g.sw - g.pw < 0) ++L;
    while (R < g.Wo - L && (g.Wo - 1 - R) * g.sw - g.pw + (g.kw - 1) * g.dw >= g.W) ++R;
    // On a padded copy, only where the border columns are >= 1/8 of a row (maps up to 16 wide with 3x3
    // windows): measured against plain rows at batch 64-256, 1 thread, 3x3 layers: +4% at 8x8 and 14x14, +7% at
    // 7x7, level at 16x16 and 56x56, -3% at 32x32 with 16 channels (a column tile uses 16 of each 64-byte line it
    // reads). Reading x directly, always (the padding must not be read); the border pixels of the top and
    // bottom rows are then single-pixel corner tiles that skip both.
    if (!direct && (L + R >= g.Wo || (L + R) * 8 < g.Wo)) L = R = 0;
  }
  // Exact window ranges inside the image: kernel rows [r_lo, r_hi) of output row oh, columns [s_lo, s_hi) of
  // output column ow (floor division: the numerators can be negative where the padding exceeds the reach).
  auto floor_div = [](int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); };
  auto row_range = [&](int64_t oh, int64_t& r_lo, int64_t& r_hi) {
    r_lo = std::min<int64_t>(g.kh, std::max<int64_t>(0, -floor_div(oh * g.sh - g.ph, g.dh)));
    r_hi = std::max<int64_t>(r_lo, std::min<int64_t>(g.kh, floor_div(g.H - 1 + g.ph - oh * g.sh, g.dh) + 1));
  };
  auto col_range = [&](int64_t ow, int64_t& s_lo, int64_t& s_hi) {
    s_lo = std::min<int64_t>(g.kw, std::max<int64_t>(0, -floor_div(ow * g.sw - g.pw, g.dw)));
    s_hi = std::max<int64_t>(s_lo, std::min<int64_t>(g.kw, floor_div(g.W - 1 + g.pw - ow * g.sw, g.dw) + 1));
  };
  const int64_t col_c4 = g.Cg4 / 4;  // 4-channel steps per kernel column within a run
  // Each output row is cut into near-equal tiles of at most maxP pixels, laid out once here (inner rows and, on a
  // padded copy, the top and bottom border rows, which also cover the border columns); the loop below then has
  // no integer divisions per row (they were ~8% of a 16-channel layer's time at batch 256).
  struct Span {
    int64_t ow0;
    int P;
  };
  auto tiling = [&](int64_t ow_begin, int64_t ow_end) {
    std::vector<Span> spans;
    const int64_t width = ow_end - ow_begin, ntiles = (width + maxP - 1) / maxP;
    for (int64_t k = 0, ow0 = ow_begin; k < ntiles; ++k) {
      const int P = static_cast<int>(width / ntiles + (k < width % ntiles ? 1 : 0));
      spans.push_back({ow0, P});
      ow0 += P;
    }
    return spans;
  };
  const std::vector<Span> inner_spans = tiling(L, g.Wo - R), border_spans = direct ? inner_spans : tiling(0, g.Wo);
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> image(xp ? 0 : image_bytes);  // this thread's padded image (per-image mode)
    int64_t image_n = -1;
    int32_t box[16];
    // The item's (chunk, group-block) pair, advanced by one per item (weight-major: chunk fastest).
    const int64_t gbs = g.G * nob;
    int64_t chunk = weight_major ? begin % chunks : begin / gbs, gb = weight_major ? begin / chunks : begin % gbs;
    int64_t n = chunk / g.Ho, oh = chunk % g.Ho;
    for (int64_t it = begin; it < end; ++it) {
      if (it != begin) {
        auto next_chunk = [&]() {
          ++chunk;
          if (++oh == g.Ho) oh = 0, ++n;
        };
        if (weight_major) {
          if (chunk + 1 == chunks) {
            chunk = n = oh = 0;
            ++gb;
          } else {
            next_chunk();
          }
        } else if (++gb == gbs) {
          gb = 0;
          next_chunk();
        }
      }
      const int64_t gr = g.G == 1 ? 0 : gb / nob, ob = gb - gr * nob;
      const uint8_t* xn = xp ? xp + n * image_bytes : image.data();  // (padded) image n
      if (!xp && n != image_n) {
        for (int64_t hp = 0; hp < g.Hp; ++hp) pad_row(*x_view, g, n, hp, image.data() + hp * g.Wp * g.Cp);
        image_n = n;
      }
      const int8_t* w_block = pk.blocked_w.const_data_ptr<int8_t>() + gb * block;
      Tile t;
      t.flush = kernels.flush;
      t.C4 = run_c4;
      t.o0 = gr * g.Og + ob * NB * 16;
      t.valid = static_cast<int>(std::min<int64_t>(NB * 16, g.Og - ob * NB * 16));
      t.box = box;
      // P pixels from (oh0, ow0), `step` pixels apart in the image; their windows then lie step * Cp bytes apart.
      auto run_tile = [&](int64_t oh0, int64_t ow0, int P, int64_t step, int64_t out_step) {
        const int64_t pix0 = (oh0 * g.sh - oy) * row_px + ow0 * g.sw - ox;  // the first window's origin in image n
        t.x = xn + pix0 * g.Cp + gr * g.Cg4;
        t.pix_stride = step * g.Cp;
        t.out_stride = out_step * g.O;
        t.e0 = (n * npix + oh0 * g.Wo + ow0) * g.O + t.o0;
        if (ep.has_box) {
          for (int p = 0; p < P; ++p) {
            const int32_t* s = S + (n * g.Hp * g.Wp + pix0 + p * step) * g.G + gr;  // S: batch mode only
            int32_t b = 0;
            for (int64_t tp = 0; tp < g.T; ++tp) b += s[tap_pix[tp] * g.G];
            box[p] = b;
          }
        }
        fns[P - 1](t, ep);
      };
      // Row tiles: output pixels (oh, ow_begin .. ow_end - 1), cut into near-equal tiles; the kernel rows in the
      // top/bottom padding are skipped.
      int64_t r_lo, r_hi;
      row_range(oh, r_lo, r_hi);
      const int64_t runs_per_row = row_runs ? 1 : g.kw;
      t.tap_off = tap_off.data() + r_lo * runs_per_row;
      t.T = (r_hi - r_lo) * runs_per_row;
      t.w = w_block + r_lo * runs_per_row * run_c4 * NB * 64;
      t.skip_front = t.skip_back = 0;
      const bool inner = oh >= top && oh < bottom;
      for (const Span& span : inner || direct ? inner_spans : border_spans) run_tile(oh, span.ow0, span.P, g.sw, 1);
      // Reading x directly: the border pixels of a top or bottom row, one at a time, skipping rows and columns.
      if (direct && !inner) {
        auto corner_tile = [&](int64_t ow) {
          int64_t s_lo, s_hi;
          col_range(ow, s_lo, s_hi);
          t.skip_front = s_lo * col_c4;
          t.skip_back = (g.kw - s_hi) * col_c4;
          run_tile(oh, ow, 1, g.sw, 1);
        };
        for (int64_t ow = 0; ow < L; ++ow) corner_tile(ow);
        for (int64_t ow = g.Wo - R; ow < g.Wo; ++ow) corner_tile(ow);
      }
      // Column tiles of the border columns, rows [oh, oh + P), hung on the row they start at.
      if (inner && L + R > 0 && (oh - top) % maxP == 0) {
        const int P = static_cast<int>(std::min<int64_t>(maxP, bottom - oh));
        t.tap_off = tap_off.data();
        t.T = runs;
        auto column_tile = [&](int64_t ow) {
          int64_t s_lo, s_hi;
          col_range(ow, s_lo, s_hi);
          t.skip_front = s_lo * col_c4;
          t.skip_back = (g.kw - s_hi) * col_c4;
          t.w = w_block;
          run_tile(oh, ow, P, g.sh * row_px, g.Wo);
        };
        for (int64_t ow = 0; ow < L; ++ow) column_tile(ow);
        for (int64_t ow = g.Wo - R; ow < g.Wo; ++ow) column_tile(ow);
      }
    }
  });
}
#endif  // ADADFQ_INT_BLOCKED

// Portable path: any groups, any build. Per output pixel and group, int32 sums vectorized over the group's
// output channels.
void run_generic(const Geometry& g, const Packed& pk, const uint8_t* xp, const Epilogue& ep) {
  at::parallel_for(0, g.N * g.Ho, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> acc(g.Og);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.Ho, oh = row % g.Ho;
      for (int64_t ow = 0; ow < g.Wo; ++ow) {
        const int64_t e_pix = ((n * g.Ho + oh) * g.Wo + ow) * g.O;
        for (int64_t gr = 0; gr < g.G; ++gr) {
          std::fill(acc.begin(), acc.end(), 0);
          int32_t box = 0;
          const int32_t* wg = pk.generic_w.data() + gr * g.T * g.Cg * g.Og;
          for (int64_t t = 0; t < g.T; ++t) {
            const int64_t ih = oh * g.sh + (t / g.kw) * g.dh, iw = ow * g.sw + (t % g.kw) * g.dw;
            const uint8_t* xpix = xp + ((n * g.Hp + ih) * g.Wp + iw) * g.Cp + gr * g.Cg4;
            for (int64_t c = 0; c < g.Cg; ++c) {
              const int32_t xv = xpix[c];
              box += xv;
              const int32_t* wr = wg + (t * g.Cg + c) * g.Og;
              int32_t* a = acc.data();
              ADADFQ_SIMD
              for (int64_t og = 0; og < g.Og; ++og) a[og] += wr[og] * xv;
            }
          }
          for (int64_t og = 0; og < g.Og; ++og) {
            const int64_t o = gr * g.Og + og;
            const int32_t total = ep.has_box ? acc[og] + ep.zeff[o] * box : acc[og];
            epilogue_scalar(ep, total, e_pix + o, o);
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------------
// Input preparation
// ---------------------------------------------------------------------------------------------------------
// Per-pixel, per-group channel sums of the padded buffer (for the box sums).
void channel_sums(const uint8_t* xp, const Geometry& g, int32_t* S) {
  at::parallel_for(0, g.N * g.Hp * g.Wp, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t pix = begin; pix < end; ++pix) {
      const uint8_t* px = xp + pix * g.Cp;
      for (int64_t gr = 0; gr < g.G; ++gr) {
        int32_t s = 0;
        for (int64_t c = 0; c < g.Cg; ++c) s += px[gr * g.Cg4 + c];
        S[pix * g.G + gr] = s;
      }
    }
  });
}

}  // namespace

at::Tensor int_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_zero,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      const at::Tensor& out_mult, const at::Tensor& out_bias, const std::optional<at::Tensor>& residual,
                      double residual_scale, bool relu, int64_t out_bits, double out_scale, double out_zero) {
  return int_conv2d_into(x, weight, weight_zero, stride, padding, dilation, groups, out_mult, out_bias, residual,
                         residual_scale, relu, out_bits, out_scale, out_zero, -1, nullptr);
}

at::Tensor int_conv2d_into(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_zero,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           const at::Tensor& out_mult, const at::Tensor& out_bias,
                           const std::optional<at::Tensor>& residual, double residual_scale, bool relu,
                           int64_t out_bits, double out_scale, double out_zero, int x_max_bound, at::Tensor* reuse) {
  check_cpu(x, "x");
  check_cpu(weight, "weight");
  TORCH_CHECK(x.scalar_type() == at::kByte && x.dim() == 4, "x: expected uint8 [N, C, H, W], got ", x.scalar_type(),
              " of shape ", x.sizes());
  TORCH_CHECK(weight.scalar_type() == at::kChar && weight.dim() == 4, "weight: expected int8 [O, C/groups, kh, kw]");
  TORCH_CHECK(weight_zero.scalar_type() == at::kInt && weight_zero.numel() == weight.size(0),
              "weight_zero: expected int32 [O]");
  TORCH_CHECK(out_bits == 0 || (out_bits >= 2 && out_bits <= 8), "out_bits: expected 0 or 2..8, got ", out_bits);
  Geometry g;
  g.N = x.size(0), g.C = x.size(1), g.H = x.size(2), g.W = x.size(3);
  g.O = weight.size(0), g.G = groups, g.Cg = weight.size(1), g.kh = weight.size(2), g.kw = weight.size(3);
  TORCH_CHECK(groups >= 1 && g.C % groups == 0 && g.O % groups == 0 && g.Cg == g.C / groups,
              "groups/weight: inconsistent with x's channels");
  g.Og = g.O / g.G;
  g.sh = stride[0], g.sw = stride[1], g.ph = padding[0], g.pw = padding[1], g.dh = dilation[0], g.dw = dilation[1];
  g.Ho = (g.H + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.Wo = (g.W + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  TORCH_CHECK(g.Ho >= 1 && g.Wo >= 1, "x: too small for the kernel");
  g.Cg4 = (g.Cg + 3) / 4 * 4;
  g.Cp = g.G * g.Cg4;
  g.Hp = g.H + 2 * g.ph, g.Wp = g.W + 2 * g.pw, g.T = g.kh * g.kw;

  const bool cl_out = x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
  const auto out_dtype = out_bits ? at::kByte : at::kFloat;
  at::Tensor out;
  if (reuse != nullptr && reuse->defined() && reuse->scalar_type() == out_dtype &&
      reuse->sizes() == at::IntArrayRef({g.N, g.O, g.Ho, g.Wo}) &&
      reuse->is_contiguous(at::MemoryFormat::ChannelsLast)) {
    out = *reuse;  // the caller's buffer of the last call (no allocation, no page faults on a fresh mapping)
  } else {
    out = at::empty({g.N, g.O, g.Ho, g.Wo}, x.options().dtype(out_dtype).memory_format(at::MemoryFormat::ChannelsLast));
    if (reuse != nullptr) *reuse = out;
  }
  if (out.numel() == 0) return cl_out ? out : out.contiguous();

  const Isa isa = selected_isa();
  auto pk = packed_weights(weight, weight_zero, g, isa);
  // int32 sums: |total| <= 255 * K * (max|w_eff| + max|z_eff|).
  const int64_t K = g.Cg * g.T;
  TORCH_CHECK(255 * K * (pk->max_abs_w + pk->max_abs_z) < (int64_t{1} << 31),
              "int_conv2d: the int32 sums could overflow (", K, " products per output); use the reference backend");

  // The zero-padded NHWC input: x itself when it already is that buffer; else, for the VNNI kernels without box
  // sums, padded per image inside run_vnni; else (box sums, which read the padded batch; the portable kernel) a
  // padded copy of the whole batch.
  const bool has_box = !pk->folded;
  const bool x_is_padded =
      g.ph == 0 && g.pw == 0 && g.Cg4 == g.Cg && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  // (Weight-major order visits each image once per output-channel block: it takes the batch copy, made once.)
  const bool weight_major = use_weight_major(g);
  // Read x in place (no padded copy) where the VNNI kernel can skip all padding: channels_last x whose channels
  // are whole 4-byte steps, one group, no dilation along rows, no box sums.
  const bool direct = pk->blocked && !has_box && !x_is_padded && g.G == 1 && g.Cg4 == g.Cg && g.dw == 1 &&
                      x.is_contiguous(at::MemoryFormat::ChannelsLast) && pk->K4 * pk->NB * 64 <= (96 << 10);
  const bool pad_per_image = pk->blocked && !has_box && !x_is_padded && !direct && !weight_major;
  const InputView x_view(x);
  at::Tensor xp_t;
  const uint8_t* xp = nullptr;
  if (x_is_padded || direct) {
    xp = x.const_data_ptr<uint8_t>();
  } else if (!pad_per_image) {
    xp_t = at::empty({g.N * g.Hp * g.Wp * g.Cp}, x.options());
    pad_input(x, g, xp_t.data_ptr<uint8_t>());
    xp = xp_t.const_data_ptr<uint8_t>();
  }
  at::Tensor S_t;
  if (has_box) {
    S_t = at::empty({g.N * g.Hp * g.Wp * g.G}, x.options().dtype(at::kInt));
    channel_sums(xp, g, S_t.data_ptr<int32_t>());
  }

  // float32 per-channel parameters, padded to whole vectors so that masked loads never leave the buffer anyway.
  const at::Tensor mult = out_mult.to(at::kFloat).contiguous(), bias = out_bias.to(at::kFloat).contiguous();
  at::Tensor res;
  Epilogue ep{};
  ep.mult = mult.const_data_ptr<float>();
  ep.bias = bias.const_data_ptr<float>();
  ep.zeff = pk->zeff.data();
  ep.has_box = has_box;
  if (residual.has_value() && residual->defined()) {
    const at::Tensor& r = *residual;
    check_cpu(r, "residual");
    TORCH_CHECK(r.sizes() == out.sizes(), "residual: expected the output shape ", out.sizes(), ", got ", r.sizes());
    TORCH_CHECK(r.scalar_type() == at::kFloat || r.scalar_type() == at::kByte,
                "residual: expected float32 values or uint8 codes");
    res = r.contiguous(at::MemoryFormat::ChannelsLast);
    if (res.scalar_type() == at::kFloat) {
      ep.res_kind = 1;
      ep.res_f = res.const_data_ptr<float>();
    } else {
      ep.res_kind = 2;
      ep.res_u8 = res.const_data_ptr<uint8_t>();
    }
  }
  ep.res_scale = static_cast<float>(residual_scale);
  ep.relu = relu;
  ep.out_bits = static_cast<int>(out_bits);
  ep.out_scale = static_cast<float>(out_scale);
  ep.out_zero = static_cast<float>(out_zero);
  if (out_bits) {
    ep.qmin = -static_cast<float>(1 << (out_bits - 1));
    ep.qmax = static_cast<float>((1 << (out_bits - 1)) - 1);
    ep.out_u8 = out.data_ptr<uint8_t>();
    ep.out_zero_int = static_cast<int32_t>(out_zero);
    TORCH_CHECK(out_zero == std::floor(out_zero) && out_zero + ep.qmin >= 0 && out_zero + ep.qmax <= 255,
                "out_zero: expected an integer zero point whose codes lie in [0, 255], got ", out_zero);
  } else {
    ep.out_f = out.data_ptr<float>();
  }

#if defined(ADADFQ_INT_BLOCKED)
  if (pk->blocked) {
#if defined(ADADFQ_INT_AVX2)
    // A caller that knows the producer's code range passes its bound (the scan reads all of x: 4 MB per layer at
    // ResNet-20's batch 256); a wrong bound would overflow the int16 sums, so it is only trusted from C++ callers.
    const int x_max = pk->isa != Isa::Avx2 ? 255 : x_max_bound >= 0 ? std::min(x_max_bound, 255) : max_code(x);
#else
    const int x_max = 255;
#endif
    run_blocked(g, *pk, xp, &x_view, has_box ? S_t.const_data_ptr<int32_t>() : nullptr, ep, weight_major, direct,
                x_max);
    return cl_out ? out : out.contiguous();
  }
#endif
  run_generic(g, *pk, xp, ep);
  return cl_out ? out : out.contiguous();
}

TORCH_LIBRARY_IMPL(adadfq_native, CPU, m) { m.impl("int_conv2d", &int_conv2d); }

}  // namespace adadfq::cpu
