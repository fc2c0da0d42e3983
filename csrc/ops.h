// Argument checks and dtype dispatch shared by the CPU (ops.cpp) and CUDA (ops_cuda.cu) bindings.
#pragma once

#include <ATen/core/Tensor.h>

#include "powerbert/common.h"

namespace powerbert {

struct SignificanceShape {
  int64_t B, H, n_q, N;
};

// TORCH_CHECKs every argument of powerbert::significance_from_probs (shape, dtype, device,
// contiguity of the last dimension, range of the query block) and returns the sizes.
SignificanceShape check_significance_args(const at::Tensor& probs, const at::Tensor& mask, int64_t q_offset);

// TORCH_CHECKs every argument of powerbert::select_gather_ext, including 1 <= keep <= N.
void check_select_gather_args(const at::Tensor& hidden, const at::Tensor& significance, const at::Tensor& mask,
                              int64_t keep);

// TORCH_CHECKs every argument of powerbert::attention_significance_cpu (shapes, dtypes, devices, last
// dimensions contiguous, a bool (B, N) mask, a positive scale).
void check_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                          double scale);

// The stride of a dimension, or 0 for a dimension of size 1 (whose stride is never used and may be
// anything), so that alignment decisions only look at strides that matter.
inline int64_t used_stride(const at::Tensor& t, int64_t dim) { return t.size(dim) == 1 ? 0 : t.stride(dim); }

// Calls f(F32{}), f(F16{}) or f(BF16{}) for a float32, float16 or bfloat16 tensor.
template <typename F>
void dispatch_float(at::ScalarType type, const char* op, F&& f) {
  switch (type) {
    case at::kFloat: f(F32{}); break;
    case at::kHalf: f(F16{}); break;
    case at::kBFloat16: f(BF16{}); break;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", type, " (float32, float16 or bfloat16 expected)");
  }
}

}  // namespace powerbert
