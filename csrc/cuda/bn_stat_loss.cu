// adadfq_native::bn_stat_loss / bn_stat_loss_backward on CUDA: L_BNS over every BatchNorm input at once.
//
// All layers share each launch. Their shapes, pointers and block ranges live in a small device table
// (`BnLayer` entries, see adadfq/cuda_kernels.h) that bn_upload_kernel writes from kernel arguments: arguments
// are recorded by value when a CUDA graph is captured, unlike a host-to-device copy from a temporary buffer.
//
// Forward (2 launches for up to kUploadChunk layers, +1 per further chunk):
//   bn_upload_kernel: the table, and zeroes the completion counter.
//   bn_partial_kernel: one block per (layer, channel or group of 32 channels, split of the channel's elements)
//     writes the shifted sums (S1, S2) = sum (x - x0), sum (x - x0)^2 of its share, x0 being the channel's first
//     element: the shift keeps the variance free of catastrophic cancellation when |mean| >> std. Large
//     channels (ImageNet stems: 200K elements) are split so that the grid fills the GPU.
//   bn_merge_kernel: one thread per channel adds its splits in order, writes mean and biased variance; the last
//     block to finish (atomic ticket) computes the loss from all statistics, one warp per layer.
// Backward (2 launches): the table, then one elementwise pass over all layers' tiles.
// Nothing uses atomics on values, so results are deterministic.
#include "cuda_common.cuh"

