// Device helpers shared by the quartet-te kernels: the NVFP4 format and Philox4x32-10. Free of torch headers so that nvcc can compile-check every .cu
// file on a machine without a CUDA build of torch (tests/csrc/test_compile.py).
//
// Every arithmetic step follows docs/numerics.md: IEEE float32, round-to-nearest-even, no FMA
// contraction (explicit __fmul_rn / __fadd_rn / __fsub_rn / __fdiv_rn), no flush-to-zero.
// Element-wise scaling multiplies by correctly rounded reciprocals (one per tensor, one per
// block); divisions remain only per tensor, block or 128-chunk.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include "quartet.h"

namespace quartet {

// ---------------------------------------------------------------------------------------------
// Philox4x32-10 (Random123 constants), keyed by the 64-bit seed, counter (n/4, offset).
// ---------------------------------------------------------------------------------------------
struct U4 {
  uint32_t x, y, z, w;
};

__device__ __forceinline__ U4 philox4x32_10(U4 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kW0;
      k1 += kW1;
    }
    const uint32_t hi0 = __umulhi(kM0, ctr.x), lo0 = kM0 * ctr.x;
    const uint32_t hi1 = __umulhi(kM1, ctr.z), lo1 = kM1 * ctr.z;
    ctr = U4{hi1 ^ ctr.y ^ k0, lo1, hi0 ^ ctr.w ^ k1, lo0};
  }
  return ctr;
}

// The four words for random indices 4q .. 4q+3.
__device__ __forceinline__ U4 philox_block(uint64_t seed, uint64_t offset, uint64_t q) {
  return philox4x32_10(U4{uint32_t(q), uint32_t(q >> 32), uint32_t(offset), uint32_t(offset >> 32)},
                       uint32_t(seed), uint32_t(seed >> 32));
}

__device__ __forceinline__ uint32_t philox_word(uint64_t seed, uint64_t offset, uint64_t n) {
  const U4 r = philox_block(seed, offset, n >> 2);
  switch (n & 3) {
    case 0: return r.x;
    case 1: return r.y;
    case 2: return r.z;
    default: return r.w;
  }
}

// f = (r >> 8) * 2^-24, exact.
__device__ __forceinline__ float uniform24(uint32_t r) { return __fmul_rn(float(r >> 8), 5.9604644775390625e-08f); }

// ---------------------------------------------------------------------------------------------
// E2M1 and E4M3
// ---------------------------------------------------------------------------------------------
// Kept for SR (lo / hi grid magnitudes): 0, .5, 1, 1.5, 2, 3, 4, 6 without a local-memory table.
__device__ __forceinline__ float e2m1_mag(int idx) {
  const float lin = 0.5f * float(idx);                 // exact for idx <= 4 (0..2)
  return idx <= 4 ? lin : (idx == 5 ? 3.f : (idx == 6 ? 4.f : 6.f));
}

// The kernels are bound by the ALU pipe (compares, selects, logic; ncu on the H100): the E2M1
// helpers below do their work on the FMA pipe instead. Adding M = 1.5 * 2^23 in
// round-to-nearest-even leaves rint(t) (ties to even) in the low mantissa bits of t + M.

// RTN to E2M1 (ties to even) -> 4-bit code. Same result as counting the midpoints passed
// (> .25, >= .75, > 1.25, >= 1.75, > 2.5, >= 3.5, > 5): the code is rint(2m) below 2,
// rint(m) + 2 up to 4, rint(m/2) + 4 above, and the smallest of the three (each biased by M, so
// float order is integer order) is always the right one; m saturates at 6. e2m1_rn_biased
// returns that smallest candidate, the float M + i of the magnitude index i (exact): its low
// bits are i (e2m1_code) and M + i - M is i as a float (e2m1_value), with no integer round trip.
__device__ __forceinline__ float e2m1_rn_biased(float u) {
  const float m = fminf(fabsf(u), 6.f);
  const float a = __fmaf_rn(m, 2.f, 12582912.f);   // M + rint(2m)      (2m exact: one rounding)
  const float b = __fadd_rn(m, 12582914.f);        // M + 2 + rint(m)
  const float c = __fmaf_rn(m, 0.5f, 12582916.f);  // M + 4 + rint(m/2) (m/2 exact inside the FMA)
  return fminf(a, fminf(b, c));
}

__device__ __forceinline__ uint32_t e2m1_code(float biased, float u) {
  return (__float_as_uint(biased) & 7u) | ((__float_as_uint(u) >> 28) & 8u);
}

__device__ __forceinline__ uint32_t e2m1_rn(float u) { return e2m1_code(e2m1_rn_biased(u), u); }

