// Host (CPU) loops of the PoWER-BERT extension: the work of one task, without threading.
//
// No torch includes: the torch binding (ops.cpp) checks the arguments, splits the work into tasks
// and runs them with at::parallel_for. Every function here writes only its own outputs, so tasks
// never share memory and the results do not depend on the number of threads.
#pragma once

#include <algorithm>
#include <cstring>
#include <functional>

#include "common.h"

namespace powerbert {
namespace cpu {

// ---------------------------------------------------------------------------------------------
// Significance (column sums) on the CPU.
//
// Like an axpy-style matrix-vector product: voting rows stream past in order, eight at a time, and
// are added into one accumulator row that stays in L1, so each probability element costs one load
// and one add and the accumulators are read and written once per eight rows. The loops are compiled
// twice, for AVX2 (with F16C and FMA) and for the baseline, and the variant is picked at run time by
// the CPU's features (PB_CPU_VARIANTS), so the library stays portable while a modern CPU gets 8-wide
// vectors. Restrict pointers and independent columns let the compiler vectorise (no reassociation
// across rows is needed: the order of additions is written out).
// ---------------------------------------------------------------------------------------------

// Whether this CPU runs the AVX2 variants: AVX2, FMA and F16C, checked once. By feature, not by model:
// GCC's target_clones("arch=haswell") resolves by CPU model, so an AMD CPU with AVX2 got the baseline.
#if defined(__GNUC__) && defined(__x86_64__)
#define PB_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
inline bool cpu_has_avx2() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }();
  return yes;
}
#else
#define PB_TARGET_AVX2
inline bool cpu_has_avx2() { return false; }
#endif

// Defines `static void name params` running `body args` compiled for AVX2 where the CPU has it, else
// for the baseline (body is an always_inline function, compiled into each variant).
#define PB_CPU_VARIANTS(name, body, params, args)              \
  PB_TARGET_AVX2 static void name##_avx2 params { body args; } \
  static void name##_baseline params { body args; }            \
  __attribute__((unused)) static void name params {           \
    if (cpu_has_avx2()) {                                      \
      name##_avx2 args;                                        \
    } else {                                                   \
      name##_baseline args;                                    \
    }                                                          \
  }

// acc[w] += sum of rows r[0..ROWS)[w] for w < width, ROWS in {1, 4, 8}, added as a balanced tree.
template <typename T, int ROWS>
struct AddRows;

template <typename T>
struct AddRows<T, 8> {
  static inline __attribute__((always_inline)) void run(float* __restrict__ acc, const typename T::storage* const* r,
                                                        i64 width) {
    typedef const typename T::storage* __restrict__ Row;
    Row r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3], r4 = r[4], r5 = r[5], r6 = r[6], r7 = r[7];
    for (i64 w = 0; w < width; ++w) {
      acc[w] += ((T::to_float(r0[w]) + T::to_float(r1[w])) + (T::to_float(r2[w]) + T::to_float(r3[w]))) +
                ((T::to_float(r4[w]) + T::to_float(r5[w])) + (T::to_float(r6[w]) + T::to_float(r7[w])));
    }
  }
};

template <typename T>
struct AddRows<T, 4> {
  static inline __attribute__((always_inline)) void run(float* __restrict__ acc, const typename T::storage* const* r,
                                                        i64 width) {
    typedef const typename T::storage* __restrict__ Row;
    Row r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
    for (i64 w = 0; w < width; ++w) {
      acc[w] += (T::to_float(r0[w]) + T::to_float(r1[w])) + (T::to_float(r2[w]) + T::to_float(r3[w]));
    }
  }
};

template <typename T>
struct AddRows<T, 1> {
  static inline __attribute__((always_inline)) void run(float* __restrict__ acc, const typename T::storage* const* r,
                                                        i64 width) {
    const typename T::storage* __restrict__ r0 = r[0];
    for (i64 w = 0; w < width; ++w) acc[w] += T::to_float(r0[w]);
  }
};