namespace adadfq {
namespace cuda {
namespace {

using namespace detail;

constexpr int kThreads = 256;              // partial and backward blocks; row-major mode needs exactly 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int64_t kTargetPerBlock = 16384;  // elements per forward block: 64 per thread, amortises its reduction
constexpr int64_t kMaxSplits = 64;          // bounds the serial merge per channel
constexpr int kUnroll = 4;
constexpr int64_t kBwdTile = int64_t{kThreads} * kUnroll;
constexpr int kUploadChunk = 24;            // 24 * sizeof(BnLayer) stays under the classic 4 KB argument limit
constexpr int64_t kAlign = 256;

struct BnTableChunk {
  BnLayer layers[kUploadChunk];
  int first;
  int count;
};
static_assert(sizeof(BnTableChunk) <= 4000, "kernel arguments must stay under 4 KB");

int64_t align_up(int64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }
int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct ScratchLayout {
  int64_t table_bytes;  // the table starts at offset 0
  int64_t counter;      // offset of the unsigned completion counter
  int64_t partials;     // offset of the float2 partial sums
};

ScratchLayout scratch_layout(int num_layers) {
  ScratchLayout s;
  s.table_bytes = align_up(static_cast<int64_t>(num_layers) * static_cast<int64_t>(sizeof(BnLayer)));
  s.counter = s.table_bytes;
  s.partials = s.counter + kAlign;
  return s;
}

__global__ void bn_upload_kernel(BnTableChunk chunk, BnLayer* __restrict__ table, unsigned* __restrict__ counter) {
  for (int i = threadIdx.x; i < chunk.count; i += blockDim.x) table[chunk.first + i] = chunk.layers[i];
  if (counter != nullptr && threadIdx.x == 0) *counter = 0u;
}

// Last layer whose block range starts at or before `b` (layers without blocks share the next one's start, so
// "last" skips them). Called by one thread; the table is tiny and cached.
template <typename Field>
__device__ int find_layer(const BnLayer* table, int num_layers, int64_t b, Field field) {
  int lo = 0, hi = num_layers - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (field(table[mid]) <= b) lo = mid; else hi = mid - 1;
  }
  return lo;
}

struct FwdOffset {
  __device__ int64_t operator()(const BnLayer& l) const { return l.fwd_block_offset; }
};
struct BwdOffset {
  __device__ int64_t operator()(const BnLayer& l) const { return l.bwd_block_offset; }
};
struct ChanOffset {
  __device__ int64_t operator()(const BnLayer& l) const { return l.chan_offset; }
};

__device__ int block_layer(const BnLayer* table, int num_layers, bool forward) {
  __shared__ int layer;
  if (threadIdx.x == 0) {
    layer = forward ? find_layer(table, num_layers, blockIdx.x, FwdOffset{})
                    : find_layer(table, num_layers, blockIdx.x, BwdOffset{});
  }
  __syncthreads();
  return layer;
}

// ---- forward partial sums.
// Channel-major (inner > 1, e.g. NCHW): the channel's element k sits at (k / inner) * C * inner + c * inner +
// k % inner; the block walks its split with an incremental (row, column) pair instead of a 64-bit division per
// element.
template <typename T>
__device__ void partial_channel_major(const BnLayer& L, int64_t local, float2* __restrict__ partials) {
  __shared__ float smem[32];
  const T* x = static_cast<const T*>(L.x);
  const int64_t c = local / L.splits, s = local % L.splits;
  const int64_t k0 = s * L.split_len;
  const int64_t k1 = k0 + L.split_len < L.per_channel ? k0 + L.split_len : L.per_channel;
  const int64_t inner = L.inner, row_stride = L.channels * L.inner, base = c * L.inner;
  const float shift = to_float(x[base]);
  int64_t k = k0 + threadIdx.x;
  int64_t row = k / inner, col = k % inner;
  const int64_t step_rows = blockDim.x / inner, step_cols = blockDim.x % inner;
  float s1 = 0.0f, s2 = 0.0f;
  while (k < k1) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      v[u] = k < k1 ? to_float(x[row * row_stride + base + col]) - shift : 0.0f;
      k += blockDim.x;
      row += step_rows;
      col += step_cols;
      if (col >= inner) {
        col -= inner;
        ++row;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      s1 += v[u];
      s2 += v[u] * v[u];
    }
  }
  s1 = block_reduce(s1, SumOp{}, 0.0f, smem);
  s2 = block_reduce(s2, SumOp{}, 0.0f, smem);
  if (threadIdx.x == 0) partials[L.part_offset + c * L.splits + s] = make_float2(s1, s2);
}

// Row-major (inner == 1: channels_last, [N, C]): a channel's elements are C apart, so a warp reads 32 adjacent
// channels of one row (coalesced) and the 8 warps take interleaved rows; the warps' sums meet in shared memory.
template <typename T>
__device__ void partial_row_major(const BnLayer& L, int64_t local, float2* __restrict__ partials) {
  __shared__ float sums[2][kWarps][32];
  const T* x = static_cast<const T*>(L.x);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t group = local / L.splits, s = local % L.splits;
  const int64_t c = group * 32 + lane, C = L.channels;
  const bool valid = c < C;
  const int64_t r0 = s * L.split_len;
  const int64_t r1 = r0 + L.split_len < L.per_channel ? r0 + L.split_len : L.per_channel;
  const float shift = valid ? to_float(x[c]) : 0.0f;
  float s1 = 0.0f, s2 = 0.0f;
  if (valid) {
    for (int64_t r = r0 + warp; r < r1; r += kWarps * kUnroll) {
      float v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t row = r + u * kWarps;
        v[u] = row < r1 ? to_float(x[row * C + c]) - shift : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        s1 += v[u];
        s2 += v[u] * v[u];
      }
    }
  }
  sums[0][warp][lane] = s1;
  sums[1][warp][lane] = s2;
  __syncthreads();
  if (warp == 0 && valid) {
    float t1 = 0.0f, t2 = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      t1 += sums[0][w][lane];
      t2 += sums[1][w][lane];
    }
    partials[L.part_offset + c * L.splits + s] = make_float2(t1, t2);
  }
}

template <typename T>
__device__ void partial_typed(const BnLayer& L, int64_t local, float2* partials) {
  if (L.row_major) partial_row_major<T>(L, local, partials);
  else partial_channel_major<T>(L, local, partials);
}

