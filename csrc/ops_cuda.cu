// CUDA implementations of the PoWER-BERT operators: checks (shared with the CPU binding), output
// allocation, and one call to a launcher of powerbert/cuda_launch.cuh on the current stream.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <string>

#include "ops.h"
#include "powerbert/cuda_launch.cuh"

namespace powerbert {

std::string cuda_kernels_error(int device) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  const cudaError_t err = cuda::probe_kernels();
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

namespace {

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err),
              (err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidDeviceFunction)
                  ? " (the extension was not compiled for this GPU: rebuild it with TORCH_CUDA_ARCH_LIST set to "
                    "this GPU's compute capability)"
                  : "");
}

int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

at::Tensor significance_from_probs_cuda(const at::Tensor& probs, const at::Tensor& mask, int64_t q_offset,
                                        bool exclude_self) {
  const SignificanceShape s = check_significance_args(probs, mask, q_offset);
  const c10::cuda::CUDAGuard guard(probs.device());
  if (s.B == 0 || s.N == 0 || s.H == 0 || s.n_q == 0) return at::zeros({s.B, s.N}, probs.options().dtype(at::kFloat));
  at::Tensor out = at::empty({s.B, s.N}, probs.options().dtype(at::kFloat));
  dispatch_float(probs.scalar_type(), "powerbert::significance_from_probs", [&](auto tag) {
    using T = decltype(tag);
    cuda::SignificanceParams<T> p{};
    p.probs = static_cast<const typename T::storage*>(probs.const_data_ptr());
    p.stride_b = used_stride(probs, 0);
    p.stride_h = used_stride(probs, 1);
    p.stride_q = used_stride(probs, 2);
    p.mask = static_cast<const u8*>(mask.const_data_ptr());
    p.mask_stride_b = mask.stride(0);
    p.mask_stride_n = mask.stride(1);
    p.H = static_cast<int>(s.H);
    p.n_q = static_cast<int>(s.n_q);
    p.N = static_cast<int>(s.N);
    p.q_offset = static_cast<int>(q_offset);
    p.exclude_self = exclude_self ? 1 : 0;
    const cuda::SignificancePlan plan = cuda::plan_significance(p, s.B, sm_count());
    at::Tensor workspace = at::empty({plan.workspace_floats}, probs.options().dtype(at::kFloat));
    check_launch(cuda::launch_significance(p, plan, s.B, workspace.data_ptr<float>(), out.data_ptr<float>(),
                                           at::cuda::getCurrentCUDAStream()),
                 "powerbert::significance_from_probs");
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> select_gather_ext_cuda(const at::Tensor& hidden,
                                                                      const at::Tensor& significance,
                                                                      const at::Tensor& mask, int64_t keep) {
  check_select_gather_args(hidden, significance, mask, keep);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const int64_t B = hidden.size(0), N = hidden.size(1), D = hidden.size(2);
  at::Tensor hidden_kept = at::empty({B, keep, D}, hidden.options());
  at::Tensor mask_kept = at::empty({B, keep}, mask.options());
  at::Tensor indices = at::empty({B, keep}, hidden.options().dtype(at::kLong));
  if (B == 0) return {hidden_kept, mask_kept, indices};
  cuda::SelectParams p{};
  p.significance = significance.const_data_ptr<float>();
  p.sig_stride_b = significance.stride(0);
  p.sig_stride_n = significance.stride(1);
  p.mask = static_cast<const u8*>(mask.const_data_ptr());
  p.mask_stride_b = mask.stride(0);
  p.mask_stride_n = mask.stride(1);
  p.indices = reinterpret_cast<i64*>(indices.data_ptr<int64_t>());
  p.mask_out = static_cast<u8*>(mask_kept.data_ptr());
  p.N = static_cast<int>(N);
  p.keep = static_cast<int>(keep);
  const int64_t es = hidden.element_size();
  check_launch(cuda::launch_select_gather(p, B, hidden.const_data_ptr(), used_stride(hidden, 0) * es,
                                          used_stride(hidden, 1) * es, D * es, hidden_kept.data_ptr(), sm_count(),
                                          at::cuda::getCurrentCUDAStream()),
               "powerbert::select_gather_ext");
  return {hidden_kept, mask_kept, indices};
}

}  // namespace

}  // namespace powerbert

TORCH_LIBRARY_IMPL(powerbert, CUDA, m) {
  m.impl("significance_from_probs", &powerbert::significance_from_probs_cuda);
  m.impl("select_gather_ext", &powerbert::select_gather_ext_cuda);
}