template <typename T>
inline __attribute__((always_inline)) void prefetch_rows(const typename T::storage* const* rows, int count, i64 width) {
  const i64 bytes = width * static_cast<i64>(sizeof(typename T::storage));
  for (int k = 0; k < count; ++k) {
    const char* row = reinterpret_cast<const char*>(rows[k]);
    for (i64 offset = 0; offset < bytes; offset += 64) __builtin_prefetch(row + offset);
  }
}

// Rows summed into a block accumulator before it is added to the total: long enough that the extra
// pass over the accumulators is cheap (one per 64 rows), short enough that rounding errors grow with
// the number of blocks rather than the number of rows.
const i64 kRowBlock = 64;

// total[0:width) = column sums of `count` rows: in blocks of kRowBlock rows, each block's rows eight
// at a time into block_acc, then added to total.
template <typename T>
inline __attribute__((always_inline)) void chunk_sums(float* total, float* block_acc, const typename T::storage** rows,
                                                      i64 count, i64 width, bool prefetch) {
  std::fill(total, total + width, 0.f);
  prefetch = prefetch && width * static_cast<i64>(sizeof(typename T::storage)) < 1024;
  for (i64 base = 0; base < count; base += kRowBlock) {
    const i64 stop = std::min(count, base + kRowBlock);
    float* acc = base == 0 ? total : block_acc;
    if (base > 0) std::fill(acc, acc + width, 0.f);
    i64 v = base;
    for (; v + 8 <= stop; v += 8) {
      // Short rows streamed from DRAM are picked up too late by the hardware prefetchers: fetch the
      // group after next (measured: 1.2-1.7x faster at 128 columns). From cache, or with rows of 1 KiB
      // and more, it only costs instructions (10% slower), so the caller decides.
      if (prefetch && v + 24 <= count) prefetch_rows<T>(rows + v + 16, 8, width);
      AddRows<T, 8>::run(acc, rows + v, width);
    }
    for (; v + 4 <= stop; v += 4) AddRows<T, 4>::run(acc, rows + v, width);
    for (; v < stop; ++v) AddRows<T, 1>::run(acc, rows + v, width);
    if (base > 0) {
      for (i64 w = 0; w < width; ++w) total[w] += block_acc[w];
    }
  }
}

PB_CPU_VARIANTS(chunk_sums_f32, chunk_sums<F32>,
                (float* total, float* block_acc, const float** rows, i64 count, i64 width, bool prefetch),
                (total, block_acc, rows, count, width, prefetch))
PB_CPU_VARIANTS(chunk_sums_f16, chunk_sums<F16>,
                (float* total, float* block_acc, const u16** rows, i64 count, i64 width, bool prefetch),
                (total, block_acc, rows, count, width, prefetch))
PB_CPU_VARIANTS(chunk_sums_bf16, chunk_sums<BF16>,
                (float* total, float* block_acc, const u16** rows, i64 count, i64 width, bool prefetch),
                (total, block_acc, rows, count, width, prefetch))

inline void dispatch_chunk_sums(F32, float* total, float* block_acc, const float** rows, i64 count, i64 width,
                                bool prefetch) {
  chunk_sums_f32(total, block_acc, rows, count, width, prefetch);
}
inline void dispatch_chunk_sums(F16, float* total, float* block_acc, const u16** rows, i64 count, i64 width,
                                bool prefetch) {
  chunk_sums_f16(total, block_acc, rows, count, width, prefetch);
}
inline void dispatch_chunk_sums(BF16, float* total, float* block_acc, const u16** rows, i64 count, i64 width,
                                bool prefetch) {
  chunk_sums_bf16(total, block_acc, rows, count, width, prefetch);
}

