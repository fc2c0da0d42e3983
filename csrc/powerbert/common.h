// Shared definitions of the PoWER-BERT extension's device and host code.
//
// No torch includes and no standard headers: this file also compiles under NVRTC (which has no C++
// standard library) for the compile check of old GPU architectures. Everything here is plain C++
// usable from host code and, under a CUDA compiler, from device code.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define PB_HD __host__ __device__ __forceinline__
#else
#define PB_HD inline
#endif

namespace powerbert {

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

// ---------------------------------------------------------------------------------------------
// Element types. The kernels read 16-bit floats as raw bits and widen them to float themselves,
// so the device code needs neither cuda_fp16.h nor any fp16 arithmetic (sm_37 has none): all
// arithmetic is float.
// ---------------------------------------------------------------------------------------------

PB_HD float float_from_bits(u32 bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  __builtin_memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

PB_HD u32 bits_from_float(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  u32 bits;
  __builtin_memcpy(&bits, &f, sizeof bits);
  return bits;
#endif
}

struct F32 {
  typedef float storage;
  static PB_HD float to_float(float x) { return x; }
};

struct F16 {
  typedef u16 storage;
  static PB_HD float to_float(u16 h) {
#if defined(__CUDA_ARCH__)
    // One conversion instruction on every architecture since sm_20 (exact, handles subnormals,
    // infinities and NaN).
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#else
    // Branch-free IEEE half -> float (the method PyTorch's c10 uses): normal numbers by moving the
    // exponent and mantissa into place and rescaling, subnormals through a magic-number subtraction.
    // Exact, and written without branches so the compiler can vectorise loops over it.
    const u32 w = static_cast<u32>(h) << 16;
    const u32 sign = w & 0x80000000u;
    const u32 two_w = w + w;
    const float normalized = float_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float denormalized = float_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
    const u32 magnitude = two_w < (1u << 27) ? bits_from_float(denormalized) : bits_from_float(normalized);
    return float_from_bits(sign | magnitude);
#endif
  }
};

struct BF16 {
  typedef u16 storage;
  // bfloat16 is the upper half of a float: widening is exact and costs one shift.
  static PB_HD float to_float(u16 h) { return float_from_bits(static_cast<u32>(h) << 16); }
};

// ---------------------------------------------------------------------------------------------
// Selection order of select-and-gather.
//
// Every position of a row gets a 64-bit key; larger keys are preferred and all keys of a row are
// distinct, so "keep the `keep` largest keys" is a strict total order and rank(i) = number of keys
// larger than key(i) is a permutation of 0..N-1. Layout, from the most significant bit:
//   bits 62-63  class: 2 = CLS (the row's first real position), 1 = real token, 0 = padding;
//   bits 30-61  significance as an order-preserving unsigned integer (real tokens only, else 0);
//   bits  0-29  (2^30 - 1 - position), so that ties go to the lower position.
// Padding and CLS carry no significance bits, so padding is ordered by position alone.
// ---------------------------------------------------------------------------------------------

const i64 kMaxPositions = i64(1) << 30;

// Maps a float to an unsigned integer with the same order, as torch.sort(descending=True) sees it:
// NaN above +inf (all NaNs equal), -0.0 equal to +0.0.
PB_HD u32 ordered_bits(float s) {
  u32 u = bits_from_float(s);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0xFFFFFFFFu;  // NaN
  if (u == 0x80000000u) u = 0u;                             // -0.0 -> +0.0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

PB_HD u64 selection_key(bool is_cls, bool is_real, float significance, i64 position) {
  const u64 cls = is_cls ? 2ull : (is_real ? 1ull : 0ull);
  const u64 sig = (!is_cls && is_real) ? static_cast<u64>(ordered_bits(significance)) : 0ull;
  return (cls << 62) | (sig << 30) | static_cast<u64>(kMaxPositions - 1 - position);
}

}  // namespace powerbert
