// adadfq_native::int_conv2d on CUDA: convolution of uint8 activation codes with int8 weight levels and the fused
// float32 epilogue of the integer-inference design (reference: adadfq_fast/reference.py int_conv2d_forward).
//
// GEMM kernel (two or more input channels per group): an implicit GEMM, tile 64 output pixels x 64 output
// channels of one group per 256-thread block, K walked as (kernel row, kernel column, 32-channel chunk). Each
// chunk is staged in shared memory as 32-bit words of 4 consecutive channels; the product is the mixed-sign
// dp4a (PTX dp4a.u32.s32: unsigned code bytes times signed weight bytes, int32 accumulate), which is exact and
// needs no offset correction. The box sum (sum of the codes over the window) is a second dp4a of the same words
// with 0x01010101. Padding and channel tails are zero bytes, which add nothing to either sum.
// Direct kernel (one input channel per group, or a few): one thread per output element, plain int32 MACs.
//
// Epilogue (one rounding per step, reference order; explicit _rn intrinsics so nothing is contracted into FMA):
//   y = float(int64(acc) + z_w * box) * out_mult + out_bias; y += residual or y += float(code) / residual_scale;
//   relu; requant: clamp(round(out_scale * y - out_zero)) + out_zero as uint8 (quant_math.h's quant_level).
#include "cuda_common.cuh"

