// The BLAS that PyTorch's CPU builds link in and export (MKL on x86-64, OpenBLAS elsewhere), called
// directly by the extension's CPU kernels, one GEMM per task and thread.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

// The Fortran single-precision GEMM, the one PyTorch's own CPU flash attention calls per block. Weak, so
// that the extension still loads against a build without it and falls back to at::addmm_out.
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));
// MKL's per-thread thread count, C interface (returns the previous one; 0 = the global setting).
extern "C" int MKL_Set_Num_Threads_Local(int threads) __attribute__((weak));

namespace powerbert {

// Sets this thread's BLAS thread count where the BLAS is MKL (0 = the global setting) and returns the
// previous one. Tasks set it to 1: each runs on one thread, and a GEMM must not wake MKL's own threads.
inline int set_sequential_blas(int threads) {
  return MKL_Set_Num_Threads_Local != nullptr ? MKL_Set_Num_Threads_Local(threads) : 0;
}

// Row-major C (m, n) = alpha * A (m, k) @ B (k, n), or @ B^T when B is given as (n, k) (b_transposed),
// plus beta * C; each matrix with its own row stride (at least its number of columns).
void gemm_rows(bool b_transposed, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
               const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace powerbert