// The magnitude of e2m1_rn_biased's result, i = biased - M in 0..7 -> 0, .5, 1, 1.5, 2, 3, 4, 6:
// max(i/2, i - 2, 2i - 8), each line straight from the biased float with one exact operation
// (the constants M/2, M + 2 and 2M + 8 are float32 integers, every result a small exact value).
__device__ __forceinline__ float e2m1_magnitude(float biased) {
  const float half_i = __fmaf_rn(biased, 0.5f, -6291456.f);  // i/2
  const float i_m2 = __fsub_rn(biased, 12582914.f);          // i - 2
  const float two_i_m8 = __fmaf_rn(biased, 2.f, -25165832.f);  // 2i - 8
  return fmaxf(fmaxf(half_i, i_m2), two_i_m8);
}

// The value of e2m1_code(biased, u): its magnitude with the sign of u (code 8, from u = -0 or a
// negative u rounding to 0, is -0).
__device__ __forceinline__ float e2m1_value(float biased, float u) {
  return __uint_as_float(__float_as_uint(e2m1_magnitude(biased)) | (__float_as_uint(u) & 0x80000000u));
}

// Value of an E2M1 code: magnitude max(i/2, i - 2, 3i - 15) for i = code & 7 (exact small
// integers), sign from bit 3 (code 8 decodes to -0).
__device__ __forceinline__ float e2m1_decode(uint32_t code) {
  const float i = __fsub_rn(__uint_as_float((code & 7u) | 0x4B400000u), 12582912.f);
  const float mag = fmaxf(fmaxf(__fmul_rn(i, 0.5f), __fsub_rn(i, 2.f)), __fmaf_rn(i, 3.f, -15.f));
  return __uint_as_float(__float_as_uint(mag) | ((code & 8u) << 28));
}

// The 8 codes of a word (code k in bits 4k .. 4k+3) decoded two at a time, for the decoding
// loads: E2M1 is FP16 with a 2-bit exponent (bias 1 instead of 15) and a 1-bit mantissa, so the
// magnitude bits e1 e0 m placed at FP16 bits 11..9 (sign at 15) give 2^-14 times the value,
// subnormal range included (e1 e0 = 0); codes k and k + 4 share one FP16x2 word, one exact FP16
// multiply by 2^14 and exact conversions finish it. The same values as e2m1_decode (-0 for 8).
__device__ __forceinline__ void e2m1_decode8(uint32_t w, float (&v)[8]) {
  const __half2 two14 = __halves2half2(__ushort_as_half(0x7400), __ushort_as_half(0x7400));
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const uint32_t t = w >> (4 * k);
    const uint32_t h = ((t << 9) & 0x0E000E00u) | ((t << 12) & 0x80008000u);
    __half2 x;
    memcpy(&x, &h, sizeof(h));
    const float2 f = __half22float2(__hmul2(x, two14));
    v[k] = f.x;
    v[k + 4] = f.y;
  }
}

__device__ __forceinline__ uint8_t e4m3_rn_bits(float v) {
  return uint8_t(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
}

__device__ __forceinline__ float e4m3_to_float(uint8_t bits) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t(bits), __NV_E4M3);
  return __half2float(__half(h));
}

// 1 / s correctly rounded, capped at the float32 maximum (a subnormal tensor scale would give
// inf); NaN stays NaN (the comparison is false). Quantizers multiply by it (docs/numerics.md).
__device__ __forceinline__ float inv_scale(float s) {
  const float r = __fdiv_rn(1.f, s);
  return r > 3.40282346638528859812e+38f ? 3.40282346638528859812e+38f : r;
}

// Tensor scale s_t = amax / D, with the edge cases of docs/numerics.md.
__device__ __forceinline__ float tensor_scale(float amax, float D) {
  if (!isfinite(amax)) return __int_as_float(0x7fc00000);
  const float st = __fdiv_rn(amax, D);
  return (amax == 0.f || st == 0.f) ? 1.f : st;
}

// Block scale s_b = e4m3_rn(min(a_b / M, 448)); zero -> 1. Returns the bits.
__device__ __forceinline__ uint8_t block_scale_bits(float ab, float M) {
  const float q = __fdiv_rn(ab, M);
  const float v = q > 448.f ? 448.f : q;  // clamp keeping NaN, like the reference
  const uint8_t b = e4m3_rn_bits(v);
  return (b & 0x7f) == 0 ? uint8_t(0x38) /* 1.0 */ : b;
}

// Order-preserving key for atomicMax over |x| (NaN sorts above +inf).
__device__ __forceinline__ unsigned amax_key(float a) { return __float_as_uint(fabsf(a)); }

}  // namespace quartet