// Significance of columns [w0, w1) of one batch row from a block of query rows.
//
// out[w] = sum_h sum_{q : mask[q_offset + q]} probs[h, q, w], without the terms w == q_offset + q when
// exclude_self. Shapes: probs (H, n_q, N) with strides (stride_h, stride_q, 1); mask (N,) with
// stride mask_stride; out (N,). Scratch: block_acc of at least w1 - w0 floats, rows of at least
// H * n_q entries. prefetch: software-prefetch short rows (for probabilities not in cache).
//
// Numerics: float accumulation over the voting rows in (head, row) order, eight at a time as a
// balanced tree, in blocks of 64 rows added to the total, so rounding errors grow with about
// 8 + H * n_q / 64 terms. exclude_self then subtracts each column's diagonal terms, summed over heads,
// as the reference does (one subtraction per column instead of a branch in the vector loop). Per
// column the order of operations does not depend on how columns are split into chunks, so results do
// not depend on the number of threads.
template <typename T>
void significance_columns(const typename T::storage* probs, i64 stride_h, i64 stride_q, i64 H, i64 n_q,
                          const u8* mask, i64 mask_stride, i64 q_offset, bool exclude_self, i64 w0, i64 w1,
                          float* block_acc, const typename T::storage** rows, float* out, bool prefetch) {
  i64 count = 0;
  for (i64 h = 0; h < H; ++h) {
    for (i64 q = 0; q < n_q; ++q) {
      if (mask[(q_offset + q) * mask_stride]) rows[count++] = probs + h * stride_h + q * stride_q + w0;
    }
  }
  dispatch_chunk_sums(T{}, out + w0, block_acc, rows, count, w1 - w0, prefetch);
  if (!exclude_self) return;
  // The voting rows whose own position lies in this chunk: q in [w0 - q_offset, w1 - q_offset).
  const i64 q_begin = std::max<i64>(0, w0 - q_offset), q_end = std::min<i64>(n_q, w1 - q_offset);
  for (i64 q = q_begin; q < q_end; ++q) {
    const i64 position = q_offset + q;
    if (!mask[position * mask_stride]) continue;
    float diagonal = 0.f;
    for (i64 h = 0; h < H; ++h) diagonal += T::to_float(probs[h * stride_h + q * stride_q + position]);
    out[position] -= diagonal;
  }
}

// Selection of one row: writes the `keep` kept positions and their mask values.
//
// Output order: the kept real tokens by position, then the kept padding by position (so slot 0 holds
// the CLS vector and every output row is right-padded). Shapes: significance (N,) and mask (N,) with
// the given strides; keys and scratch hold N entries each; indices and mask_out hold keep entries.
// The keep-th largest key is found with nth_element (linear on average, no full sort); because keys
// are distinct, exactly `keep` keys are >= it, and two scans in position order emit them in order.
inline void select_row(const float* significance, i64 sig_stride, const u8* mask, i64 mask_stride, i64 N, i64 keep,
                       u64* keys, u64* scratch, i64* indices, bool* mask_out) {
  i64 cls = 0;
  for (i64 i = 0; i < N; ++i) {
    if (mask[i * mask_stride]) {
      cls = i;
      break;
    }
  }
  for (i64 i = 0; i < N; ++i) {
    keys[i] = selection_key(i == cls, mask[i * mask_stride] != 0, significance[i * sig_stride], i);
  }
  u64 threshold = 0;
  if (keep < N) {
    std::copy(keys, keys + N, scratch);
    std::nth_element(scratch, scratch + (keep - 1), scratch + N, std::greater<u64>());
    threshold = scratch[keep - 1];
  }
  i64 slot = 0;
  for (int real = 1; real >= 0; --real) {
    for (i64 i = 0; i < N && slot < keep; ++i) {
      const bool is_real = mask[i * mask_stride] != 0;
      if (is_real == (real != 0) && keys[i] >= threshold) {
        indices[slot] = i;
        mask_out[slot] = is_real;
        ++slot;
      }
    }
  }
}

// Copies output rows [begin, end) of the flattened (B * keep) kept rows: row r takes hidden row
// indices[r] of batch row r / keep. Strides are in bytes; each row is row_bytes contiguous bytes.
inline void gather_rows(const char* hidden, i64 stride_b, i64 stride_n, const i64* indices, i64 keep, i64 row_bytes,
                        char* out, i64 begin, i64 end) {
  for (i64 r = begin; r < end; ++r) {
    const char* src = hidden + (r / keep) * stride_b + indices[r] * stride_n;
    std::memcpy(out + r * row_bytes, src, static_cast<size_t>(row_bytes));
  }
}

}  // namespace cpu
}  // namespace powerbert
