// adadfq_native::quantize_codes on CPU: float32 activations -> uint8 activation codes in one pass.
//
// The integer model's float layers (the first conv, which reads the float image) end with Q's QuantAct steps,
// which adadfq_fast/reference.py (quantize_codes_forward) writes as PyTorch ops: optional relu, v = scale * y,
// v - zero, round half to even, clamp to [-2^(k-1), 2^(k-1) - 1], code q + zero. Those are six passes over the
// float map (at ResNet-20's first layer and batch 256, 3 ms of a 76 ms forward); this is one read and one
// byte write, byte-identical to the PyTorch steps (tests/test_quantize_codes.py):
// * every float32 operation rounds on its own, in the same order (the file is built with -ffp-contract=off and
//   the vector path uses separate multiply and subtract);
// * clamping before rounding is exact (the bounds are integers), and the vector conversion rounds half to even
//   (the default MXCSR mode), like torch.round;
// * NaN gives q = 0 (code `zero`), as the PyTorch steps do on x86 (NaN survives round and clamp, and the float
//   to int8 conversion returns 0 for it); relu keeps NaN, as torch.relu does.
// The output has the input's strides (any dense layout: the map is processed as flat memory).
//
// Optionally, a per-channel affine first: v = fma(y, channel_mult[c], channel_add[c]) (one rounding), c the index
// along dim 1. The integer model passes a float layer's eval BatchNorm here after checking, when it builds the
// layer, that this is bit for bit what torch's batch_norm computes on this machine (deploy/modules.py,
// _bn_as_fma); that saves the separate BN pass over the float map.
#include "cpu_common.h"
#include "int_kernels.h"

namespace adadfq::cpu {
namespace {

struct CodesParams {
  float scale, zero, qmin, qmax;
  int32_t zero_int;
  bool relu;
};

// y -> fma(y, mult, add) per channel (the optional affine), then the codes.
inline uint8_t code_scalar(float y, const CodesParams& p, float mult = 1.f, float add = 0.f, bool affine = false) {
  if (affine) y = std::fma(y, mult, add);
  if (p.relu) y = y < 0.f ? 0.f : y;  // keeps NaN and -0.0, like torch.relu
  float v = sub_rn(mul_rn(p.scale, y), p.zero);
  if (v != v) return static_cast<uint8_t>(p.zero_int);
  v = round_even(std::min(std::max(v, p.qmin), p.qmax));
  return static_cast<uint8_t>(static_cast<int32_t>(v) + p.zero_int);
}

#if defined(__AVX512F__)
struct CodesVec {
  explicit CodesVec(const CodesParams& p)
      : scale(_mm512_set1_ps(p.scale)), zero(_mm512_set1_ps(p.zero)), qmin(_mm512_set1_ps(p.qmin)),
        qmax(_mm512_set1_ps(p.qmax)), zero_int(_mm512_set1_epi32(p.zero_int)), relu(p.relu) {}
  __m512 scale, zero, qmin, qmax;
  __m512i zero_int;
  bool relu;

  // 16 floats -> 16 codes (in the low bytes of the result).
  __m128i operator()(__m512 v) const {
    // max(0, v) returns its second operand for NaN: NaN passes, as in torch.relu.
    if (relu) v = _mm512_max_ps(_mm512_setzero_ps(), v);
    v = _mm512_sub_ps(_mm512_mul_ps(scale, v), zero);
    v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);  // NaN -> 0, so q = 0
    v = _mm512_min_ps(_mm512_max_ps(v, qmin), qmax);
    return _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(v), zero_int));
  }
};
#elif defined(__AVX2__) && defined(__FMA__)
// The same steps on 8 floats (CPUs without AVX-512, e.g. Zen 3): without it they ran one element at a time, 9 ms of
// the first layer's 11.5 ms at ResNet-20 CIFAR shape, batch 256.
struct CodesVec8 {
  explicit CodesVec8(const CodesParams& p)
      : scale(_mm256_set1_ps(p.scale)), zero(_mm256_set1_ps(p.zero)), qmin(_mm256_set1_ps(p.qmin)),
        qmax(_mm256_set1_ps(p.qmax)), zero_int(_mm256_set1_epi32(p.zero_int)), relu(p.relu) {}
  __m256 scale, zero, qmin, qmax;
  __m256i zero_int;
  bool relu;

  // 8 floats -> 8 codes (in the low 8 bytes of the result).
  __m128i operator()(__m256 v) const {
    if (relu) v = _mm256_max_ps(_mm256_setzero_ps(), v);  // NaN passes, as in torch.relu
    v = _mm256_sub_ps(_mm256_mul_ps(scale, v), zero);
    v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q));  // NaN -> 0, so q = 0
    v = _mm256_min_ps(_mm256_max_ps(v, qmin), qmax);
    const __m256i c = _mm256_add_epi32(_mm256_cvtps_epi32(v), zero_int);  // in [0, 255]
    const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    return _mm_packus_epi16(w16, w16);
  }
};
#endif

// n elements without the affine, or all of one channel (scalar mult/add).
void codes_span(const float* y, uint8_t* out, int64_t n, const CodesParams& p, bool affine, float mult, float add) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const CodesVec codes(p);
  const __m512 m = _mm512_set1_ps(mult), a = _mm512_set1_ps(add);
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_loadu_ps(y + i);
    if (affine) v = _mm512_fmadd_ps(v, m, a);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), codes(v));
  }
#elif defined(__AVX2__) && defined(__FMA__)
  const CodesVec8 codes(p);
  const __m256 m = _mm256_set1_ps(mult), a = _mm256_set1_ps(add);
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(y + i);
    if (affine) v = _mm256_fmadd_ps(v, m, a);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out + i), codes(v));
  }
