// Host (CPU) loops of the fused attention with significance: the row-wise work between its two GEMMs.
//
// No torch includes: the binding (attention_cpu.cpp) runs the GEMMs with ATen's BLAS and calls these
// loops on one block of score rows at a time. Like cpu_kernels.h, the loops are compiled for AVX2 and
// for the baseline and picked at run time by the CPU's features.
#pragma once

#include <algorithm>
#include <cfloat>

#include "common.h"
#include "cpu_kernels.h"

namespace powerbert {
namespace cpu {

// Eight floats as one GCC vector: an AVX register in the AVX2 clone, two SSE registers in the baseline
// one. Written with vectors explicitly, since the loops below are reductions (max, sum) that the
// auto-vectoriser leaves scalar unless it may reassociate floating-point arithmetic.
// The baseline clone passes them in memory rather than in an AVX register, which GCC warns about; every
// function taking or returning one is inlined, so no call ever crosses that ABI.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));

#define PB_INLINE inline __attribute__((always_inline))

PB_INLINE v8f load8(const float* p) {
  v8f v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
PB_INLINE void store8(float* p, v8f v) { __builtin_memcpy(p, &v, sizeof v); }
PB_INLINE v8f splat8(float x) { return v8f{} + x; }

// Below this exp(x) leaves the normal floats; the result is flushed to exactly 0 there, as the masked
// keys' probabilities must be.
const float kExpLowest = -87.33654f;

// exp(x) for x <= 0, eight at a time: Cephes' expf (range reduction by ln 2 in two parts, degree-6
// polynomial; about 1 ulp on [-87.3, 0]). Branch-free; rounding to an integer by adding and
// subtracting 1.5 * 2^23 rather than floor() (which the baseline x86-64 ISA lacks).
PB_INLINE v8f exp8_nonpositive(v8f x_in) {
  const v8f lowest = splat8(kExpLowest);
  const v8f x = x_in < lowest ? lowest : x_in;
  const v8f magic = splat8(12582912.f);
  const v8f n = (x * 1.44269504088896341f + magic) - magic;
  const v8f r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  v8f p = splat8(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  // 2^n from the exponent bits (n >= -126 after the clamp).
  const v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
  const v8f result = p * (v8f)bits;  // a same-size vector cast reinterprets the bits
  return x_in < lowest ? splat8(0.f) : result;
}

// The same for one float (the ends of rows whose length is not a multiple of eight).
PB_INLINE float exp_nonpositive(float x) {
  v8f v = splat8(x);
  return exp8_nonpositive(v)[0];
}

PB_INLINE float max8(v8f v) {
  float m = v[0];
  for (int j = 1; j < 8; ++j) m = v[j] > m ? v[j] : m;
  return m;
}

PB_INLINE float sum8(v8f v) { return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7])); }

// Softmax of `rows` rows of scores in place, and their significance votes.
//
// scores: (rows, N) float, row stride N, holding scale * q.k; bias: (N,) 0 for real keys and -FLT_MAX
// for padded ones (the convention of every backend: a row without any real key attends uniformly);
// row_real: (rows,) whether each query row votes; votes: (N,) accumulated with the probabilities of the
// voting rows, without each row's own position (`first_position` + row) when exclude_self.
//
// Numerics: max-subtracted exponentials summed in eight float lanes (then a fixed tree), then one
// multiply by the reciprocal of the sum, as PyTorch's CPU softmax; votes are float sums in row order.
PB_INLINE void softmax_votes(float* __restrict__ scores, const float* __restrict__ bias, const u8* row_real, i64 rows,
                             i64 N, i64 first_position, bool exclude_self, float* __restrict__ votes) {
  const i64 body = N - N % 8;
  for (i64 r = 0; r < rows; ++r) {
    float* __restrict__ s = scores + r * N;
    v8f vmax = splat8(-FLT_MAX);
    for (i64 w = 0; w < body; w += 8) {
      const v8f x = load8(s + w) + load8(bias + w);
      store8(s + w, x);
      vmax = x > vmax ? x : vmax;
    }
    float row_max = max8(vmax);
    for (i64 w = body; w < N; ++w) {
      s[w] += bias[w];
      row_max = s[w] > row_max ? s[w] : row_max;
    }

    v8f vsum = splat8(0.f);
    const v8f vrow_max = splat8(row_max);
    for (i64 w = 0; w < body; w += 8) {
      const v8f e = exp8_nonpositive(load8(s + w) - vrow_max);
      store8(s + w, e);
      vsum += e;
    }
    float sum = sum8(vsum);
    for (i64 w = body; w < N; ++w) {
      s[w] = exp_nonpositive(s[w] - row_max);
      sum += s[w];
    }

    const float inv = 1.f / sum;
    const v8f vinv = splat8(inv);
    if (row_real[r]) {
      for (i64 w = 0; w < body; w += 8) {
        const v8f p = load8(s + w) * vinv;
        store8(s + w, p);
        store8(votes + w, load8(votes + w) + p);
      }
      for (i64 w = body; w < N; ++w) {
        s[w] *= inv;
        votes[w] += s[w];
      }
      if (exclude_self) votes[first_position + r] -= s[first_position + r];
    } else {
      for (i64 w = 0; w < body; w += 8) store8(s + w, load8(s + w) * vinv);
      for (i64 w = body; w < N; ++w) s[w] *= inv;
    }
  }
}

PB_CPU_VARIANTS(softmax_votes_rows, softmax_votes,
                (float* scores, const float* bias, const u8* row_real, i64 rows, i64 N, i64 first_position,
                 bool exclude_self, float* votes),
                (scores, bias, row_real, rows, N, first_position, exclude_self, votes))

}  // namespace cpu
}  // namespace powerbert