__global__ void __launch_bounds__(kThreads)
    bn_partial_kernel(const BnLayer* __restrict__ table, int num_layers, float2* __restrict__ partials) {
  const int l = block_layer(table, num_layers, true);
  const BnLayer L = table[l];
  const int64_t local = blockIdx.x - L.fwd_block_offset;
  switch (L.x_dtype) {
    case DType::kFloat16:
      partial_typed<__half>(L, local, partials);
      break;
    case DType::kBFloat16:
      partial_typed<__nv_bfloat16>(L, local, partials);
      break;
    default:
      partial_typed<float>(L, local, partials);
  }
}

// ---- forward merge + loss.
__global__ void __launch_bounds__(kThreads)
    bn_merge_kernel(const BnLayer* __restrict__ table, int num_layers, int64_t total_channels,
                    const float2* __restrict__ partials, unsigned* __restrict__ counter, float* __restrict__ stats,
                    float* __restrict__ loss) {
  __shared__ bool is_last;
  __shared__ float terms[kWarps];
  const float nan = __int_as_float(0x7fc00000);
  const int64_t g = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (g < total_channels) {
    const BnLayer& L = table[find_layer(table, num_layers, g, ChanOffset{})];
    const int64_t c = g - L.chan_offset;
    float mean = nan, var = nan;  // torch: the mean and variance of no elements are NaN
    if (L.per_channel > 0) {
      float s1 = 0.0f, s2 = 0.0f;
      const float2* p = partials + L.part_offset + c * L.splits;
      for (int64_t s = 0; s < L.splits; ++s) {
        const float2 v = p[s];
        s1 += v.x;
        s2 += v.y;
      }
      const float m = static_cast<float>(L.per_channel);
      const float shifted_mean = s1 / m;
      mean = load_as_float(L.x, L.x_dtype, c * L.inner) + shifted_mean;
      var = s2 / m - shifted_mean * shifted_mean;
      var = var < 0.0f ? 0.0f : var;  // rounding can dip below zero for a (near-)constant channel
    }
    stats[g] = mean;
    stats[total_channels + g] = var;
  }

  // Last-block-done: every block publishes its statistics, then takes a ticket; the block holding the last
  // ticket sees all statistics (read through L2 with __ldcg) and computes the loss.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) is_last = atomicAdd(counter, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!is_last) return;
  __threadfence();

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float total = 0.0f;  // used by thread 0: adds the layer terms in layer order
  for (int first = 0; first < num_layers; first += kWarps) {
    const int l = first + warp;
    if (l < num_layers) {
      const BnLayer& L = table[l];
      float dm = 0.0f, dv = 0.0f;
      for (int64_t c = lane; c < L.channels; c += 32) {
        const int64_t col = L.chan_offset + c;
        const float em = __ldcg(stats + col) - load_as_float(L.running_mean, L.rm_dtype, c);
        const float ev = __ldcg(stats + total_channels + col) - load_as_float(L.running_var, L.rv_dtype, c);
        dm += em * em;
        dv += ev * ev;
      }
      dm = warp_reduce(dm, SumOp{});
      dv = warp_reduce(dv, SumOp{});
      const float channels = static_cast<float>(L.channels);  // 0 channels: 0 / 0 = NaN, like an empty mean
      if (lane == 0) terms[warp] = dm / channels + dv / channels;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 0; w < kWarps && first + w < num_layers; ++w) total += terms[w];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    *loss = total / static_cast<float>(num_layers);
    *counter = 0u;
  }
}