namespace adadfq {
namespace cuda {
namespace {

using namespace detail;

constexpr int kThreads = 256;
constexpr int kTileM = 64;        // output pixels per block
constexpr int kTileN = 64;        // output channels per block
constexpr int kChunk = 32;        // input channels per K step
constexpr int kWords = kChunk / 4;
constexpr int kRow = kTileM + 4;  // shared row stride in words: the staging stores hit 32 distinct banks
constexpr int kPer = 4;           // each thread: 4 pixels x 4 channels
constexpr int kDirectMaxCg = 8;   // up to this many input channels per group the direct kernel is used

// sum_i a.u8[i] * b.s8[i] + c: mixed-sign 4-way byte dot product.
__device__ __forceinline__ int dp4a_us(uint32_t a, uint32_t b, int c) {
#if defined(__CUDA_ARCH__)
  int d;
  asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
#else
  for (int i = 0; i < 4; ++i) c += int((a >> (8 * i)) & 0xffu) * int(int8_t((b >> (8 * i)) & 0xffu));
  return c;
#endif
}

// sum_i a.u8[i] (the box sum of one word).
__device__ __forceinline__ int byte_sum(uint32_t a, int c) {
#if defined(__CUDA_ARCH__)
  return static_cast<int>(__dp4a(a, 0x01010101u, static_cast<unsigned>(c)));
#else
  for (int i = 0; i < 4; ++i) c += int((a >> (8 * i)) & 0xffu);
  return c;
#endif
}

// Four consecutive channels (c .. c+3, those below `limit`) of one pixel or weight row as one little-endian word.
// One 32-bit load when they are contiguous and aligned (channels_last activations, channels_last weights).
template <typename T>
__device__ __forceinline__ uint32_t load_word(const T* p, int64_t stride, int c, int limit) {
  if (stride == 1 && c + 3 < limit && (reinterpret_cast<uintptr_t>(p) & 3u) == 0)
    return *reinterpret_cast<const uint32_t*>(p);
  uint32_t word = 0;
  for (int b = 0; b < 4; ++b)
    if (c + b < limit) word |= uint32_t(static_cast<uint8_t>(p[b * stride])) << (8 * b);
  return word;
}

__device__ __forceinline__ void epilogue_store(const IntConv2dArgs& a, int64_t total, int64_t o, int64_t n,
                                               int64_t oh, int64_t ow) {
  float y = mul_rn(static_cast<float>(total), a.out_mult[o]);  // int64 -> float32 rounds to nearest (cvt.rn)
  y = add_rn(y, a.out_bias[o]);
  if (a.residual_kind != 0) {
    const int64_t r = n * a.r_stride[0] + o * a.r_stride[1] + oh * a.r_stride[2] + ow * a.r_stride[3];
    if (a.residual_kind == 2)
      y = add_rn(y, div_rn(static_cast<float>(static_cast<const uint8_t*>(a.residual)[r]), a.residual_scale));
    else
      y = add_rn(y, static_cast<const float*>(a.residual)[r]);
  }
  if (a.relu) y = relu_nan(y);
  const int64_t off = n * a.o_stride[0] + o * a.o_stride[1] + oh * a.o_stride[2] + ow * a.o_stride[3];
  if (a.out_bits > 0) {
    const float half = static_cast<float>(1 << (a.out_bits - 1));
    const QuantParams p{a.out_scale, a.out_zero, -half, half - 1.0f};
    // Integer-valued and inside [0, 255] (the op checks out_zero), so the conversion is exact.
    static_cast<uint8_t*>(a.out)[off] = static_cast<uint8_t>(static_cast<int>(add_rn(quant_level(y, p), a.out_zero)));
  } else {
    static_cast<float*>(a.out)[off] = y;
  }
}

__global__ void __launch_bounds__(kThreads) int_conv2d_gemm_kernel(IntConv2dArgs a, int cin_g, int cout_g,
                                                                   int n_pixels, int blocks_n) {
  __shared__ uint32_t xs[kWords][kRow];
  __shared__ uint32_t ws[kWords][kRow];
  __shared__ int64_t pix_base[kTileM];  // n * x_stride[0], or -1 past the last pixel
  __shared__ int pix_h[kTileM], pix_w[kTileM];

  const int t = threadIdx.x;
  const int tx = t & 15, ty = t >> 4;
  const int group = blockIdx.y / blocks_n;
  const int n0 = (blockIdx.y - group * blocks_n) * kTileN;  // first output channel of the tile, within the group
  const int m0 = blockIdx.x * kTileM;
  const int64_t hw = a.out_h * a.out_w;
  if (t < kTileM) {
    const int p = m0 + t;
    if (p < n_pixels) {
      const int64_t n = p / hw, rest = p - n * hw;
      const int64_t oh = rest / a.out_w, ow = rest - oh * a.out_w;
      pix_base[t] = n * a.x_stride[0];
      pix_h[t] = static_cast<int>(oh) * a.stride_h - a.pad_h;
      pix_w[t] = static_cast<int>(ow) * a.stride_w - a.pad_w;
    } else {
      pix_base[t] = -1;
    }
  }
  __syncthreads();

  int acc[kPer][kPer] = {};
  int box[kPer] = {};
  const int64_t c_base = int64_t(group) * cin_g;
  const int64_t o_base = int64_t(group) * cout_g + n0;
  for (int r = 0; r < a.kernel_h; ++r) {
    for (int s = 0; s < a.kernel_w; ++s) {
      for (int c0 = 0; c0 < cin_g; c0 += kChunk) {
        // Stage: 64 x 8 words of activations and of weights; 8 consecutive threads read one pixel's (one output
        // channel's) 32 channels, contiguous in channels_last memory.
#pragma unroll
        for (int l = 0; l < (kTileM * kWords) / kThreads; ++l) {
          const int word = t + l * kThreads;
          const int row = word / kWords, k4 = word % kWords;
          const int c = c0 + 4 * k4;
          uint32_t xv = 0;
          const int64_t base = pix_base[row];
          const int ih = pix_h[row] + r * a.dil_h, iw = pix_w[row] + s * a.dil_w;
          if (base >= 0 && ih >= 0 && ih < a.height && iw >= 0 && iw < a.width && c < cin_g) {
            const uint8_t* p = a.x + base + ih * a.x_stride[2] + iw * a.x_stride[3] + (c_base + c) * a.x_stride[1];
            xv = load_word(p, a.x_stride[1], c, cin_g);
          }
          xs[k4][row] = xv;
          uint32_t wv = 0;
          if (n0 + row < cout_g && c < cin_g) {
            const int8_t* p = a.weight + (o_base + row) * a.w_stride[0] + r * a.w_stride[2] + s * a.w_stride[3] +
                              int64_t(c) * a.w_stride[1];
            wv = load_word(p, a.w_stride[1], c, cin_g);
          }
          ws[k4][row] = wv;
        }
        __syncthreads();
#pragma unroll
        for (int k4 = 0; k4 < kWords; ++k4) {
          uint32_t xv[kPer], wv[kPer];
#pragma unroll
          for (int i = 0; i < kPer; ++i) {
            xv[i] = xs[k4][ty + 16 * i];
            wv[i] = ws[k4][tx + 16 * i];
          }
#pragma unroll
          for (int i = 0; i < kPer; ++i) {
            box[i] = byte_sum(xv[i], box[i]);
#pragma unroll
            for (int j = 0; j < kPer; ++j) acc[i][j] = dp4a_us(xv[i], wv[j], acc[i][j]);
          }
        }
        __syncthreads();
      }
    }
  }

  // Epilogue: for a fixed (i, j) the 16 threads of a half-warp hold 16 consecutive output channels of one pixel
  // (contiguous in a channels_last output).
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int p = m0 + ty + 16 * i;
    if (p >= n_pixels) continue;
    const int64_t n = p / hw, rest = p - n * hw;
    const int64_t oh = rest / a.out_w, ow = rest - oh * a.out_w;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int oc = n0 + tx + 16 * j;
      if (oc >= cout_g) continue;
      const int64_t o = int64_t(group) * cout_g + oc;
      const int64_t total = int64_t(acc[i][j]) + int64_t(a.weight_zero[o]) * int64_t(box[i]);
      epilogue_store(a, total, o, n, oh, ow);
    }
  }
}

// One thread per output element, enumerated in the output's memory order when it is channels_last (channel
// fastest) or contiguous (column fastest), so stores are coalesced either way.
__global__ void __launch_bounds__(kThreads) int_conv2d_direct_kernel(IntConv2dArgs a, int cin_g, int cout_g,
                                                                     int64_t numel, bool channel_fastest) {
  const int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= numel) return;
  int64_t n, o, oh, ow;
  if (channel_fastest) {
    o = e % a.out_channels;
    int64_t rest = e / a.out_channels;
    ow = rest % a.out_w;
    rest /= a.out_w;
    oh = rest % a.out_h;
    n = rest / a.out_h;
  } else {
    ow = e % a.out_w;
    int64_t rest = e / a.out_w;
    oh = rest % a.out_h;
    rest /= a.out_h;
    o = rest % a.out_channels;
    n = rest / a.out_channels;
  }
  const int64_t c_base = (o / cout_g) * cin_g;
  const uint8_t* xn = a.x + n * a.x_stride[0];
  const int8_t* wo = a.weight + o * a.w_stride[0];
  int acc = 0, box = 0;
  for (int r = 0; r < a.kernel_h; ++r) {
    const int64_t ih = oh * a.stride_h - a.pad_h + int64_t(r) * a.dil_h;
    if (ih < 0 || ih >= a.height) continue;
    for (int s = 0; s < a.kernel_w; ++s) {
      const int64_t iw = ow * a.stride_w - a.pad_w + int64_t(s) * a.dil_w;
      if (iw < 0 || iw >= a.width) continue;
      const uint8_t* xp = xn + ih * a.x_stride[2] + iw * a.x_stride[3] + c_base * a.x_stride[1];
      const int8_t* wp = wo + r * a.w_stride[2] + s * a.w_stride[3];
      for (int c = 0; c < cin_g; ++c) {
        const int m = xp[c * a.x_stride[1]];
        acc += m * int(wp[c * a.w_stride[1]]);
        box += m;
      }
    }
  }
  epilogue_store(a, int64_t(acc) + int64_t(a.weight_zero[o]) * int64_t(box), o, n, oh, ow);
}

}  // namespace

