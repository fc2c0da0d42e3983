// powerbert::attention_significance_cpu: fused multi-head attention with PoWER-BERT's significance on
// the CPU.
//
// One call of the extension's task pool (powerbert/task_pool.h: no barrier that waits for a descheduled
// thread) per call. The work is split into tasks of (batch row, head, block of query rows);
// each task runs scale * Q_blk K^T (BLAS), the masked softmax and the significance votes of its rows
// (cpu_attention.h) and P_blk V (BLAS) straight into the output, so no more than one block of the
// N x N probabilities exists per thread and the strided q/k/v views of the projections are read in
// place (no layout copies). Threads take tasks from a shared counter rather than a fixed slice, so a
// thread descheduled by another process delays the call by one task, not by its whole share, and one that
// has not started is not waited for.
//
// Results do not depend on the number of threads or on the rest of the batch: the block size depends on
// N alone, every task writes only its own output rows and its own partial votes, and the partial votes
// are added up afterwards in a fixed order.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ops.h"
#include "powerbert/cpu_attention.h"
#include "powerbert/cpu_blas.h"
#include "powerbert/task_pool.h"

namespace powerbert {

namespace {

// Query rows per task: a block of scores of at most 64K floats (256 KiB, within L2 beside K and V; 128
// rows up to N = 512, where 32-row blocks measured 10% slower), at most 128 and at least 32 rows so the
// GEMMs stay efficient; a function of N alone (see the header comment).
int64_t block_rows(int64_t N) { return std::min<int64_t>(N, std::max<int64_t>(32, std::min<int64_t>(128, 65536 / N))); }

// Below this many multiply-adds per call the work stays on the calling thread: waking the pool costs
// microseconds when idle and up to a scheduler time slice on a loaded machine.
const int64_t kMinParallelMacs = int64_t(1) << 22;

template <typename T>
float to_float(T x) {
  return static_cast<float>(x);
}

// A (rows, d) matrix with row stride `ld` as float: `src` itself when it already is float (no copy),
// else widened into `scratch` (row stride d).
template <typename T>
const float* as_float(const T* src, int64_t ld, int64_t rows, int64_t d, float* scratch, int64_t* ld_out) {
  if constexpr (std::is_same_v<T, float>) {
    *ld_out = ld;
    return src;
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < d; ++j) scratch[r * d + j] = to_float(src[r * ld + j]);
    }
    *ld_out = d;
    return scratch;
  }
}