// ---- backward: dL/dx = a_c + b_c * (x - mu_c), a_c = 2 coef (mu_c - rm_c), b_c = 4 coef (var_c - rv_c),
// coef = g / (L C M), in the reference's float32 order.
template <typename T, typename Index, typename Div>
__device__ void backward_tile(const BnLayer& L, int64_t tile, float g, const float* __restrict__ stats,
                              int64_t total_channels, ChannelOf<Index, Div> channel_of) {
  const T* x = static_cast<const T*>(L.x);
  T* out = static_cast<T*>(L.grad_x);
  const float coef = div_rn(g, L.grad_denom);
  const float two_coef = mul_rn(2.0f, coef), four_coef = mul_rn(4.0f, coef);
  Index cached = static_cast<Index>(-1);
  float a = 0.0f, b = 0.0f, mu = 0.0f;
  const Index base = static_cast<Index>(tile * kBwdTile);
  const Index numel = static_cast<Index>(L.numel);
  float v[kUnroll];
#pragma unroll
  for (int k = 0; k < kUnroll; ++k) {
    const Index i = base + threadIdx.x + k * kThreads;
    v[k] = i < numel ? to_float(x[i]) : 0.0f;
  }
#pragma unroll
  for (int k = 0; k < kUnroll; ++k) {
    const Index i = base + threadIdx.x + k * kThreads;
    if (i < numel) {
      const Index c = L.channels > 1 ? channel_of(i) : Index{0};
      if (c != cached) {
        const int64_t col = L.chan_offset + static_cast<int64_t>(c);
        mu = stats[col];
        const float var = stats[total_channels + col];
        a = mul_rn(two_coef, sub_rn(mu, load_as_float(L.running_mean, L.rm_dtype, c)));
        b = mul_rn(four_coef, sub_rn(var, load_as_float(L.running_var, L.rv_dtype, c)));
        cached = c;
      }
      out[i] = from_float<T>(add_rn(a, mul_rn(b, sub_rn(v[k], mu))));
    }
  }
}

template <typename T>
__device__ void backward_typed(const BnLayer& L, int64_t tile, float g, const float* stats, int64_t total_channels) {
  const int64_t inner = L.channels > 1 ? L.inner : 1, channels = L.channels > 1 ? L.channels : 1;
  if (fits_fast_div(L.numel)) {
    const ChannelOf<uint32_t, FastDiv32> ch{FastDiv32(static_cast<uint32_t>(inner)),
                                            FastDiv32(static_cast<uint32_t>(channels))};
    backward_tile<T, uint32_t, FastDiv32>(L, tile, g, stats, total_channels, ch);
  } else {
    const ChannelOf<int64_t, Div64> ch{Div64(inner), Div64(channels)};
    backward_tile<T, int64_t, Div64>(L, tile, g, stats, total_channels, ch);
  }
}

__global__ void __launch_bounds__(kThreads)
    bn_backward_kernel(const BnLayer* __restrict__ table, int num_layers, const float* __restrict__ grad,
                       const float* __restrict__ stats, int64_t total_channels) {
  const int l = block_layer(table, num_layers, false);
  const BnLayer L = table[l];
  const int64_t tile = blockIdx.x - L.bwd_block_offset;
  const float g = *grad;
  switch (L.x_dtype) {
    case DType::kFloat16:
      backward_typed<__half>(L, tile, g, stats, total_channels);
      break;
    case DType::kBFloat16:
      backward_typed<__nv_bfloat16>(L, tile, g, stats, total_channels);
      break;
    default:
      backward_typed<float>(L, tile, g, stats, total_channels);
  }
}

cudaError_t upload_table(const BnLayer* layers, int num_layers, void* scratch, bool zero_counter,
                         cudaStream_t stream) {
  const ScratchLayout layout = scratch_layout(num_layers);
  char* base = static_cast<char*>(scratch);
  BnLayer* table = reinterpret_cast<BnLayer*>(base);
  unsigned* counter = zero_counter ? reinterpret_cast<unsigned*>(base + layout.counter) : nullptr;
  for (int first = 0; first < num_layers; first += kUploadChunk) {
    BnTableChunk chunk;
    chunk.first = first;
    chunk.count = num_layers - first < kUploadChunk ? num_layers - first : kUploadChunk;
    for (int i = 0; i < chunk.count; ++i) chunk.layers[i] = layers[first + i];
    bn_upload_kernel<<<1, 32, 0, stream>>>(chunk, table, first == 0 ? counter : nullptr);
  }
  return cudaGetLastError();
}

}  // namespace

