// CUDA kernels of the PoWER-BERT extension, for every GPU from the Kepler K80 (sm_37) on.
//
// No torch includes: the torch binding (ops_cuda.cu) checks arguments, allocates outputs and calls
// the launchers of cuda_launch.cuh. The kernels keep to what sm_35 offers: float arithmetic
// only (16-bit inputs are widened from their bits), __ldg read-only loads, warp shuffles and
// ballots; no tensor cores, no fp16 arithmetic, no atomics of any kind. Every reduction runs in a
// fixed order, so results are bitwise reproducible on a given GPU.
//
// The launchers that need the CUDA runtime live in cuda_launch.cuh. Under NVRTC (the compile check for
// old architectures) only the kernels are compiled. The kernels and launch plans also compile as plain
// C++ against a small host emulation of CUDA (tests/test_ext_cuda_emulation.py runs them on the CPU).
#pragma once

#include "common.h"

namespace powerbert {
namespace cuda {

const int kWarp = 32;

// =============================================================================================
// Significance from a materialised probability tensor.
//
// significance[b, w] = sum_h sum_{q : mask[b, q_offset + q]} probs[b, h, q, w], without the term
// w == q_offset + q when exclude_self. probs may be a block of n_q query rows (b, h, q_offset + q),
// so a caller can walk the N x N probabilities block by block and add the results.
//
// A block of kWarp x kSigRows threads owns one batch row and a tile of kWarp * VEC columns: lanes
// cover the columns (one VEC-wide vector load per lane, so a warp reads 128-512 contiguous bytes of
// a probability row), the kSigRows warps take rows (h, q) in turn, and each thread keeps kSigUnroll
// independent loads in flight to hide memory latency. The warps' column sums are then added in a
// fixed order through shared memory. When tiles x batch alone would leave SMs idle, the rows are
// split over blockIdx.y; each split writes its own partial sums and a second kernel adds them in
// split order, so the result stays deterministic without atomics.
// =============================================================================================

const int kSigRows = 8;
const int kSigUnroll = 4;

template <typename T>
struct SignificanceParams {
  const typename T::storage* probs;  // (B, H, n_q, N); strides in elements, last dimension contiguous
  i64 stride_b, stride_h, stride_q;
  const u8* mask;  // (B, N) bool
  i64 mask_stride_b, mask_stride_n;
  float* out;  // (B, splits, N) contiguous; with one split this is the (B, N) result itself
  int H, n_q, N;
  int q_offset;
  int exclude_self;
  int tiles;           // column tiles per batch row: ceil(N / (kWarp * VEC))
  int rows_per_split;  // rows (h, q) per blockIdx.y
};

// VEC consecutive elements of a row, loaded with one instruction through the read-only cache, and
// their values as floats. `raw` stays in registers until all loads of an unrolled group are issued.
template <typename T, int VEC>
struct VecLoad;

template <>
struct VecLoad<F32, 1> {
  typedef float raw;
  static __device__ __forceinline__ raw load(const float* p) { return __ldg(p); }
  static __device__ __forceinline__ float get(const raw& r, int) { return r; }
};

template <>
struct VecLoad<F32, 4> {
  typedef float4 raw;
  static __device__ __forceinline__ raw load(const float* p) { return __ldg(reinterpret_cast<const float4*>(p)); }
  static __device__ __forceinline__ float get(const raw& r, int k) {
    return k == 0 ? r.x : (k == 1 ? r.y : (k == 2 ? r.z : r.w));
  }
};

template <typename T>
struct VecLoad<T, 1> {
  typedef u16 raw;
  static __device__ __forceinline__ raw load(const u16* p) { return __ldg(p); }
  static __device__ __forceinline__ float get(const raw& r, int) { return T::to_float(r); }
};

template <typename T>
struct VecLoad<T, 8> {
  typedef uint4 raw;
  static __device__ __forceinline__ raw load(const u16* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
  static __device__ __forceinline__ float get(const raw& r, int k) {
    // Little endian: element 2m is the low half of 32-bit word m.
    const u32 word = (k >> 1) == 0 ? r.x : ((k >> 1) == 1 ? r.y : ((k >> 1) == 2 ? r.z : r.w));
    return T::to_float(static_cast<u16>((k & 1) ? (word >> 16) : (word & 0xFFFFu)));
  }
};

// Elements per 16-byte vector: 4 floats or 8 16-bit values.
template <typename T>
struct Wide {
  static const int value = 16 / sizeof(typename T::storage);
};

template <typename T, int VEC>
__global__ void __launch_bounds__(kWarp * kSigRows) significance_kernel(SignificanceParams<T> p) {
  typedef VecLoad<T, VEC> Load;
  // Column c of the tile (c = lane * VEC + k) is stored at [k * kWarp + lane]: consecutive lanes hit
  // consecutive banks when they store, whatever VEC is.
  __shared__ float partial[kSigRows][kWarp * VEC];

  const int tile = blockIdx.x % p.tiles;
  const i64 b = blockIdx.x / p.tiles;
  const int lane = threadIdx.x;
  const int w_first = (tile * kWarp + lane) * VEC;  // first column of this thread
  const int rows = p.H * p.n_q;
  const int r_begin = blockIdx.y * p.rows_per_split;
  const int r_end = min(rows, r_begin + p.rows_per_split);
  const typename T::storage* probs_b = p.probs + b * p.stride_b;
  const u8* mask_b = p.mask + b * p.mask_stride_b;

  float acc[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) acc[k] = 0.f;

  // With VEC > 1 the launcher guarantees N % VEC == 0, so a vector is wholly inside or outside.
  if (w_first < p.N) {
    for (int r0 = r_begin + threadIdx.y; r0 < r_end; r0 += kSigRows * kSigUnroll) {
      typename Load::raw v[kSigUnroll];
      int self[kSigUnroll];  // this row's own column (its position), or -1 when the row does not vote
#pragma unroll
      for (int u = 0; u < kSigUnroll; ++u) {
        const int r = r0 + u * kSigRows;
        self[u] = -1;
        if (r < r_end) {
          const int h = r / p.n_q;
          const int q = r - h * p.n_q;
          const int position = p.q_offset + q;
          if (mask_b[position * p.mask_stride_n]) {
            self[u] = position;
            v[u] = Load::load(probs_b + h * p.stride_h + q * p.stride_q + w_first);
          }
        }
      }
#pragma unroll
      for (int u = 0; u < kSigUnroll; ++u) {
        if (self[u] < 0) continue;
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          if (!(p.exclude_self && w_first + k == self[u])) acc[k] += Load::get(v[u], k);
        }
      }
    }
  }

#pragma unroll
  for (int k = 0; k < VEC; ++k) partial[threadIdx.y][k * kWarp + lane] = acc[k];
  __syncthreads();
  for (int c = threadIdx.y * kWarp + lane; c < kWarp * VEC; c += kWarp * kSigRows) {
    const int w = tile * kWarp * VEC + c;
    if (w < p.N) {
      const int slot = (c % VEC) * kWarp + c / VEC;
      float s = 0.f;
#pragma unroll
      for (int y = 0; y < kSigRows; ++y) s += partial[y][slot];
      p.out[(b * gridDim.y + blockIdx.y) * p.N + w] = s;
    }
  }
}

// out[b, w] = sum over s of partial[b, s, w], in split order. partial is (B, splits, N).
__global__ void sum_splits_kernel(const float* __restrict__ partial, int splits, int N, i64 total,
                                  float* __restrict__ out) {
  for (i64 idx = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<i64>(gridDim.x) * blockDim.x) {
    const i64 b = idx / N;
    const i64 w = idx - b * N;
    const float* src = partial + b * splits * N + w;
    float s = 0.f;
    for (int sp = 0; sp < splits; ++sp) s += __ldg(src + static_cast<i64>(sp) * N);
    out[idx] = s;
  }
}

// =============================================================================================
// Select-and-gather.
//
// select_kernel: one block per batch row. Position i is kept iff fewer than `keep` positions have a
// larger selection key (see common.h), so no sort is needed. Output order is the kept real tokens by
// position, then the kept padding by position: every real token beats every padding position, so
// min(keep, real tokens) real ones are kept, and a kept position's slot is the number of kept real
// tokens before it, or that total plus the kept padding before it. Ranks are counted against tiles
// of keys staged in shared memory (keys are recomputed per tile from significance and mask, which is
// cheaper than the comparisons they feed); slots come from warp ballots and per-warp counts.
// gather_kernel: one warp per kept row copies it with the widest aligned loads possible.
// =============================================================================================

const int kSelectThreads = 256;

struct SelectParams {
  const float* significance;  // (B, N) float32
  i64 sig_stride_b, sig_stride_n;
  const u8* mask;  // (B, N) bool
  i64 mask_stride_b, mask_stride_n;
  i64* indices;  // (B, keep) contiguous
  u8* mask_out;  // (B, keep) contiguous bool
  int N;
  int keep;
};

__device__ __forceinline__ u64 key_at(const SelectParams& p, const float* sig_b, const u8* mask_b, int cls, int j) {
  return selection_key(j == cls, mask_b[j * p.mask_stride_n] != 0, __ldg(sig_b + j * p.sig_stride_n), j);
}

__global__ void __launch_bounds__(kSelectThreads) select_kernel(SelectParams p) {
  const int warps = kSelectThreads / kWarp;
  __shared__ u64 tile_keys[kSelectThreads];
  __shared__ int warp_real[kSelectThreads / kWarp];
  __shared__ int warp_pad[kSelectThreads / kWarp];
  __shared__ int cls_shared, real_shared;

  const i64 b = blockIdx.x;
  const int tid = threadIdx.x;
  const int lane = tid % kWarp;
  const int warp = tid / kWarp;
  const float* sig_b = p.significance + b * p.sig_stride_b;
  const u8* mask_b = p.mask + b * p.mask_stride_b;

  // CLS = the first real position (0 for a row without any), and the number of real tokens: block-wide
  // minimum and sum, warp shuffles then the warps' results in order.
  int first = p.N;
  int real = 0;
  for (int i = tid; i < p.N; i += kSelectThreads) {
    if (mask_b[i * p.mask_stride_n]) {
      first = min(first, i);
      ++real;
    }
  }
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    first = min(first, __shfl_down_sync(0xFFFFFFFFu, first, offset));
    real += __shfl_down_sync(0xFFFFFFFFu, real, offset);
  }
  if (lane == 0) {
    warp_real[warp] = first;
    warp_pad[warp] = real;
  }
  __syncthreads();
  if (tid == 0) {
    int m = p.N, r = 0;
    for (int w = 0; w < warps; ++w) {
      m = min(m, warp_real[w]);
      r += warp_pad[w];
    }
    cls_shared = m == p.N ? 0 : m;
    real_shared = r;
  }
  __syncthreads();
  const int cls = cls_shared;
  const int real_kept_total = min(p.keep, real_shared);

