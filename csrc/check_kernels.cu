// Every kernel of the extension, instantiated once: the translation unit that `powerbert check-cuda`
// compiles for each GPU architecture (with nvcc, or with NVRTC where only device code is compiled).
// Keep it in step with the kernels of powerbert/cuda_kernels.cuh and the launchers of cuda_launch.cuh.
#include "powerbert/cuda_kernels.cuh"
#if !defined(__CUDACC_RTC__)
#include "powerbert/cuda_launch.cuh"
#endif

namespace powerbert {
namespace cuda {

template __global__ void significance_kernel<F32, 1>(SignificanceParams<F32>);
template __global__ void significance_kernel<F32, 4>(SignificanceParams<F32>);
template __global__ void significance_kernel<F16, 1>(SignificanceParams<F16>);
template __global__ void significance_kernel<F16, 8>(SignificanceParams<F16>);
template __global__ void significance_kernel<BF16, 1>(SignificanceParams<BF16>);
template __global__ void significance_kernel<BF16, 8>(SignificanceParams<BF16>);
template __global__ void gather_kernel<uint4>(GatherParams<uint4>);
template __global__ void gather_kernel<uint2>(GatherParams<uint2>);
template __global__ void gather_kernel<u32>(GatherParams<u32>);
template __global__ void gather_kernel<u16>(GatherParams<u16>);
template __global__ void gather_kernel<u8>(GatherParams<u8>);

#if !defined(__CUDACC_RTC__)
// The host launchers as the torch binding uses them.
template cudaError_t launch_significance<F32>(const SignificanceParams<F32>&, const SignificancePlan&, i64, float*,
                                              float*, cudaStream_t);
template cudaError_t launch_significance<F16>(const SignificanceParams<F16>&, const SignificancePlan&, i64, float*,
                                              float*, cudaStream_t);
template cudaError_t launch_significance<BF16>(const SignificanceParams<BF16>&, const SignificancePlan&, i64, float*,
                                               float*, cudaStream_t);
template SignificancePlan plan_significance<F32>(const SignificanceParams<F32>&, i64, int);
template SignificancePlan plan_significance<F16>(const SignificanceParams<F16>&, i64, int);
template SignificancePlan plan_significance<BF16>(const SignificanceParams<BF16>&, i64, int);
#endif

}  // namespace cuda
}  // namespace powerbert

#if !defined(__CUDACC_RTC__)
// Non-template host functions of the header, referenced so that they are compiled and kept.
void* powerbert_check_host_entry_points[] = {
    reinterpret_cast<void*>(&powerbert::cuda::launch_select_gather),
    reinterpret_cast<void*>(&powerbert::cuda::probe_kernels),
};
#endif