#endif
  for (; i < n; ++i) out[i] = code_scalar(y[i], p, mult, add, affine);
}

// `pixels` runs of C channels (channels innermost), the affine per channel.
void codes_pixels(const float* y, uint8_t* out, int64_t pixels, int64_t C, const float* mult, const float* add,
                  const CodesParams& p) {
#if defined(__AVX512F__)
  const CodesVec codes(p);
  for (int64_t px = 0; px < pixels; ++px, y += C, out += C) {
    for (int64_t c = 0; c < C; c += 16) {
      const __mmask16 mask = C - c >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (C - c)) - 1);
      const __m512 v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, y + c), _mm512_maskz_loadu_ps(mask, mult + c),
                                       _mm512_maskz_loadu_ps(mask, add + c));
      _mm_mask_storeu_epi8(out + c, mask, codes(v));
    }
  }
#else
#if defined(__AVX2__) && defined(__FMA__)
  const CodesVec8 codes(p);
  const int64_t C8 = C - C % 8;
#else
  const int64_t C8 = 0;
#endif
  for (int64_t px = 0; px < pixels; ++px, y += C, out += C) {
#if defined(__AVX2__) && defined(__FMA__)
    for (int64_t c = 0; c < C8; c += 8) {
      const __m256 v = _mm256_fmadd_ps(_mm256_loadu_ps(y + c), _mm256_loadu_ps(mult + c), _mm256_loadu_ps(add + c));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(out + c), codes(v));
    }
#endif
    for (int64_t c = C8; c < C; ++c) out[c] = code_scalar(y[c], p, mult[c], add[c], true);
  }
#endif
}

}  // namespace

at::Tensor quantize_codes(const at::Tensor& y, double scale, double zero, int64_t bits, bool relu,
                          const std::optional<at::Tensor>& channel_mult, const std::optional<at::Tensor>& channel_add) {
  check_cpu(y, "y");
  TORCH_CHECK(y.scalar_type() == at::kFloat, "y: expected float32, got ", y.scalar_type());
  TORCH_CHECK(bits >= 2 && bits <= 8, "bits: expected 2..8, got ", bits);
  TORCH_CHECK(std::isfinite(scale) && scale > 0, "scale: expected a finite positive scale, got ", scale);
  const double half = static_cast<double>(int64_t{1} << (bits - 1));
  TORCH_CHECK(zero == std::floor(zero) && zero - half >= 0 && zero + half - 1 <= 255,
              "zero: expected an integer zero point whose codes lie in [0, 255], got ", zero);
  const bool affine = channel_mult.has_value() && channel_mult->defined();
  TORCH_CHECK(affine == (channel_add.has_value() && channel_add->defined()),
              "channel_mult/channel_add: give both or neither");
  at::Tensor mult, add;
  if (affine) {
    TORCH_CHECK(y.dim() >= 2, "y: the per-channel affine needs a channel dimension (dim 1), got shape ", y.sizes());
    for (const auto& [t, name] : {std::pair{*channel_mult, "channel_mult"}, std::pair{*channel_add, "channel_add"}}) {
      check_cpu(t, name);
      TORCH_CHECK(t.scalar_type() == at::kFloat && t.dim() == 1 && t.size(0) == y.size(1), name,
                  ": expected float32 [", y.size(1), "], got ", t.scalar_type(), " ", t.sizes());
    }
    mult = channel_mult->contiguous();
    add = channel_add->contiguous();
  }
  // A dense input (any dimension order) is one flat run of memory; anything else is made contiguous first.
  const at::Tensor src = y.is_non_overlapping_and_dense() ? y : y.contiguous();
  at::Tensor out = at::empty_like(src, src.options().dtype(at::kByte));
  const int64_t n = src.numel();
  if (n == 0) return out;
  CodesParams p{static_cast<float>(scale), static_cast<float>(zero), static_cast<float>(-half),
                static_cast<float>(half - 1), static_cast<int32_t>(zero), relu};
  const float* in = src.const_data_ptr<float>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  if (!affine) {
    at::parallel_for(0, (n + 15) / 16, kGrain / 16, [&](int64_t begin, int64_t end) {
      const int64_t lo = begin * 16, hi = std::min(end * 16, n);
      codes_span(in + lo, dst + lo, hi - lo, p, false, 1.f, 0.f);
    });
    return out;
  }
  // Channel c of flat element i is (i / inner) % C, inner = the channel stride of the dense layout.
  const int64_t C = src.size(1), inner = inner_size(src, 1, C);
  const float* m = mult.const_data_ptr<float>();
  const float* a = add.const_data_ptr<float>();
  if (inner == 1) {  // channels innermost (channels_last): runs of C channels per pixel
    const int64_t pixels = n / C;
    at::parallel_for(0, pixels, std::max<int64_t>(1, kGrain / C), [&](int64_t begin, int64_t end) {
      codes_pixels(in + begin * C, dst + begin * C, end - begin, C, m, a, p);
    });
  } else {  // runs of `inner` elements of one channel (NCHW: the H*W plane)
    at::parallel_for(0, n / inner, std::max<int64_t>(1, kGrain / inner), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t c = r % C;
        codes_span(in + r * inner, dst + r * inner, inner, p, true, m[c], a[c]);
      }
    });
  }
  return out;
}

TORCH_LIBRARY_IMPL(adadfq_native, CPU, m) { m.impl("quantize_codes", &quantize_codes); }

}  // namespace adadfq::cpu