template <typename T>
void attention_tasks(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                     double scale, bool exclude_self, at::Tensor& out, at::Tensor& partial_votes) {
  const int64_t B = q.size(0), N = q.size(1), H = q.size(2), d = q.size(3);
  const int64_t R = block_rows(N);
  const int64_t blocks = (N + R - 1) / R;
  const int64_t tasks = B * H * blocks;
  // The row stride BLAS sees; a single row's is never used, so any value >= d will do.
  auto ld = [&](const at::Tensor& t) { return N > 1 ? t.stride(1) : d; };
  const int64_t ldq = ld(q), ldk = ld(k), ldv = ld(v), ldo = H * d;
  const T* q_ptr = q.const_data_ptr<T>();
  const T* k_ptr = k.const_data_ptr<T>();
  const T* v_ptr = v.const_data_ptr<T>();
  T* out_ptr = out.data_ptr<T>();
  float* votes_ptr = partial_votes.data_ptr<float>();
  const u8* mask_ptr = static_cast<const u8*>(mask.const_data_ptr());
  const int64_t mask_sb = mask.stride(0), mask_sn = mask.stride(1);

  // Per-slot scratch: scores (R, N), the bias row and row flags, and for 16-bit inputs the widened
  // K, V (N, d), Q block and output block (R, d).
  constexpr bool wide = std::is_same_v<T, float>;
  const int64_t scratch_floats = R * N + N + (wide ? 0 : 2 * N * d + 2 * R * d) + (R + 3) / 4;
  const int64_t macs = B * H * N * N * d * 2;
  const int64_t slots = macs < kMinParallelMacs ? 1 : std::min<int64_t>(tasks, task_threads());
  at::Tensor scratch = at::empty({slots, scratch_floats}, q.options().dtype(at::kFloat));
  float* scratch_ptr = scratch.data_ptr<float>();
  // Per slot: the (batch row, head) whose K, V and padding bias its scratch holds (consecutive tasks of
  // one thread often share them).
  std::vector<int64_t> slot_bh(slots, -1);

  run_tasks(tasks, slots, [&](int64_t task, int slot) {
    float* scores = scratch_ptr + slot * scratch_floats;
    float* bias = scores + R * N;
    float* k32 = bias + N;
    float* v32 = k32 + (wide ? 0 : N * d);
    float* q32 = v32 + (wide ? 0 : N * d);
    float* o32 = q32 + (wide ? 0 : R * d);
    u8* row_real = reinterpret_cast<u8*>(o32 + (wide ? 0 : R * d));
    const int64_t bh = task / blocks, block = task % blocks;
    const int64_t b = bh / H, h = bh % H;
    const int64_t row0 = block * R, rows = std::min(R, N - row0);
    const u8* mask_row = mask_ptr + b * mask_sb;
    const T* k_bh = k_ptr + b * k.stride(0) + h * k.stride(2);
    const T* v_bh = v_ptr + b * v.stride(0) + h * v.stride(2);
    int64_t ldkf = ldk, ldvf = ldv;
    const float* kf = wide ? reinterpret_cast<const float*>(k_bh) : k32;
    const float* vf = wide ? reinterpret_cast<const float*>(v_bh) : v32;
    if (!wide) ldkf = ldvf = d;
    if (slot_bh[slot] != bh) {
      // K, V and the padding bias of this (batch row, head), widened into the slot's scratch.
      as_float(k_bh, ldk, N, d, k32, &ldkf);
      as_float(v_bh, ldv, N, d, v32, &ldvf);
      for (int64_t w = 0; w < N; ++w) bias[w] = mask_row[w * mask_sn] ? 0.f : -FLT_MAX;
      slot_bh[slot] = bh;
    }
    for (int64_t r = 0; r < rows; ++r) row_real[r] = mask_row[(row0 + r) * mask_sn] ? 1 : 0;
    int64_t ldqf = 0;
    const float* qf =
        as_float(q_ptr + b * q.stride(0) + row0 * q.stride(1) + h * q.stride(2), ldq, rows, d, q32, &ldqf);
    // scores (rows, N) = scale * Q_blk K^T.
    gemm_rows(true, rows, N, d, static_cast<float>(scale), qf, ldqf, kf, ldkf, 0.f, scores, N);
    float* votes = votes_ptr + task * N;
    std::fill(votes, votes + N, 0.f);
    cpu::softmax_votes_rows(scores, bias, row_real, rows, N, row0, exclude_self, votes);
    // out rows (rows, d) = P V, written in place for float.
    T* out_block = out_ptr + (b * N + row0) * ldo + h * d;
    if constexpr (wide) {
      gemm_rows(false, rows, d, N, 1.f, scores, N, vf, ldvf, 0.f, out_block, ldo);
    } else {
      gemm_rows(false, rows, d, N, 1.f, scores, N, vf, ldvf, 0.f, o32, d);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < d; ++j) out_block[r * ldo + j] = static_cast<T>(o32[r * d + j]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> attention_significance_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                              const at::Tensor& v_in, const at::Tensor& mask,
                                                              double scale, bool exclude_self) {
  check_attention_args(q_in, k_in, v_in, mask, scale);
  const int64_t B = q_in.size(0), N = q_in.size(1), H = q_in.size(2), d = q_in.size(3);
  // BLAS needs a row stride of at least d; a projection's views always have one, other layouts are
  // copied once.
  auto rows_ok = [&](const at::Tensor& t) { return N <= 1 || t.stride(1) >= d; };
  const at::Tensor q = rows_ok(q_in) ? q_in : q_in.contiguous();
  const at::Tensor k = rows_ok(k_in) ? k_in : k_in.contiguous();
  const at::Tensor v = rows_ok(v_in) ? v_in : v_in.contiguous();
  at::Tensor out = at::empty({B, N, H * d}, q.options());
  at::Tensor significance = at::empty({B, N}, q.options().dtype(at::kFloat));
  if (B == 0) return {out, significance};
  const int64_t blocks = (N + block_rows(N) - 1) / block_rows(N);
  at::Tensor partial = at::empty({B, H * blocks, N}, q.options().dtype(at::kFloat));
  dispatch_float(q.scalar_type(), "powerbert::attention_significance_cpu", [&](auto tag) {
    using Tag = decltype(tag);
    if constexpr (std::is_same_v<Tag, F32>) {
      attention_tasks<float>(q, k, v, mask, scale, exclude_self, out, partial);
    } else if constexpr (std::is_same_v<Tag, F16>) {
      attention_tasks<c10::Half>(q, k, v, mask, scale, exclude_self, out, partial);
    } else {
      attention_tasks<c10::BFloat16>(q, k, v, mask, scale, exclude_self, out, partial);
    }
  });
  // The partial votes of each batch row, added in (head, block) order on the calling thread: a pass over
  // H * N / R floats per row, small beside the attention itself.
  const float* part = partial.const_data_ptr<float>();
  float* sig = significance.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    float* __restrict__ row = sig + b * N;
    const float* src = part + b * H * blocks * N;
    std::copy(src, src + N, row);
    for (int64_t j = 1; j < H * blocks; ++j) {
      const float* __restrict__ add = src + j * N;
      for (int64_t w = 0; w < N; ++w) row[w] += add[w];
    }
  }
  return {out, significance};
}

}  // namespace

void check_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                          double scale) {
  const char* op = "powerbert::attention_significance_cpu";
  TORCH_CHECK(q.dim() == 4, op, ": q must have shape (B, N, H, d), got ", q.sizes());
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16, op,
              ": q must be float32, float16 or bfloat16, got ", q.scalar_type());
  const at::Tensor* others[] = {&k, &v};
  const char* names[] = {"k", "v"};
  for (int i = 0; i < 2; ++i) {
    const at::Tensor& t = *others[i];
    TORCH_CHECK(t.sizes() == q.sizes(), op, ": ", names[i], " must have the shape of q ", q.sizes(), ", got ",
                t.sizes());
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), op, ": ", names[i], " must have the dtype of q (",
                q.scalar_type(), "), got ", t.scalar_type());
    TORCH_CHECK(t.device() == q.device(), op, ": ", names[i], " is on ", t.device(), " but q is on ", q.device());
  }
  const at::Tensor* all[] = {&q, &k, &v};
  const char* all_names[] = {"q", "k", "v"};
  for (int i = 0; i < 3; ++i) {
    TORCH_CHECK(all[i]->size(3) <= 1 || all[i]->stride(3) == 1, op, ": ", all_names[i],
                " must be contiguous in its last dimension (d), got strides ", all[i]->strides());
  }
  const int64_t B = q.size(0), N = q.size(1);
  TORCH_CHECK(mask.dim() == 2 && mask.size(0) == B && mask.size(1) == N, op, ": mask must have shape (B, N) = (", B,
              ", ", N, "), got ", mask.sizes());
  TORCH_CHECK(mask.scalar_type() == at::kBool, op, ": mask must be a bool tensor (True = real token), got ",
              mask.scalar_type());
  TORCH_CHECK(mask.device() == q.device(), op, ": mask is on ", mask.device(), " but q is on ", q.device());
  TORCH_CHECK(N >= 1 && q.size(2) >= 1 && q.size(3) >= 1, op, ": q must have N, H and d of at least 1, got ",
              q.sizes());
  TORCH_CHECK(scale > 0, op, ": scale must be positive, got ", scale);
}

}  // namespace powerbert

TORCH_LIBRARY_IMPL(powerbert, CPU, m) { m.impl("attention_significance_cpu", &powerbert::attention_significance_cpu); }
