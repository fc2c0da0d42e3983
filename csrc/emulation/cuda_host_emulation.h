// A small host emulation of the CUDA execution model: enough to run the extension's kernels on the CPU,
// so that their indexing, synchronisation and warp-level logic is tested on machines without a GPU.
//
// Every thread of a block is an OS thread; blocks run one after another. __syncthreads is a barrier
// over the block, warp shuffles and ballots exchange values through a per-block buffer between two
// warp barriers, and a thread that returns drops out of the barriers (as an exited GPU thread does).
// __shared__ variables become function statics, shared by the threads of the block that is running.
// This checks logic, not performance or memory-model subtleties.
#pragma once

#include <barrier>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint2 {
  unsigned x, y;
};
struct uint4 {
  unsigned x, y, z, w;
};
struct float4 {
  float x, y, z, w;
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(threads)
#define __shared__ static

namespace emu {

struct BlockContext {
  std::unique_ptr<std::barrier<>> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<unsigned long long> exchange;
};

inline thread_local dim3 thread_idx;
inline thread_local dim3 block_idx;
inline thread_local unsigned linear_id;
inline dim3 block_dim, grid_dim;
inline BlockContext* current = nullptr;

inline unsigned lane() { return linear_id % 32; }
inline unsigned warp() { return linear_id / 32; }

template <typename T>
T exchange_down(T value, int offset) {
  static_assert(sizeof(T) <= sizeof(unsigned long long), "exchange of a value wider than 8 bytes");
  unsigned long long bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  current->exchange[linear_id] = bits;
  current->warps[warp()]->arrive_and_wait();
  T result = value;
  if (lane() + offset < 32) std::memcpy(&result, &current->exchange[linear_id + offset], sizeof(T));
  current->warps[warp()]->arrive_and_wait();
  return result;
}

inline unsigned ballot(bool predicate) {
  current->exchange[linear_id] = predicate ? 1 : 0;
  current->warps[warp()]->arrive_and_wait();
  unsigned bits = 0;
  for (unsigned l = 0; l < 32; ++l) {
    if (current->exchange[warp() * 32 + l]) bits |= 1u << l;
  }
  current->warps[warp()]->arrive_and_wait();
  return bits;
}

// Runs kernel(args...) over the grid, block after block, each block's threads as OS threads.
template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
  const unsigned threads = block.x * block.y * block.z;
  grid_dim = grid;
  block_dim = block;
  for (unsigned bz = 0; bz < grid.z; ++bz) {
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        BlockContext context;
        context.block = std::make_unique<std::barrier<>>(threads);
        for (unsigned w = 0; w < (threads + 31) / 32; ++w) {
          const unsigned in_warp = threads - w * 32 < 32 ? threads - w * 32 : 32;
          context.warps.push_back(std::make_unique<std::barrier<>>(in_warp));
        }
        context.exchange.assign(threads, 0);
        current = &context;
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (unsigned t = 0; t < threads; ++t) {
          pool.emplace_back([&, t] {
            linear_id = t;
            thread_idx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            block_idx = dim3(bx, by, bz);
            kernel(args...);
            current->warps[warp()]->arrive_and_drop();
            current->block->arrive_and_drop();
          });
        }
        for (std::thread& thread : pool) thread.join();
        current = nullptr;
      }
    }
  }
}

}  // namespace emu

#define threadIdx emu::thread_idx
#define blockIdx emu::block_idx
#define blockDim emu::block_dim
#define gridDim emu::grid_dim

inline void __syncthreads() { emu::current->block->arrive_and_wait(); }

template <typename T>
T __shfl_down_sync(unsigned, T value, int offset) {
  return emu::exchange_down(value, offset);
}

inline unsigned __ballot_sync(unsigned, bool predicate) { return emu::ballot(predicate); }

inline int __popc(unsigned bits) { return __builtin_popcount(bits); }

template <typename T>
T __ldg(const T* p) {
  return *p;
}

template <typename T>
T min(T a, T b) {
  return b < a ? b : a;
}
