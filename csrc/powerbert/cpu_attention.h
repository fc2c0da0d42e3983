// Host (CPU) loops of the fused attention with significance: the row-wise work between its two GEMMs.
//
// No torch includes: the binding (attention_cpu.cpp) runs the GEMMs with ATen's BLAS and calls these
// loops on one block of score rows at a time. Like cpu_kernels.h, the loops are compiled for AVX2 and
// for the baseline and picked at load time, and written so that the compiler can vectorise them
// without reassociating floating-point sums (explicit eight-lane partial sums).
#pragma once

#include <algorithm>
#include <cfloat>

#include "common.h"
#include "cpu_kernels.h"

namespace powerbert {
namespace cpu {

// exp(x) for x <= 0 (Cephes' expf: range reduction by ln 2 in two parts, degree-6 polynomial; about
// 1 ulp on [-87.3, 0]). Arguments below -87.3, where exp(x) leaves the normal range, give exactly 0, as
// the masked keys' probabilities must be (subnormals are flushed). Branch-free, so a loop over it vectorises; the rounding uses the 1.5 * 2^23 trick instead of
// floor() (which the baseline x86-64 ISA cannot vectorise).
inline __attribute__((always_inline)) float exp_nonpositive(float x_in) {
  const float x = x_in < -87.33654f ? -87.33654f : x_in;
  const float round_magic = 12582912.f;  // 1.5 * 2^23: x + magic rounds x to an integer
  const float n = (x * 1.44269504088896341f + round_magic) - round_magic;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  // 2^n from the exponent bits (n >= -126 after the clamp).
  const float scale = float_from_bits(static_cast<u32>(static_cast<int>(n) + 127) << 23);
  return x_in < -87.33654f ? 0.f : p * scale;
}

// Softmax of `rows` rows of scores in place, and their significance votes.
//
// scores: (rows, N) float, row stride N, holding scale * q.k; bias: (N,) 0 for real keys and -FLT_MAX
// for padded ones (the convention of every backend: a row without any real key attends uniformly);
// row_real: (rows,) whether each query row votes; votes: (N,) accumulated with the probabilities of the
// voting rows, without each row's own position (`first_position` + row) when exclude_self.
//
// Numerics: max-subtracted exponentials summed in eight float lanes, then one multiply by the
// reciprocal of the sum (as PyTorch's CPU softmax); votes are float sums in row order.
inline __attribute__((always_inline)) void softmax_votes(float* __restrict__ scores, const float* __restrict__ bias,
                                                         const u8* row_real, i64 rows, i64 N, i64 first_position,
                                                         bool exclude_self, float* __restrict__ votes) {
  for (i64 r = 0; r < rows; ++r) {
    float* __restrict__ s = scores + r * N;
    float lanes[8];
    for (int j = 0; j < 8; ++j) lanes[j] = -FLT_MAX;
    i64 w = 0;
    for (; w + 8 <= N; w += 8) {
      for (int j = 0; j < 8; ++j) {
        const float x = s[w + j] + bias[w + j];
        s[w + j] = x;
        lanes[j] = x > lanes[j] ? x : lanes[j];
      }
    }
    for (; w < N; ++w) {
      const float x = s[w] + bias[w];
      s[w] = x;
      lanes[0] = x > lanes[0] ? x : lanes[0];
    }
    float row_max = lanes[0];
    for (int j = 1; j < 8; ++j) row_max = lanes[j] > row_max ? lanes[j] : row_max;

    for (int j = 0; j < 8; ++j) lanes[j] = 0.f;
    w = 0;
    for (; w + 8 <= N; w += 8) {
      for (int j = 0; j < 8; ++j) {
        const float e = exp_nonpositive(s[w + j] - row_max);
        s[w + j] = e;
        lanes[j] += e;
      }
    }
    for (; w < N; ++w) {
      const float e = exp_nonpositive(s[w] - row_max);
      s[w] = e;
      lanes[0] += e;
    }
    const float sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    const float inv = 1.f / sum;
    if (row_real[r]) {
      for (i64 x = 0; x < N; ++x) {
        const float p = s[x] * inv;
        s[x] = p;
        votes[x] += p;
      }
      if (exclude_self) votes[first_position + r] -= s[first_position + r];
    } else {
      for (i64 x = 0; x < N; ++x) s[x] *= inv;
    }
  }
}

PB_CPU_CLONES static void softmax_votes_rows(float* scores, const float* bias, const u8* row_real, i64 rows, i64 N,
                                             i64 first_position, bool exclude_self, float* votes) {
  softmax_votes(scores, bias, row_real, rows, N, first_position, exclude_self, votes);
}

}  // namespace cpu
}  // namespace powerbert
