// powerbert::dense_cpu: an encoder layer's dense (linear) layers on the CPU, with their epilogue fused.
//
// out = LayerNorm(act(x @ W^T + b) + residual), each part optional, for one or several weights side by
// side (the query, key and value projections in one call, their outputs in adjacent columns). ATen runs
// the same thing as an addmm (which first copies the broadcast bias into the output), then GELU, add and
// layer norm: four or five parallel regions, each ending in a barrier that waits for every thread, and
// three more passes over the output. Here it is one call of the extension's task pool: tasks of (block of
// output columns of one weight, block of rows), each one sequential BLAS GEMM followed by the bias and
// activation of its block while it is in cache; the task that completes the last column block of a row
// block adds the residual and normalises those rows. A thread descheduled by another process delays the
// call by at most the task it holds (see powerbert/task_pool.h).
//
// Results do not depend on the number of threads: the blocks are a function of the shapes alone, and
// every output element is one BLAS dot product over the whole K followed by the same epilogue.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "powerbert/cpu_blas.h"
#include "powerbert/cpu_dense.h"
#include "powerbert/task_pool.h"

namespace powerbert {

namespace {

const char* kOp = "powerbert::dense_cpu";

// How the output is cut into tasks: `row_blocks` x `col_blocks` near-equal blocks (rows, and output
// columns in multiples of 16 across all the weights). Equal blocks in a power-of-two count keep 2, 4, 8 or
// 16 threads busy to the end of the call, where fixed-size tiles with a remainder leave threads idle
// during the last round. The count depends on the shapes alone, never on the number of threads.
struct Split {
  int64_t row_blocks, col_blocks;
};

// Multiply-adds a task should have at least before the work is cut further (a few milliseconds of one
// core): each task's GEMM packs its own operands, so larger tasks run closer to MKL's speed on a whole
// matrix. At least four tasks are made whenever the call goes to the pool.
const int64_t kTaskMacs = int64_t(1) << 27;

Split choose_split(int64_t M, int64_t cols, int64_t K) {
  const int64_t macs = M * cols * std::max<int64_t>(K, 1);
  int64_t tasks = 4;
  while (tasks < 64 && macs / (2 * tasks) >= kTaskMacs) tasks *= 2;
  // Halve the longer side of the blocks each time: near-square blocks pack the least per multiply-add
  // (packing costs (rows + cols) * K, the arithmetic rows * cols * K). Rows no fewer than 8 per block,
  // columns no fewer than 64.
  Split split{1, 1};
  while (split.row_blocks * split.col_blocks < tasks) {
    const int64_t rows = M / split.row_blocks, width = cols / split.col_blocks;
    const bool can_rows = rows >= 16, can_cols = width >= 128;
    if (can_rows && (rows >= width || !can_cols)) {
      split.row_blocks *= 2;
    } else if (can_cols) {
      split.col_blocks *= 2;
    } else {
      break;
    }
  }
  return split;
}

// Start of block i of n equal blocks of `size`, rounded to a multiple of `align` (the last ends at size).
int64_t block_start(int64_t i, int64_t n, int64_t size, int64_t align) {
  if (i >= n) return size;
  return std::min(size, (size * i / n + align - 1) / align * align);
}

// Below this many multiply-adds the call stays on the calling thread (waking the pool would cost more).
const int64_t kMinParallelMacs = int64_t(1) << 21;

void check_vector(const at::Tensor& t, const char* name, int64_t size) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == size, kOp, ": ", name, " must have shape (", size, "), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, kOp, ": ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), kOp, ": ", name, " must be on the CPU, got ", t.device());
}

