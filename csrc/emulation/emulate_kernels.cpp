// The extension's CUDA kernels and launch plans, run on the CPU through cuda_host_emulation.h, behind a
// C interface that tests/test_ext_cuda_emulation.py loads with ctypes. Each entry point plans and
// launches exactly as cuda_launch.cuh does and returns a code saying which variant ran.
#include "cuda_host_emulation.h"

#include "../powerbert/cuda_kernels.cuh"

using namespace powerbert;
using namespace powerbert::cuda;

namespace {

template <typename T>
int significance(const void* probs, i64 sb, i64 sh, i64 sq, const u8* mask, i64 msb, i64 msn, i64 B, int H, int n_q,
                 int N, int q_offset, int exclude_self, int num_sms, float* out) {
  SignificanceParams<T> p{};
  p.probs = static_cast<const typename T::storage*>(probs);
  p.stride_b = sb;
  p.stride_h = sh;
  p.stride_q = sq;
  p.mask = mask;
  p.mask_stride_b = msb;
  p.mask_stride_n = msn;
  p.H = H;
  p.n_q = n_q;
  p.N = N;
  p.q_offset = q_offset;
  p.exclude_self = exclude_self;
  const SignificancePlan plan = plan_significance(p, B, num_sms);
  std::vector<float> workspace(static_cast<size_t>(plan.workspace_floats));
  const SignificanceParams<T> args = significance_params(p, plan, workspace.data(), out);
  const dim3 grid(static_cast<unsigned>(plan.grid_x), static_cast<unsigned>(plan.splits));
  const dim3 block(kWarp, kSigRows);
  if (plan.vec == 1) {
    emu::launch(grid, block, significance_kernel<T, 1>, args);
  } else {
    emu::launch(grid, block, significance_kernel<T, Wide<T>::value>, args);
  }
  if (plan.splits > 1) {
    emu::launch(dim3(static_cast<unsigned>(plan.sum_grid)), dim3(256), sum_splits_kernel,
                static_cast<const float*>(workspace.data()), plan.splits, N, B * N, out);
  }
  return plan.vec * 100000 + plan.splits;
}

template <typename U>
void gather(const GatherPlan& plan, const void* hidden, i64 stride_b, i64 stride_n, const i64* indices, i64 B, int keep,
            i64 row_bytes, void* out) {
  emu::launch(dim3(static_cast<unsigned>(plan.grid_x)), dim3(kGatherThreads), gather_kernel<U>,
              gather_params<U>(hidden, stride_b, stride_n, indices, B, keep, row_bytes, out));
}

}  // namespace

extern "C" {

// dtype: 0 float32, 1 float16, 2 bfloat16. Strides in elements. Returns vec * 100000 + splits.
int pb_emu_significance(int dtype, const void* probs, i64 sb, i64 sh, i64 sq, const u8* mask, i64 msb, i64 msn, i64 B,
                        int H, int n_q, int N, int q_offset, int exclude_self, int num_sms, float* out) {
  switch (dtype) {
    case 0: return significance<F32>(probs, sb, sh, sq, mask, msb, msn, B, H, n_q, N, q_offset, exclude_self, num_sms, out);
    case 1: return significance<F16>(probs, sb, sh, sq, mask, msb, msn, B, H, n_q, N, q_offset, exclude_self, num_sms, out);
    default: return significance<BF16>(probs, sb, sh, sq, mask, msb, msn, B, H, n_q, N, q_offset, exclude_self, num_sms, out);
  }
}

// Select-and-gather; hidden strides and row size in bytes. Returns the gather's copy unit in bytes.
int pb_emu_select_gather(const float* sig, i64 ssb, i64 ssn, const u8* mask, i64 msb, i64 msn, i64 B, int N, int keep,
                         const void* hidden, i64 stride_b, i64 stride_n, i64 row_bytes, i64* indices, u8* mask_out,
                         void* out, int num_sms) {
  SelectParams p{};
  p.significance = sig;
  p.sig_stride_b = ssb;
  p.sig_stride_n = ssn;
  p.mask = mask;
  p.mask_stride_b = msb;
  p.mask_stride_n = msn;
  p.indices = indices;
  p.mask_out = mask_out;
  p.N = N;
  p.keep = keep;
  emu::launch(dim3(static_cast<unsigned>(B)), dim3(kSelectThreads), select_kernel, p);
  const GatherPlan plan = plan_gather(hidden, stride_b, stride_n, row_bytes, out, B, keep, num_sms);
  switch (plan.unit) {
    case 16: gather<uint4>(plan, hidden, stride_b, stride_n, indices, B, keep, row_bytes, out); break;
    case 8: gather<uint2>(plan, hidden, stride_b, stride_n, indices, B, keep, row_bytes, out); break;
    case 4: gather<u32>(plan, hidden, stride_b, stride_n, indices, B, keep, row_bytes, out); break;
    case 2: gather<u16>(plan, hidden, stride_b, stride_n, indices, B, keep, row_bytes, out); break;
    default: gather<u8>(plan, hidden, stride_b, stride_n, indices, B, keep, row_bytes, out); break;
  }
  return plan.unit;
}

}  // extern "C"