cudaError_t launch_int_conv2d(const IntConv2dArgs& a, cudaStream_t stream) {
  const int64_t n_pixels = a.batch * a.out_h * a.out_w;
  if (n_pixels <= 0 || a.out_channels <= 0) return cudaSuccess;
  if (a.groups < 1 || a.in_channels % a.groups || a.out_channels % a.groups) return cudaErrorInvalidValue;
  const int64_t cin_g = a.in_channels / a.groups, cout_g = a.out_channels / a.groups;
  // int32 accumulators: |q_w| <= 128, m <= 255 (the design's K bound); 32-bit pixel and channel indices.
  const int64_t taps = cin_g * a.kernel_h * a.kernel_w;
  if (taps > (int64_t{1} << 31) / (128 * 255) || n_pixels >= (int64_t{1} << 31) - kTileM) return cudaErrorInvalidValue;
  if (cin_g <= kDirectMaxCg) {
    const int64_t numel = n_pixels * a.out_channels;
    if (numel / kThreads >= (int64_t{1} << 31)) return cudaErrorInvalidValue;
    const bool channel_fastest = a.o_stride[1] == 1 && a.out_channels > 1;
    int_conv2d_direct_kernel<<<ceil_div(numel, kThreads), kThreads, 0, stream>>>(
        a, static_cast<int>(cin_g), static_cast<int>(cout_g), numel, channel_fastest);
    return cudaGetLastError();
  }
  const int64_t blocks_n = (cout_g + kTileN - 1) / kTileN;
  if (blocks_n * a.groups > 65535) return cudaErrorInvalidValue;
  const dim3 grid(ceil_div(n_pixels, kTileM), static_cast<unsigned>(blocks_n * a.groups));
  int_conv2d_gemm_kernel<<<grid, kThreads, 0, stream>>>(a, static_cast<int>(cin_g), static_cast<int>(cout_g),
                                                        static_cast<int>(n_pixels), static_cast<int>(blocks_n));
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace adadfq
