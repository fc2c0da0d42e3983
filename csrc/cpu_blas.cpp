// The BLAS GEMM of the extension's CPU kernels (see powerbert/cpu_blas.h).
#include "powerbert/cpu_blas.h"

#include <ATen/ops/addmm.h>
#include <ATen/ops/from_blob.h>

#include <algorithm>
#include <climits>

namespace powerbert {

void gemm_rows(bool b_transposed, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
               const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const bool fits = std::max({m, n, k, lda, ldb, ldc}) < INT_MAX;
  if (sgemm_ != nullptr && fits) {
    // Column-major BLAS sees the transposes: C^T (n, m) = op(B)^T (n, k) A^T (k, m).
    const char ta = b_transposed ? 'T' : 'N', tb = 'N';
    const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
    const int LDA = static_cast<int>(ldb), LDB = static_cast<int>(lda), LDC = static_cast<int>(ldc);
    sgemm_(&ta, &tb, &M, &N, &K, &alpha, b, &LDA, a, &LDB, &beta, c, &LDC);
    return;
  }
  const auto options = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor A = at::from_blob(const_cast<float*>(a), {m, k}, {lda, 1}, options);
  const at::Tensor Bm = b_transposed ? at::from_blob(const_cast<float*>(b), {n, k}, {ldb, 1}, options).t()
                                     : at::from_blob(const_cast<float*>(b), {k, n}, {ldb, 1}, options);
  at::Tensor C = at::from_blob(c, {m, n}, {ldc, 1}, options);
  at::addmm_out(C, C, A, Bm, beta, alpha);
}

}  // namespace powerbert