  int real_before = 0;  // kept real tokens before this chunk
  int pad_before = 0;   // kept padding before this chunk
  for (int base = 0; base < p.N; base += kSelectThreads) {
    const int i = base + tid;
    const bool is_real = i < p.N && mask_b[i * p.mask_stride_n] != 0;
    const u64 key = i < p.N ? key_at(p, sig_b, mask_b, cls, i) : 0ull;
    int rank = 0;
    for (int tile = 0; tile < p.N; tile += kSelectThreads) {
      __syncthreads();  // the previous tile (and the per-warp counts) fully read
      const int j = tile + tid;
      // Zero never beats a key, so the tail of the last tile needs no special case.
      tile_keys[tid] = j < p.N ? key_at(p, sig_b, mask_b, cls, j) : 0ull;
      __syncthreads();
      const int count = min(kSelectThreads, p.N - tile);
      for (int t = 0; t < count; ++t) rank += tile_keys[t] > key ? 1 : 0;
    }
    const bool kept = i < p.N && rank < p.keep;
    const unsigned ballot_real = __ballot_sync(0xFFFFFFFFu, kept && is_real);
    const unsigned ballot_pad = __ballot_sync(0xFFFFFFFFu, kept && !is_real);
    if (lane == 0) {
      warp_real[warp] = __popc(ballot_real);
      warp_pad[warp] = __popc(ballot_pad);
    }
    __syncthreads();
    const unsigned lanes_before = (1u << lane) - 1u;
    int slot_real = real_before + __popc(ballot_real & lanes_before);
    int slot_pad = real_kept_total + pad_before + __popc(ballot_pad & lanes_before);
    for (int w = 0; w < warps; ++w) {
      if (w < warp) {
        slot_real += warp_real[w];
        slot_pad += warp_pad[w];
      }
      real_before += warp_real[w];
      pad_before += warp_pad[w];
    }
    const int slot = is_real ? slot_real : slot_pad;
    if (kept && slot < p.keep) {  // ranks are a permutation, so slot < keep always; never write past it
      p.indices[b * p.keep + slot] = i;
      p.mask_out[b * p.keep + slot] = is_real ? 1 : 0;
    }
  }
}

const int kGatherThreads = 128;

template <typename U>
struct GatherParams {
  const U* hidden;  // (B, N, row_units); strides in units of U
  i64 stride_b, stride_n;
  const i64* indices;  // (B, keep) contiguous
  U* out;              // (B, keep, row_units) contiguous
  i64 rows;            // B * keep
  i64 row_units;
  int keep;
};

template <typename U>
__global__ void __launch_bounds__(kGatherThreads) gather_kernel(GatherParams<U> p) {
  const int warps_per_block = kGatherThreads / kWarp;
  const int lane = threadIdx.x % kWarp;
  const i64 first = static_cast<i64>(blockIdx.x) * warps_per_block + threadIdx.x / kWarp;
  const i64 step = static_cast<i64>(gridDim.x) * warps_per_block;
  for (i64 r = first; r < p.rows; r += step) {
    const i64 b = r / p.keep;
    const U* src = p.hidden + b * p.stride_b + __ldg(p.indices + r) * p.stride_n;
    U* dst = p.out + r * p.row_units;
    for (i64 c = lane; c < p.row_units; c += kWarp) dst[c] = __ldg(src + c);
  }
}

#if !defined(__CUDACC_RTC__)
// =============================================================================================
// Launch plans: plain host C++ (no CUDA runtime), shared by the launchers in cuda_launch.cuh and by
// the CPU emulation test that runs these kernels without a GPU.
// =============================================================================================

inline bool aligned_to(const void* ptr, i64 bytes) { return reinterpret_cast<u64>(ptr) % static_cast<u64>(bytes) == 0; }

inline i64 ceil_div(i64 a, i64 b) { return (a + b - 1) / b; }

struct SignificancePlan {
  int vec;               // elements per load: 1, or Wide<T>::value when rows and base are 16-byte aligned
  int tiles;             // column tiles per batch row
  int splits;            // row splits (blockIdx.y); > 1 adds the sum_splits_kernel pass
  int rows_per_split;
  i64 grid_x;            // tiles * B
  i64 workspace_floats;  // (B, splits, N) partial sums when splits > 1, else 0
  i64 sum_grid;          // blocks of 256 threads for sum_splits_kernel
};

// Chooses the vector width and the row splits of a significance launch. p.probs, the strides and the
// sizes must be set. num_sms is the GPU's multiprocessor count.
template <typename T>
SignificancePlan plan_significance(const SignificanceParams<T>& p, i64 B, int num_sms) {
  const int wide = Wide<T>::value;
  const bool vectorisable = p.N % wide == 0 && p.stride_b % wide == 0 && p.stride_h % wide == 0 &&
                            p.stride_q % wide == 0 && aligned_to(p.probs, 16);
  SignificancePlan plan;
  plan.vec = vectorisable ? wide : 1;
  plan.tiles = static_cast<int>(ceil_div(p.N, kWarp * plan.vec));
  plan.grid_x = static_cast<i64>(plan.tiles) * B;
  const i64 rows = static_cast<i64>(p.H) * p.n_q;
  // Enough 256-thread blocks to fill every SM (8 resident each), but splits of at least 128 rows so
  // the partial sums stay a small fraction of the traffic.
  const i64 wanted = static_cast<i64>(num_sms) * 8;
  i64 splits = 1;
  if (plan.grid_x < wanted) {
    const i64 most = rows / (kSigRows * kSigUnroll * 4);
    splits = ceil_div(wanted, plan.grid_x);
    splits = splits < most ? splits : most;
    splits = splits < 1 ? 1 : (splits > 65535 ? 65535 : splits);
  }
  plan.rows_per_split = static_cast<int>(ceil_div(rows, splits));
  plan.splits = static_cast<int>(ceil_div(rows, plan.rows_per_split));
  plan.workspace_floats = plan.splits > 1 ? B * plan.splits * p.N : 0;
  const i64 sum_blocks = ceil_div(B * p.N, 256);
  plan.sum_grid = sum_blocks < 65535 ? sum_blocks : 65535;
  return plan;
}

// The kernel parameters of a planned launch: where the first kernel writes (the workspace when rows
// are split, else the (B, N) output).
template <typename T>
SignificanceParams<T> significance_params(SignificanceParams<T> p, const SignificancePlan& plan, float* workspace,
                                          float* out) {
  p.tiles = plan.tiles;
  p.rows_per_split = plan.rows_per_split;
  p.out = plan.splits > 1 ? workspace : out;
  return p;
}

struct GatherPlan {
  int unit;     // bytes per copy: the widest of 16, 8, 4, 2, 1 dividing the row, both strides and both bases
  i64 grid_x;   // blocks of kGatherThreads
};

inline GatherPlan plan_gather(const void* hidden, i64 stride_b, i64 stride_n, i64 row_bytes, const void* out, i64 B,
                              int keep, int num_sms) {
  GatherPlan plan;
  plan.unit = 1;
  const int units[] = {16, 8, 4, 2, 1};
  for (int u : units) {
    if (row_bytes % u == 0 && stride_b % u == 0 && stride_n % u == 0 && aligned_to(hidden, u) && aligned_to(out, u)) {
      plan.unit = u;
      break;
    }
  }
  const i64 wanted = ceil_div(B * keep, kGatherThreads / kWarp);
  const i64 most = static_cast<i64>(num_sms) * 64;
  plan.grid_x = wanted < most ? wanted : most;
  return plan;
}

// hidden: (B, N, row_bytes) bytes with byte strides stride_b, stride_n; out: (B, keep, row_bytes).
template <typename U>
GatherParams<U> gather_params(const void* hidden, i64 stride_b, i64 stride_n, const i64* indices, i64 B, int keep,
                              i64 row_bytes, void* out) {
  GatherParams<U> g;
  g.hidden = static_cast<const U*>(hidden);
  g.stride_b = stride_b / static_cast<i64>(sizeof(U));
  g.stride_n = stride_n / static_cast<i64>(sizeof(U));
  g.indices = indices;
  g.out = static_cast<U*>(out);
  g.rows = B * keep;
  g.row_units = row_bytes / static_cast<i64>(sizeof(U));
  g.keep = keep;
  return g;
}
#endif  // !defined(__CUDACC_RTC__)

}  // namespace cuda
}  // namespace powerbert
