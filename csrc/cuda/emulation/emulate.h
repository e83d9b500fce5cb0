// A small CPU emulation of the CUDA execution model, so that tests on machines without a GPU can run the kernels
// of csrc/cuda/*.cu (compiled as host C++ with g++) and compare them with the PyTorch reference. Test-only: it is
// not part of the built extension (setup.py compiles csrc/cuda/*.cu and csrc/cuda/*.cpp, not this folder).
//
// How (tests/test_cuda_compile.py drives it):
// * The test rewrites `kernel<<<grid, block, smem, stream>>>(args)` into
//   `::emu::launch(::emu::Config(grid, block, smem, stream), kernel, args)` and compiles with -include emulate.h.
// * Blocks run one after another. The threads of a block are ucontext fibers, scheduled cooperatively; they switch
//   only at __syncthreads and warp shuffles, which are real barriers here (of the block and of the warp).
// * __shared__ becomes `static`: with one block at a time, function statics behave as the block's shared memory.
// * Atomics, fences and cache-hinted loads are plain operations (one OS thread).
// It checks indexing, reductions, barriers and the launch plans; it cannot check timing, races between blocks,
// the device's exp/log (host libm is used), or anything about real hardware.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#undef __shared__
#define __shared__ static
#undef __global__
#define __global__
#undef __launch_bounds__
#define __launch_bounds__(...)

namespace emu {

struct Fiber {
  ucontext_t ctx;
  uint3 tid;
  int linear = 0;
  bool done = true;
  std::vector<char> stack;
};

struct Barrier {
  int arrived = 0, generation = 0;
};

struct State {
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  Fiber* current = nullptr;
  uint3 block_idx;
  dim3 block_dim, grid_dim;
  int live = 0;                 // threads of the block that have not returned
  Barrier block_barrier;
  std::vector<Barrier> warp_barriers;
  std::vector<int> warp_live;
  std::vector<float> warp_slots;  // 32 shuffle slots per warp
  std::function<void()> body;
  cudaError_t last_error = cudaSuccess;
};

inline State& state() {
  static State s;
  return s;
}

inline void yield() { swapcontext(&state().current->ctx, &state().scheduler); }

// Opens every barrier whose live threads have all arrived (also after a thread returns).
inline void release_ready() {
  State& s = state();
  if (s.block_barrier.arrived > 0 && s.block_barrier.arrived >= s.live) {
    s.block_barrier.arrived = 0;
    ++s.block_barrier.generation;
  }
  for (size_t w = 0; w < s.warp_barriers.size(); ++w) {
    Barrier& b = s.warp_barriers[w];
    if (b.arrived > 0 && b.arrived >= s.warp_live[w]) {
      b.arrived = 0;
      ++b.generation;
    }
  }
}

inline void wait_at(Barrier& b) {
  const int generation = b.generation;
  ++b.arrived;
  release_ready();
  while (b.generation == generation) yield();
}

inline void syncthreads() { wait_at(state().block_barrier); }

inline float shfl_xor(float v, int offset) {
  State& s = state();
  const int lane = s.current->linear & 31, warp = s.current->linear >> 5;
  float* slots = s.warp_slots.data() + 32 * warp;
  slots[lane] = v;
  wait_at(s.warp_barriers[warp]);
  const float r = slots[lane ^ offset];
  wait_at(s.warp_barriers[warp]);  // nobody overwrites a slot before every lane has read
  return r;
}

inline void fiber_main() {
  State& s = state();
  s.body();
  s.current->done = true;
  --s.live;
  --s.warp_live[s.current->linear >> 5];
  release_ready();
}

struct Config {
  dim3 grid, block;
  Config(dim3 g, dim3 b, size_t = 0, cudaStream_t = nullptr) : grid(g), block(b) {}
};

template <typename... Params, typename... Args>
void launch(Config cfg, void (*kernel)(Params...), Args&&... args) {
  State& s = state();
  const int threads = static_cast<int>(cfg.block.x * cfg.block.y * cfg.block.z);
  const unsigned blocks = cfg.grid.x * cfg.grid.y * cfg.grid.z;
  if (threads <= 0 || threads > 1024 || blocks == 0) {
    s.last_error = cudaErrorInvalidConfiguration;
    return;
  }
  // Arguments are copied once, as a real launch copies them into parameter space.
  s.body = [=]() { kernel(args...); };
  s.block_dim = cfg.block;
  s.grid_dim = cfg.grid;
  if (s.fibers.size() < static_cast<size_t>(threads)) s.fibers.resize(threads);
  const int warps = (threads + 31) / 32;
  for (unsigned b = 0; b < blocks; ++b) {
    s.block_idx = make_uint3(b % cfg.grid.x, (b / cfg.grid.x) % cfg.grid.y, b / (cfg.grid.x * cfg.grid.y));
    s.live = threads;
    s.block_barrier = Barrier{};
    s.warp_barriers.assign(warps, Barrier{});
    s.warp_live.assign(warps, 0);
    s.warp_slots.assign(32 * warps, 0.0f);
    for (int t = 0; t < threads; ++t) {
      Fiber& f = s.fibers[t];
      f.linear = t;
      f.tid = make_uint3(t % cfg.block.x, (t / cfg.block.x) % cfg.block.y, t / (cfg.block.x * cfg.block.y));
      f.done = false;
      if (f.stack.empty()) f.stack.resize(1 << 16);
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.data();
      f.ctx.uc_stack.ss_size = f.stack.size();
      f.ctx.uc_link = &s.scheduler;
      makecontext(&f.ctx, fiber_main, 0);
      ++s.warp_live[t >> 5];
    }
    for (bool running = true; running;) {
      running = false;
      for (int t = 0; t < threads; ++t) {
        Fiber& f = s.fibers[t];
        if (f.done) continue;
        s.current = &f;
        swapcontext(&s.scheduler, &f.ctx);
        running = running || !f.done;
      }
    }
  }
}

}  // namespace emu

#define threadIdx (::emu::state().current->tid)
#define blockIdx (::emu::state().block_idx)
#define blockDim (::emu::state().block_dim)
#define gridDim (::emu::state().grid_dim)

inline void __syncthreads() { ::emu::syncthreads(); }
inline float __shfl_xor_sync(unsigned, float v, int offset) { return ::emu::shfl_xor(v, offset); }
inline void __threadfence() {}
inline unsigned atomicAdd(unsigned* p, unsigned v) {
  const unsigned old = *p;
  *p = old + v;
  return old;
}
inline float __ldcg(const float* p) { return *p; }
inline unsigned __umulhi(unsigned a, unsigned b) { return static_cast<unsigned>((uint64_t{a} * b) >> 32); }
inline float __int_as_float(int v) {
  float f;
  std::memcpy(&f, &v, sizeof f);
  return f;
}
inline cudaError_t emu_get_last_error() {
  const cudaError_t e = ::emu::state().last_error;
  ::emu::state().last_error = cudaSuccess;
  return e;
}
#define cudaGetLastError emu_get_last_error
using std::isinf;