BnPlan bn_stat_loss_plan(BnLayer* layers, int num_layers) {
  BnPlan plan{0, 0, 0, 0, 0};
  int64_t parts = 0;
  for (int l = 0; l < num_layers; ++l) {
    BnLayer& L = layers[l];
    const int64_t C = L.channels;
    if (C <= 1) L.inner = L.numel;
    L.per_channel = C > 0 ? L.numel / C : 0;
    L.row_major = C > 1 && L.inner == 1;
    L.chan_offset = plan.total_channels;
    L.grad_denom = static_cast<float>(static_cast<int64_t>(num_layers) * C * L.per_channel);
    // Forward: splits of at least kTargetPerBlock elements (in rows of 32 channels for row-major layers).
    const int64_t unit = L.row_major ? kTargetPerBlock / 32 : kTargetPerBlock;
    const int64_t min_len = ceil_div64(L.per_channel, kMaxSplits);
    L.split_len = unit > min_len ? unit : min_len;
    L.splits = (C > 0 && L.per_channel > 0) ? ceil_div64(L.per_channel, L.split_len) : 0;
    L.fwd_block_offset = plan.fwd_blocks;
    L.part_offset = parts;
    plan.fwd_blocks += (L.row_major ? ceil_div64(C, 32) : C) * L.splits;
    parts += C * L.splits;
    plan.total_channels += C;
    // Backward: 1024-element tiles over the flat memory.
    L.bwd_block_offset = plan.bwd_blocks;
    plan.bwd_blocks += ceil_div64(L.numel, kBwdTile);
  }
  const ScratchLayout layout = scratch_layout(num_layers);
  plan.scratch_bytes = layout.partials + parts * static_cast<int64_t>(sizeof(float2));
  plan.backward_scratch_bytes = layout.table_bytes;
  return plan;
}

cudaError_t launch_bn_stat_loss(const BnLayer* layers, int num_layers, const BnPlan& plan, float* loss, float* stats,
                                void* scratch, cudaStream_t stream) {
  if (num_layers <= 0) return cudaSuccess;
  const ScratchLayout layout = scratch_layout(num_layers);
  char* base = static_cast<char*>(scratch);
  const BnLayer* table = reinterpret_cast<const BnLayer*>(base);
  unsigned* counter = reinterpret_cast<unsigned*>(base + layout.counter);
  float2* partials = reinterpret_cast<float2*>(base + layout.partials);
  cudaError_t err = upload_table(layers, num_layers, scratch, true, stream);
  if (err != cudaSuccess) return err;
  if (plan.fwd_blocks > 0) {
    bn_partial_kernel<<<static_cast<unsigned>(plan.fwd_blocks), kThreads, 0, stream>>>(table, num_layers, partials);
  }
  // At least one block, so the loss is written even when no layer has channels.
  const unsigned merge_blocks = plan.total_channels > 0 ? ceil_div(plan.total_channels, kThreads) : 1u;
  bn_merge_kernel<<<merge_blocks, kThreads, 0, stream>>>(table, num_layers, plan.total_channels, partials, counter,
                                                         stats, loss);
  return cudaGetLastError();
}

cudaError_t launch_bn_stat_loss_backward(const BnLayer* layers, int num_layers, const BnPlan& plan, const float* grad,
                                         const float* stats, void* scratch, cudaStream_t stream) {
  if (num_layers <= 0 || plan.bwd_blocks <= 0) return cudaSuccess;
  cudaError_t err = upload_table(layers, num_layers, scratch, false, stream);
  if (err != cudaSuccess) return err;
  bn_backward_kernel<<<static_cast<unsigned>(plan.bwd_blocks), kThreads, 0, stream>>>(
      reinterpret_cast<const BnLayer*>(scratch), num_layers, grad, stats, plan.total_channels);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace adadfq
