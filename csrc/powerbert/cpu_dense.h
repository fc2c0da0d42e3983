// Host (CPU) loops of the fused dense layer: the epilogues applied to a block of GEMM output rows while
// it is still in cache (bias, exact GELU, residual, LayerNorm).
//
// No torch includes: the binding (dense_cpu.cpp) runs the GEMMs and calls these loops. Like
// cpu_attention.h, the loops are compiled for AVX2 and for the baseline and picked at run time.
#pragma once

#include <cmath>

#include "common.h"
#include "cpu_attention.h"

namespace powerbert {
namespace cpu {

// erf(x), eight at a time: Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, the formula of
// ATen's vectorised CPU erf), with exp from exp8_nonpositive (-x^2 <= 0).
PB_INLINE v8f erf8(v8f x) {
  const v8f ax = x < 0.f ? -x : x;
  const v8f t = 1.f / (1.f + 0.3275911f * ax);
  v8f poly = splat8(1.061405429f);
  poly = poly * t - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  const v8f y = 1.f - poly * t * exp8_nonpositive(-(ax * ax));
  return x < 0.f ? -y : y;
}

// GELU as BERT defines it (the exact one, not the tanh approximation): 0.5 x (1 + erf(x / sqrt 2)).
PB_INLINE v8f gelu8(v8f x) { return 0.5f * x * (1.f + erf8(x * 0.70710678118654752f)); }

PB_INLINE float gelu1(float x) {
  v8f v = splat8(x);
  return gelu8(v)[0];
}

// y[r, :cols] = act(y[r, :cols] + bias) (+ residual[r, :cols]) for `rows` rows of stride ldy (ldr for
// the residual); bias and residual may be null, act is GELU when `gelu`.
PB_INLINE void bias_act(float* __restrict__ y, i64 ldy, const float* __restrict__ bias, const float* residual, i64 ldr,
                        i64 rows, i64 cols, bool gelu) {
  const i64 body = cols - cols % 8;
  for (i64 r = 0; r < rows; ++r) {
    float* __restrict__ row = y + r * ldy;
    const float* __restrict__ res = residual != nullptr ? residual + r * ldr : nullptr;
    for (i64 c = 0; c < body; c += 8) {
      v8f v = load8(row + c);
      if (bias != nullptr) v += load8(bias + c);
      if (gelu) v = gelu8(v);
      if (res != nullptr) v += load8(res + c);
      store8(row + c, v);
    }
    for (i64 c = body; c < cols; ++c) {
      float v = row[c] + (bias != nullptr ? bias[c] : 0.f);
      if (gelu) v = gelu1(v);
      row[c] = v + (res != nullptr ? res[c] : 0.f);
    }
  }
}

PB_CPU_VARIANTS(bias_act_rows, bias_act,
                (float* y, i64 ldy, const float* bias, const float* residual, i64 ldr, i64 rows, i64 cols, bool gelu),
                (y, ldy, bias, residual, ldr, rows, cols, gelu))

// y[r] = LayerNorm(y[r] + residual[r]) * weight + beta over `cols` columns, for `rows` rows (residual
// may be null). Numerics as PyTorch's CPU layer norm: fp32 mean, then the mean of squared deviations
// (two passes over a row that stays in L1), rstd = 1 / sqrt(var + eps).
PB_INLINE void residual_layer_norm(float* __restrict__ y, i64 ldy, const float* residual, i64 ldr,
                                   const float* __restrict__ weight, const float* __restrict__ beta, i64 rows, i64 cols,
                                   float eps) {
  const i64 body = cols - cols % 8;
  const float inv_cols = 1.f / static_cast<float>(cols);
  for (i64 r = 0; r < rows; ++r) {
    float* __restrict__ row = y + r * ldy;
    if (residual != nullptr) {
      const float* __restrict__ res = residual + r * ldr;
      for (i64 c = 0; c < body; c += 8) store8(row + c, load8(row + c) + load8(res + c));
      for (i64 c = body; c < cols; ++c) row[c] += res[c];
    }
    v8f vsum = splat8(0.f);
    for (i64 c = 0; c < body; c += 8) vsum += load8(row + c);
    float sum = sum8(vsum);
    for (i64 c = body; c < cols; ++c) sum += row[c];
    const float mean = sum * inv_cols;
    const v8f vmean = splat8(mean);
    v8f vsq = splat8(0.f);
    for (i64 c = 0; c < body; c += 8) {
      const v8f dev = load8(row + c) - vmean;
      vsq += dev * dev;
    }
    float sq = sum8(vsq);
    for (i64 c = body; c < cols; ++c) sq += (row[c] - mean) * (row[c] - mean);
    const float rstd = 1.f / std::sqrt(sq * inv_cols + eps);
    const v8f vrstd = splat8(rstd);
    for (i64 c = 0; c < body; c += 8) {
      store8(row + c, (load8(row + c) - vmean) * vrstd * load8(weight + c) + load8(beta + c));
    }
    for (i64 c = body; c < cols; ++c) row[c] = (row[c] - mean) * rstd * weight[c] + beta[c];
  }
}

PB_CPU_VARIANTS(residual_layer_norm_rows, residual_layer_norm,
                (float* y, i64 ldy, const float* residual, i64 ldr, const float* weight, const float* beta, i64 rows,
                 i64 cols, float eps),
                (y, ldy, residual, ldr, weight, beta, rows, cols, eps))

}  // namespace cpu
}  // namespace powerbert
