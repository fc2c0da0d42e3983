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

// acc[w] += row[w] for w in [begin, end). Restrict pointers and independent lanes let the compiler
// vectorise this loop (it adds different columns, so no reassociation is needed).
template <typename T>
inline void add_row(float* __restrict__ acc, const typename T::storage* __restrict__ row, i64 begin, i64 end) {
  for (i64 w = begin; w < end; ++w) acc[w] += T::to_float(row[w]);
}

// Significance of columns [w0, w1) of one batch row from a block of query rows.
//
// out[w] = sum_h sum_{q : mask[q_offset + q]} probs[h, q, w], leaving out w == q_offset + q when
// exclude_self. Shapes: probs (H, n_q, N) with strides (stride_h, stride_q, 1); mask (N,) with
// stride mask_stride; out (N,). head_acc is scratch of at least w1 - w0 floats.
//
// Numerics: each head's column sums are accumulated separately (at most n_q terms) and then added
// to the total (H terms), so the rounding error grows with n_q + H rather than H * n_q.
template <typename T>
void significance_columns(const typename T::storage* probs, i64 stride_h, i64 stride_q, i64 H, i64 n_q,
                          const u8* mask, i64 mask_stride, i64 q_offset, bool exclude_self, i64 w0, i64 w1,
                          float* __restrict__ head_acc, float* __restrict__ out) {
  const i64 width = w1 - w0;
  float* __restrict__ total = out + w0;
  std::fill(total, total + width, 0.f);
  for (i64 h = 0; h < H; ++h) {
    std::fill(head_acc, head_acc + width, 0.f);
    for (i64 q = 0; q < n_q; ++q) {
      const i64 position = q_offset + q;
      if (!mask[position * mask_stride]) continue;  // padded query rows do not vote
      const typename T::storage* row = probs + h * stride_h + q * stride_q + w0;
      const i64 self = position - w0;
      if (exclude_self && self >= 0 && self < width) {
        add_row<T>(head_acc, row, 0, self);
        add_row<T>(head_acc, row, self + 1, width);
      } else {
        add_row<T>(head_acc, row, 0, width);
      }
    }
    for (i64 w = 0; w < width; ++w) total[w] += head_acc[w];
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