at::Tensor dense_cpu(const at::Tensor& x_in, at::TensorList weights, const c10::List<std::optional<at::Tensor>>& biases,
                     c10::string_view activation, const std::optional<at::Tensor>& residual_in,
                     const std::optional<at::Tensor>& norm_weight, const std::optional<at::Tensor>& norm_bias,
                     double eps) {
  TORCH_CHECK(x_in.dim() >= 1, kOp, ": x must have shape (..., K), got a scalar");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, kOp, ": x must be float32, got ", x_in.scalar_type());
  TORCH_CHECK(x_in.device().is_cpu(), kOp, ": x must be on the CPU, got ", x_in.device());
  TORCH_CHECK(!weights.empty(), kOp, ": weights must hold at least one (N, K) weight");
  TORCH_CHECK(biases.size() == weights.size(), kOp, ": biases must have one entry (a tensor or None) per weight (",
              weights.size(), "), got ", biases.size());
  TORCH_CHECK(activation == "none" || activation == "gelu", kOp, ": activation must be 'none' or 'gelu', got '",
              std::string(activation), "'");
  TORCH_CHECK(norm_weight.has_value() == norm_bias.has_value(), kOp,
              ": norm_weight and norm_bias must be given together");
  TORCH_CHECK(eps > 0, kOp, ": eps must be positive, got ", eps);
  const int64_t K = x_in.size(-1);
  std::vector<int64_t> first_col;  // each weight's first output column
  int64_t cols = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    const at::Tensor& w = weights[i];
    TORCH_CHECK(w.dim() == 2 && w.size(1) == K && w.size(0) >= 1, kOp, ": weights[", i, "] must have shape (N, K=", K,
                "), got ", w.sizes());
    TORCH_CHECK(w.scalar_type() == at::kFloat, kOp, ": weights[", i, "] must be float32, got ", w.scalar_type());
    TORCH_CHECK(w.device().is_cpu(), kOp, ": weights[", i, "] must be on the CPU, got ", w.device());
    TORCH_CHECK(w.is_contiguous(), kOp, ": weights[", i, "] must be contiguous (an nn.Linear weight is)");
    const std::optional<at::Tensor> bias = biases[i];
    if (bias.has_value()) {
      check_vector(*bias, "a bias", w.size(0));
      TORCH_CHECK(bias->is_contiguous(), kOp, ": biases[", i, "] must be contiguous");
    }
    first_col.push_back(cols);
    cols += w.size(0);
  }
  std::vector<int64_t> out_shape(x_in.sizes().begin(), x_in.sizes().end());
  out_shape.back() = cols;
  if (residual_in.has_value()) {
    TORCH_CHECK(residual_in->sizes() == at::IntArrayRef(out_shape), kOp, ": residual must have the output's shape ",
                at::IntArrayRef(out_shape), ", got ", residual_in->sizes());
    TORCH_CHECK(residual_in->scalar_type() == at::kFloat, kOp, ": residual must be float32, got ",
                residual_in->scalar_type());
    TORCH_CHECK(residual_in->device().is_cpu(), kOp, ": residual must be on the CPU, got ", residual_in->device());
  }
  if (norm_weight.has_value()) {
    check_vector(*norm_weight, "norm_weight", cols);
    check_vector(*norm_bias, "norm_bias", cols);
  }

  const at::Tensor x = x_in.contiguous();
  const at::Tensor residual = residual_in.has_value() ? residual_in->contiguous() : at::Tensor();
  const at::Tensor gamma = norm_weight.has_value() ? norm_weight->contiguous() : at::Tensor();
  const at::Tensor beta = norm_bias.has_value() ? norm_bias->contiguous() : at::Tensor();
  at::Tensor out = at::empty(out_shape, x.options());
  const int64_t M = K > 0 ? x.numel() / K : x.numel() == 0 ? 0 : 1;
  if (M == 0) return out;
  if (K == 0) {  // x @ W^T of an empty K is zero: the epilogue alone
    out.zero_();
  }

  const bool gelu = activation == "gelu";
  const bool norm = norm_weight.has_value();
  const float* x_ptr = x.const_data_ptr<float>();
  const float* res_ptr = residual.defined() ? residual.const_data_ptr<float>() : nullptr;
  float* out_ptr = out.data_ptr<float>();

  std::vector<const float*> w_ptrs, b_ptrs;
  for (size_t i = 0; i < weights.size(); ++i) {
    w_ptrs.push_back(weights[i].const_data_ptr<float>());
    const std::optional<at::Tensor> bias = biases[i];
    b_ptrs.push_back(bias.has_value() ? bias->const_data_ptr<float>() : nullptr);
  }
  const Split split = choose_split(M, cols, K);
  const int64_t tasks = split.row_blocks * split.col_blocks;
  // Per row block, the column blocks still to finish before its LayerNorm.
  std::unique_ptr<std::atomic<int64_t>[]> pending(norm ? new std::atomic<int64_t>[split.row_blocks] : nullptr);
  for (int64_t rb = 0; rb < (norm ? split.row_blocks : 0); ++rb) {
    pending[rb].store(split.col_blocks, std::memory_order_relaxed);
  }

  const int64_t macs = M * cols * K;
  const int64_t threads = macs < kMinParallelMacs ? 1 : task_threads();
  run_tasks(tasks, threads, [&](int64_t task, int) {
    // Column block outer: consecutive tasks share a slice of the weights, which stays in cache.
    const int64_t cb = task / split.row_blocks, rb = task % split.row_blocks;
    const int64_t row0 = block_start(rb, split.row_blocks, M, 1);
    const int64_t rows = block_start(rb + 1, split.row_blocks, M, 1) - row0;
    const int64_t col_begin = block_start(cb, split.col_blocks, cols, 16);
    const int64_t col_end = block_start(cb + 1, split.col_blocks, cols, 16);
    // The block's columns, weight by weight (a block may span the end of one and the start of the next).
    for (size_t i = 0; i < weights.size(); ++i) {
      const int64_t w_begin = std::max(col_begin, first_col[i]);
      const int64_t w_end = std::min(col_end, first_col[i] + weights[i].size(0));
      if (w_begin >= w_end || rows == 0) continue;
      const int64_t local = w_begin - first_col[i];
      float* y = out_ptr + row0 * cols + w_begin;
      if (K > 0) {
        gemm_rows(true, rows, w_end - w_begin, K, 1.f, x_ptr + row0 * K, K, w_ptrs[i] + local * K, K, 0.f, y, cols);
      }
      const float* bias = b_ptrs[i] != nullptr ? b_ptrs[i] + local : nullptr;
      const float* res = !norm && res_ptr != nullptr ? res_ptr + row0 * cols + w_begin : nullptr;
      cpu::bias_act_rows(y, cols, bias, res, cols, rows, w_end - w_begin, gelu);
    }
    if (norm && pending[rb].fetch_sub(1, std::memory_order_acq_rel) == 1 && rows > 0) {
      // The last column block of these rows: every column is final, normalise the whole rows.
      cpu::residual_layer_norm_rows(out_ptr + row0 * cols, cols, res_ptr != nullptr ? res_ptr + row0 * cols : nullptr,
                                    cols, gamma.const_data_ptr<float>(), beta.const_data_ptr<float>(), rows, cols,
                                    static_cast<float>(eps));
    }
  });
  return out;
}

}  // namespace

}  // namespace powerbert

TORCH_LIBRARY_IMPL(powerbert, CPU, m) { m.impl("dense_cpu", &powerbert::dense_cpu); }
