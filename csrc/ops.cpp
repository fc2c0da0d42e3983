// Torch binding of the PoWER-BERT extension: operator schemas, argument checks, the CPU
// implementations (at::parallel_for over the loops of powerbert/cpu_kernels.h) and the Python
// module `powerbert_kernels._C` whose import registers all of it.
#include <Python.h>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <string>
#include <vector>

#include "ops.h"
#include "powerbert/cpu_kernels.h"
#include "powerbert/task_pool.h"

#ifndef POWERBERT_WITH_CUDA
#define POWERBERT_WITH_CUDA 0
#endif
// setup.py passes the CUDA architectures as one bare token (sm_37+sm_60+compute_90): no quotes to
// survive the build's shell.
#ifndef POWERBERT_CUDA_ARCHS
#define POWERBERT_CUDA_ARCHS none
#endif
#define POWERBERT_STRINGIFY_(x) #x
#define POWERBERT_STRINGIFY(x) POWERBERT_STRINGIFY_(x)

namespace powerbert {

#if POWERBERT_WITH_CUDA
// Defined in ops_cuda.cu: "" when every kernel can run on the device, else the CUDA error.
std::string cuda_kernels_error(int device);
#endif

namespace {

bool is_float(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

void check_mask(const char* op, const at::Tensor& mask, int64_t B, int64_t N, const at::Tensor& main,
                const char* main_name) {
  TORCH_CHECK(mask.dim() == 2 && mask.size(0) == B && mask.size(1) == N, op, ": mask must have shape (B, N) = (", B,
              ", ", N, "), got ", mask.sizes());
  TORCH_CHECK(mask.scalar_type() == at::kBool, op, ": mask must be a bool tensor (True = real token), got ",
              mask.scalar_type(), "; convert an attention mask with mask.bool()");
  TORCH_CHECK(mask.device() == main.device(), op, ": mask is on ", mask.device(), " but ", main_name, " is on ",
              main.device(), "; move both to the same device");
}

}  // namespace

SignificanceShape check_significance_args(const at::Tensor& probs, const at::Tensor& mask, int64_t q_offset) {
  const char* op = "powerbert::significance_from_probs";
  TORCH_CHECK(probs.dim() == 4, op, ": probs must have shape (B, H, n_q, N), got ", probs.sizes());
  TORCH_CHECK(is_float(probs.scalar_type()), op, ": probs must be float32, float16 or bfloat16, got ",
              probs.scalar_type());
  const SignificanceShape s{probs.size(0), probs.size(1), probs.size(2), probs.size(3)};
  check_mask(op, mask, s.B, s.N, probs, "probs");
  TORCH_CHECK(s.N <= 1 || probs.stride(3) == 1, op, ": probs must be contiguous in its last dimension (N), got strides ",
              probs.strides(), "; call probs.contiguous()");
  TORCH_CHECK(q_offset >= 0 && q_offset + s.n_q <= s.N, op, ": the query rows [q_offset, q_offset + n_q) = [", q_offset,
              ", ", q_offset + s.n_q, ") must lie within the N = ", s.N, " positions");
  TORCH_CHECK(s.N < INT_MAX && s.H * s.n_q < INT_MAX, op, ": probs is too large (N and H * n_q must be below 2^31), got ",
              probs.sizes());
  return s;
}

void check_select_gather_args(const at::Tensor& hidden, const at::Tensor& significance, const at::Tensor& mask,
                              int64_t keep) {
  const char* op = "powerbert::select_gather_ext";
  TORCH_CHECK(hidden.dim() == 3, op, ": hidden must have shape (B, N, D), got ", hidden.sizes());
  TORCH_CHECK(is_float(hidden.scalar_type()), op, ": hidden must be float32, float16 or bfloat16, got ",
              hidden.scalar_type());
  const int64_t B = hidden.size(0), N = hidden.size(1), D = hidden.size(2);
  TORCH_CHECK(D <= 1 || hidden.stride(2) == 1, op, ": hidden must be contiguous in its last dimension (D), got strides ",
              hidden.strides(), "; call hidden.contiguous()");
  TORCH_CHECK(significance.dim() == 2 && significance.size(0) == B && significance.size(1) == N, op,
              ": significance must have shape (B, N) = (", B, ", ", N, "), got ", significance.sizes());
  TORCH_CHECK(significance.scalar_type() == at::kFloat, op, ": significance must be float32, got ",
              significance.scalar_type(), "; call significance.float()");
  TORCH_CHECK(significance.device() == hidden.device(), op, ": significance is on ", significance.device(),
              " but hidden is on ", hidden.device(), "; move both to the same device");
  check_mask(op, mask, B, N, hidden, "hidden");
  TORCH_CHECK(1 <= keep && keep <= N, op, ": keep must be between 1 and N = ", N, ", got ", keep);
  TORCH_CHECK(N < kMaxPositions, op, ": N must be below 2^30, got ", N);
}

namespace {

at::Tensor significance_from_probs_cpu(const at::Tensor& probs, const at::Tensor& mask, int64_t q_offset,
                                       bool exclude_self) {
  const SignificanceShape s = check_significance_args(probs, mask, q_offset);
  if (s.B == 0 || s.N == 0 || s.H == 0 || s.n_q == 0) return at::zeros({s.B, s.N}, probs.options().dtype(at::kFloat));
  at::Tensor out = at::empty({s.B, s.N}, probs.options().dtype(at::kFloat));  // every element is written

  // Tasks are (batch row, column chunk). Chunks stay at most 1024 columns so the accumulators sit in
  // L1, and shrink (to 128 columns at least, below which the per-row overhead shows) when there are
  // too few batch rows to give every thread two tasks. Each column is summed in the same order
  // whatever the chunking, so results do not depend on the number of threads.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t chunk = 1024;
  if (threads > 1) {
    const int64_t wanted = (s.B * s.N + 2 * threads - 1) / (2 * threads);
    chunk = std::min<int64_t>(1024, std::max<int64_t>(128, (wanted + 15) / 16 * 16));
  }
  chunk = std::min(chunk, s.N);
  const int64_t chunks = (s.N + chunk - 1) / chunk;
  // At least 256K elements (about 1 MiB, tens of microseconds of reading) per parallel piece: waking an
  // idle OpenMP thread costs about as much, and on a loaded machine it can cost a scheduler time slice,
  // so small calls (a block of a few query rows of one sequence) stay on the calling thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, s.H * s.n_q * chunk));

  const u8* mask_ptr = static_cast<const u8*>(mask.const_data_ptr());
  const int64_t mask_sb = mask.stride(0), mask_sn = mask.stride(1);
  float* out_ptr = out.data_ptr<float>();
  // A block of probabilities larger than a typical last-level cache slice streams from memory; a
  // smaller one was usually just written by the softmax and is still cached.
  const bool prefetch = probs.numel() * probs.element_size() > (int64_t(8) << 20);
  dispatch_float(probs.scalar_type(), "powerbert::significance_from_probs", [&](auto tag) {
    using T = decltype(tag);
    const auto* probs_ptr = static_cast<const typename T::storage*>(probs.const_data_ptr());
    const int64_t sb = probs.stride(0), sh = probs.stride(1), sq = probs.stride(2);
    at::parallel_for(0, s.B * chunks, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> block_acc(static_cast<size_t>(chunk));
      std::vector<const typename T::storage*> rows(static_cast<size_t>(s.H * s.n_q));
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / chunks;
        const int64_t w0 = (task % chunks) * chunk;
        cpu::significance_columns<T>(probs_ptr + b * sb, sh, sq, s.H, s.n_q, mask_ptr + b * mask_sb, mask_sn,
                                     q_offset, exclude_self, w0, std::min(s.N, w0 + chunk), block_acc.data(),
                                     rows.data(), out_ptr + b * s.N, prefetch);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> select_gather_ext_cpu(const at::Tensor& hidden,
                                                                     const at::Tensor& significance,
                                                                     const at::Tensor& mask, int64_t keep) {
  check_select_gather_args(hidden, significance, mask, keep);
  const int64_t B = hidden.size(0), N = hidden.size(1), D = hidden.size(2);
  at::Tensor hidden_kept = at::empty({B, keep, D}, hidden.options());
  at::Tensor mask_kept = at::empty({B, keep}, mask.options());
  at::Tensor indices = at::empty({B, keep}, hidden.options().dtype(at::kLong));
  if (B == 0) return {hidden_kept, mask_kept, indices};

  const float* sig_ptr = significance.const_data_ptr<float>();
  const u8* mask_ptr = static_cast<const u8*>(mask.const_data_ptr());
  i64* idx_ptr = reinterpret_cast<i64*>(indices.data_ptr<int64_t>());
  bool* mask_out_ptr = mask_kept.data_ptr<bool>();
  const int64_t es = hidden.element_size();
  const int64_t row_bytes = D * es;
  const char* src = static_cast<const char*>(hidden.const_data_ptr());
  char* dst = static_cast<char*>(hidden_kept.data_ptr());
  const int64_t sb = used_stride(hidden, 0) * es, sn = used_stride(hidden, 1) * es;

  // Selection of rows [begin, end): O(N) each (nth_element), with per-task scratch.
  auto select_rows = [&](int64_t begin, int64_t end) {
    std::vector<u64> keys(static_cast<size_t>(N)), scratch(static_cast<size_t>(N));
    for (int64_t b = begin; b < end; ++b) {
      cpu::select_row(sig_ptr + b * significance.stride(0), significance.stride(1), mask_ptr + b * mask.stride(0),
                      mask.stride(1), N, keep, keys.data(), scratch.data(), idx_ptr + b * keep,
                      mask_out_ptr + b * keep);
    }
  };
  // On the extension's task pool (powerbert/task_pool.h): no barrier waits for a descheduled thread.
  const int64_t threads = task_threads();
  const bool big = B * keep * row_bytes >= (int64_t(1) << 18);
  if (B >= 2 * threads && big) {
    // Enough rows for every thread: a task selects one row and copies its kept vectors while they are hot.
    run_tasks(B, threads, [&](int64_t b, int) {
      select_rows(b, b + 1);
      if (row_bytes > 0) cpu::gather_rows(src, sb, sn, idx_ptr, keep, row_bytes, dst, b * keep, (b + 1) * keep);
    });
    return {hidden_kept, mask_kept, indices};
  }
  // Few rows (or little to copy): select them, then split the copy of all B * keep kept vectors into
  // pieces of at least 256 KiB so that every thread copies.
  run_tasks(B, B * N >= (int64_t(1) << 16) ? threads : 1, [&](int64_t b, int) { select_rows(b, b + 1); });
  if (row_bytes > 0) {
    const int64_t total = B * keep;
    const int64_t pieces = std::max<int64_t>(1, std::min(4 * threads, total * row_bytes / (int64_t(1) << 18)));
    run_tasks(pieces, threads, [&](int64_t piece, int) {
      cpu::gather_rows(src, sb, sn, idx_ptr, keep, row_bytes, dst, total * piece / pieces,
                       total * (piece + 1) / pieces);
    });
  }
  return {hidden_kept, mask_kept, indices};
}

}  // namespace

}  // namespace powerbert

TORCH_LIBRARY(powerbert, m) {
  m.def("significance_from_probs(Tensor probs, Tensor mask, int q_offset=0, bool exclude_self=False) -> Tensor");
  m.def("select_gather_ext(Tensor hidden, Tensor significance, Tensor mask, int keep) -> (Tensor, Tensor, Tensor)");
  // CPU only (attention_cpu.cpp): fused attention with significance.
  m.def(
      "attention_significance_cpu(Tensor q, Tensor k, Tensor v, Tensor mask, float scale, bool exclude_self) -> "
      "(Tensor, Tensor)");
  // CPU only (dense_cpu.cpp): dense layers with their bias, GELU, residual and LayerNorm fused.
  m.def(
      "dense_cpu(Tensor x, Tensor[] weights, Tensor?[] biases, str activation='none', Tensor? residual=None, "
      "Tensor? norm_weight=None, Tensor? norm_bias=None, float eps=1e-12) -> Tensor");
}

TORCH_LIBRARY_IMPL(powerbert, CPU, m) {
  m.impl("significance_from_probs", &powerbert::significance_from_probs_cpu);
  m.impl("select_gather_ext", &powerbert::select_gather_ext_cpu);
}

// ---------------------------------------------------------------------------------------------
// The Python module. Importing it runs the registrations above; it also says how it was built.
// ---------------------------------------------------------------------------------------------

namespace {

PyObject* cuda_kernel_error(PyObject*, PyObject* arg) {
  const long device = PyLong_AsLong(arg);
  if (device == -1 && PyErr_Occurred()) return nullptr;
#if POWERBERT_WITH_CUDA
  std::string error;
  try {
    error = powerbert::cuda_kernels_error(static_cast<int>(device));
  } catch (const std::exception& e) {
    error = e.what();
  }
  if (error.empty()) Py_RETURN_NONE;
  return PyUnicode_FromString(error.c_str());
#else
  return PyUnicode_FromString("the extension was built without CUDA kernels");
#endif
}

PyMethodDef methods[] = {
    {"cuda_kernel_error", cuda_kernel_error, METH_O,
     "cuda_kernel_error(device: int) -> str | None: None when every CUDA kernel can run on that device, "
     "else why not."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "_C",
    "PoWER-BERT compiled extension: registers powerbert::significance_from_probs, powerbert::select_gather_ext, "
    "powerbert::attention_significance_cpu and powerbert::dense_cpu.",
    -1,
    methods,
};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
  if (PyModule_AddIntConstant(m, "WITH_CUDA", POWERBERT_WITH_CUDA) < 0 ||
      PyModule_AddStringConstant(m, "CUDA_ARCHS", POWERBERT_STRINGIFY(POWERBERT_CUDA_ARCHS)) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
