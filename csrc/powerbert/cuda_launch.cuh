// Host launchers of the PoWER-BERT CUDA kernels (CUDA runtime, no torch). Each returns the launch
// error, if any. The launch geometry comes from the plans in cuda_kernels.cuh.
#pragma once

#include "cuda_kernels.cuh"

namespace powerbert {
namespace cuda {

// out: (B, N) float32. workspace: plan.workspace_floats floats (may be null when that is 0).
template <typename T>
cudaError_t launch_significance(const SignificanceParams<T>& args, const SignificancePlan& plan, i64 B,
                                float* workspace, float* out, cudaStream_t stream) {
  if (plan.grid_x > 0x7FFFFFFF) return cudaErrorInvalidConfiguration;
  const SignificanceParams<T> p = significance_params(args, plan, workspace, out);
  const dim3 grid(static_cast<unsigned>(plan.grid_x), static_cast<unsigned>(plan.splits));
  const dim3 block(kWarp, kSigRows);
  if (plan.vec == 1) {
    significance_kernel<T, 1><<<grid, block, 0, stream>>>(p);
  } else {
    significance_kernel<T, Wide<T>::value><<<grid, block, 0, stream>>>(p);
  }
  if (plan.splits > 1) {
    sum_splits_kernel<<<static_cast<unsigned>(plan.sum_grid), 256, 0, stream>>>(workspace, plan.splits, p.N,
                                                                                 B * p.N, out);
  }
  return cudaGetLastError();
}

template <typename U>
void launch_gather_as(const GatherPlan& plan, const void* hidden, i64 stride_b, i64 stride_n, const i64* indices,
                      i64 B, int keep, i64 row_bytes, void* out, cudaStream_t stream) {
  gather_kernel<U><<<static_cast<unsigned>(plan.grid_x), kGatherThreads, 0, stream>>>(
      gather_params<U>(hidden, stride_b, stride_n, indices, B, keep, row_bytes, out));
}

// Select-and-gather of B rows: select_kernel fills p.indices and p.mask_out, then the kept rows are
// copied. hidden: (B, N, row_bytes) bytes with byte strides stride_b, stride_n; out: (B, keep, row_bytes).
inline cudaError_t launch_select_gather(const SelectParams& p, i64 B, const void* hidden, i64 stride_b,
                                        i64 stride_n, i64 row_bytes, void* out, int num_sms, cudaStream_t stream) {
  if (B > 0x7FFFFFFF) return cudaErrorInvalidConfiguration;
  select_kernel<<<static_cast<unsigned>(B), kSelectThreads, 0, stream>>>(p);
  const GatherPlan plan = plan_gather(hidden, stride_b, stride_n, row_bytes, out, B, p.keep, num_sms);
  const i64* idx = p.indices;
  switch (plan.unit) {
    case 16: launch_gather_as<uint4>(plan, hidden, stride_b, stride_n, idx, B, p.keep, row_bytes, out, stream); break;
    case 8: launch_gather_as<uint2>(plan, hidden, stride_b, stride_n, idx, B, p.keep, row_bytes, out, stream); break;
    case 4: launch_gather_as<u32>(plan, hidden, stride_b, stride_n, idx, B, p.keep, row_bytes, out, stream); break;
    case 2: launch_gather_as<u16>(plan, hidden, stride_b, stride_n, idx, B, p.keep, row_bytes, out, stream); break;
    default: launch_gather_as<u8>(plan, hidden, stride_b, stride_n, idx, B, p.keep, row_bytes, out, stream); break;
  }
  return cudaGetLastError();
}

template <typename K>
cudaError_t probe_kernel(K* kernel) {
  cudaFuncAttributes attributes;
  const cudaError_t err = cudaFuncGetAttributes(&attributes, kernel);
  if (err != cudaSuccess) cudaGetLastError();  // clear it: the caller reports it
  return err;
}

// cudaSuccess when every kernel has machine code (or PTX) the current device can run, else the
// error (cudaErrorNoKernelImageForDevice or cudaErrorInvalidDeviceFunction).
inline cudaError_t probe_kernels() {
  const cudaError_t errors[] = {
      probe_kernel(significance_kernel<F32, 1>),  probe_kernel(significance_kernel<F32, 4>),
      probe_kernel(significance_kernel<F16, 1>),  probe_kernel(significance_kernel<F16, 8>),
      probe_kernel(significance_kernel<BF16, 1>), probe_kernel(significance_kernel<BF16, 8>),
      probe_kernel(sum_splits_kernel),            probe_kernel(select_kernel),
      probe_kernel(gather_kernel<uint4>),         probe_kernel(gather_kernel<uint2>),
      probe_kernel(gather_kernel<u32>),           probe_kernel(gather_kernel<u16>),
      probe_kernel(gather_kernel<u8>),
  };
  for (cudaError_t err : errors) {
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace powerbert
