// NVFP4 quantization kernels: RTN, Four over Six, element SR, RHT-16/128 + MS-EDEN, the
// transposed (column-wise) outputs, re-quantization of saved FP4, 16x16 weight blocks and
// dequantization. Every operation follows docs/numerics.md bit for bit.
//
// Thread layout, shared by all kernels: a thread owns a "group" of 8 consecutive elements along
// the quantized dim. Two adjacent lanes form a 16-block (reductions by shfl_xor 1); sixteen
// adjacent lanes form a 128-chunk (rotation stages h = 8..64 and the EDEN sums by shfl_xor
// 1, 2, 4, 8), so lane bits 0..3 are always the group's position inside its 128-chunk.
//
// Two quantize kernels:
//  - row_kernel: x (R, C) along C, a flat grid-stride loop over groups (16-byte loads, no smem);
//  - tile_kernel: a 128x128 tile of x through shared memory, producing the column-wise output
//    (x^T along R), optionally the row-wise output from the same read; its input may be packed
//    FP4 (decode -> transpose -> rotate -> MS-EDEN: the backward's re-quantization).
// Each has an AMAX instantiation that computes max |x| (raw and/or rotated) for the tensor scale
// when the caller gives none; the quantize pass then reads it from device memory (no host sync).
#include <algorithm>
#include <type_traits>

#include "common.cuh"

namespace quartet {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kThreads = 256;
constexpr int kTile = 128;  // tile_kernel: 128 rows (x 128 or 64 cols) of x

// ------------------------------------------------------------------------------------------
// Loading 8 consecutive elements as float32 (exact conversions).
// ------------------------------------------------------------------------------------------
template <int KIND>
struct Vec {
  uint4 a;  // 8 x 16-bit
};
template <>
struct Vec<kF32> {
  float4 a, b;
};
template <>
struct Vec<kNVFP4> {
  uint32_t codes;
  uint32_t scale;
};

template <int KIND>
__device__ __forceinline__ Vec<KIND> vzero() {
  Vec<KIND> v;
  memset(&v, 0, sizeof(v));
  return v;
}

// `e` is the element index (multiple of 8) in the row-major (R, C) input; `C` its row length.
template <int KIND>
__device__ __forceinline__ Vec<KIND> vload(const void* x, const uint8_t* xs, int64_t e, int64_t C) {
  Vec<KIND> v;
  if constexpr (KIND == kF32) {
    const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(x) + e);
    v.a = __ldg(p);
    v.b = __ldg(p + 1);
  } else if constexpr (KIND == kNVFP4) {
    v.codes = __ldg(reinterpret_cast<const uint32_t*>(static_cast<const uint8_t*>(x) + e / 2));
    v.scale = __ldg(xs + e / 16);
  } else {
    v.a = __ldg(reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(x) + e));
  }
  return v;
}

__device__ __forceinline__ float bf16_bits_to_float(uint32_t b) { return __uint_as_float(b << 16); }

template <int KIND>
__device__ __forceinline__ void vconvert(const Vec<KIND>& r, float st, float (&v)[8]) {
  if constexpr (KIND == kF32) {
    v[0] = r.a.x, v[1] = r.a.y, v[2] = r.a.z, v[3] = r.a.w;
    v[4] = r.b.x, v[5] = r.b.y, v[6] = r.b.z, v[7] = r.b.w;
  } else if constexpr (KIND == kNVFP4) {
    // (decode(code) * s_b) * s_t, left to right.
    const float sb = e4m3_to_float(uint8_t(r.scale));
    e2m1_decode8(r.codes, v);
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = __fmul_rn(__fmul_rn(v[k], sb), st);
  } else {
    const uint32_t w[4] = {r.a.x, r.a.y, r.a.z, r.a.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if constexpr (KIND == kBF16) {
        v[2 * k] = bf16_bits_to_float(w[k] & 0xffffu);
        v[2 * k + 1] = bf16_bits_to_float(w[k] >> 16);
      } else {
        __half_raw lo, hi;
        lo.x = uint16_t(w[k] & 0xffffu);
        hi.x = uint16_t(w[k] >> 16);
        v[2 * k] = __half2float(__half(lo));
        v[2 * k + 1] = __half2float(__half(hi));
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// Rotation: signs/n, then the butterfly stages h = 1, 2, 4 (in-thread), 8, 16, 32, 64 (lanes),
// then one multiply by sqrt(n) (= n * float32(1/sqrt(n)) exactly: the bits of scaling an unscaled
// butterfly by 1/sqrt(n), without its overflow for |x| near the float32 maximum).
// ------------------------------------------------------------------------------------------
// The 8 signs of this lane's group, pre-multiplied by 1/n (exact): its position in the chunk is
// lane-constant in every loop below (strides are multiples of 16 groups), so they are loaded (or
// drawn) once per kernel. Drawn signs: element i of the chunk is -1 where bit 31 of Philox word i
// of (seed, sign_offset) is set, as `reference.random_signs`.
struct Signs {
  float s[8];
};

__device__ __forceinline__ Signs load_signs(const QuantParams& p, uint64_t sign_offset, uint32_t lane) {
  Signs g;
  if (p.rot_n == 0) {
#pragma unroll
    for (int k = 0; k < 8; ++k) g.s[k] = 1.f;
    return g;
  }
  const float inv_n = p.rot_n == 16 ? 0.0625f : 0.0078125f;
  const int pos0 = int(lane & uint32_t(p.rot_n / 8 - 1)) * 8;
  if (p.signs != nullptr) {
#pragma unroll
    for (int k = 0; k < 8; ++k) g.s[k] = __fmul_rn(__ldg(p.signs + pos0 + k), inv_n);
  } else {
    const U4 r0 = philox_block(p.seed, sign_offset, uint64_t(pos0 / 4));
    const U4 r1 = philox_block(p.seed, sign_offset, uint64_t(pos0 / 4 + 1));
    const uint32_t w[8] = {r0.x, r0.y, r0.z, r0.w, r1.x, r1.y, r1.z, r1.w};
#pragma unroll
    for (int k = 0; k < 8; ++k) g.s[k] = (w[k] >> 31) ? -inv_n : inv_n;
  }
  return g;
}

// The tile kernels share one draw of the rotation's signs per block: 32 threads starting at
// `t0` stage the rot_n signs (pre-multiplied by 1/n) in shared memory, each one Philox block (or
// four entries of p.signs); after a barrier every thread reads its 8 (read_signs). The same
// values as load_signs, for a quarter of a Philox block per thread instead of two.
__device__ __forceinline__ void stage_signs(const QuantParams& p, uint64_t sign_offset, float* dst, int t0) {
  const int j = int(threadIdx.x) - t0;
  if (j < 0 || j >= 32) return;
  float4 v = make_float4(1.f, 1.f, 1.f, 1.f);  // no rotation: ones (rotate8 does not read them)
  if (p.rot_n != 0 && 4 * j < p.rot_n) {
    const float inv_n = p.rot_n == 16 ? 0.0625f : 0.0078125f;
    if (p.signs != nullptr) {
      v = make_float4(__fmul_rn(__ldg(p.signs + 4 * j), inv_n), __fmul_rn(__ldg(p.signs + 4 * j + 1), inv_n),
                      __fmul_rn(__ldg(p.signs + 4 * j + 2), inv_n), __fmul_rn(__ldg(p.signs + 4 * j + 3), inv_n));
    } else {
      const U4 r = philox_block(p.seed, sign_offset, uint64_t(j));
      v = make_float4((r.x >> 31) ? -inv_n : inv_n, (r.y >> 31) ? -inv_n : inv_n, (r.z >> 31) ? -inv_n : inv_n,
                      (r.w >> 31) ? -inv_n : inv_n);
    }
  }
  reinterpret_cast<float4*>(dst)[j] = v;
}

// This lane's 8 staged signs (its group's position in the chunk: lane bits below rot_n / 8).
__device__ __forceinline__ Signs read_signs(const QuantParams& p, const float* src, uint32_t lane) {
  const uint32_t mask = p.rot_n == 16 ? 1u : 15u;
  const float4* q = reinterpret_cast<const float4*>(src) + 2 * (lane & mask);
  const float4 lo = q[0], hi = q[1];
  return Signs{{lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w}};
}

// The Philox streams of a launch: absolute, or relative to the device step counter.
struct Streams {
  uint64_t offset, sign_offset;
};

__device__ __forceinline__ Streams resolve_streams(const QuantParams& p) {
  if (p.step == nullptr) return Streams{p.offset, p.sign_offset};
  const uint64_t base = uint64_t(*p.step) * p.step_stride;
  return Streams{p.offset + base, p.sign_offset + base};
}

// SCALED = false leaves out the final multiply by rot_scale: an amax pass applies it once to its
// maximum instead (scale_key), which gives the same bits because rounding is monotone:
// max_i fl(|v_i| * c) = fl(max_i |v_i| * c) for c > 0.
// ROT: the rotation size if known at compile time (the MS-EDEN kernels: 128), else kAnyRot.
constexpr int kAnyRot = -1;

template <bool SCALED = true, int ROT = kAnyRot>
__device__ __forceinline__ void rotate8(float (&v)[8], const QuantParams& p, const Signs& sg, uint32_t lane) {
  const int rot_n = ROT == kAnyRot ? p.rot_n : ROT;
  if (rot_n == 0) return;
#pragma unroll
  for (int k = 0; k < 8; ++k) v[k] = __fmul_rn(v[k], sg.s[k]);
#pragma unroll
  for (int h = 1; h < 8; h *= 2) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if (i & h) continue;
      const float a = v[i], b = v[i + h];
      v[i] = __fadd_rn(a, b);
      v[i + h] = __fsub_rn(a, b);
    }
  }
  // Across lanes: the lower lane of a pair computes a + b, the upper b' = a - b, both as
  // fma(mine, +-1, other): mine * +-1 is exact, so this is one rounding of the same sum, with
  // no select (the kernels are bound by the ALU pipe). Unrolled only where ROT is known (a
  // run-time trip count would be unrolled with remainder code, at twice the registers).
  const auto stage = [&](int m) {
    const float sgn = (lane & uint32_t(m)) ? -1.f : 1.f;
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = __fmaf_rn(v[k], sgn, __shfl_xor_sync(kFull, v[k], m));
  };
  if constexpr (ROT != kAnyRot) {
#pragma unroll
    for (int m = 1; m < ROT / 8; m *= 2) stage(m);
  } else {
    for (int m = 1; m < rot_n / 8; m *= 2) stage(m);
  }
  if constexpr (SCALED) {
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = __fmul_rn(v[k], p.rot_scale);
  }
}

// The amax key of max |rotate8<true>(v)| from max |rotate8<false>(v)| (NaN stays NaN).
__device__ __forceinline__ unsigned scale_key(float m, const QuantParams& p) {
  return amax_key(p.rot_n == 0 ? m : __fmul_rn(m, p.rot_scale));
}

// Pairwise tree of adjacent elements.
__device__ __forceinline__ float tree8(const float (&t)[8]) {
  const float a0 = __fadd_rn(t[0], t[1]), a1 = __fadd_rn(t[2], t[3]);
  const float a2 = __fadd_rn(t[4], t[5]), a3 = __fadd_rn(t[6], t[7]);
  return __fadd_rn(__fadd_rn(a0, a1), __fadd_rn(a2, a3));
}

__device__ __forceinline__ float max8abs(const float (&v)[8]) {
  float m = 0.f;
#pragma unroll
  for (int k = 0; k < 8; ++k) m = fmaxf(m, fabsf(v[k]));
  return m;
}

// Running max |v| of an amax pass, NaN-propagating (PTX max.NaN, sm_80+: one FMNMX.NAN with the
// |.| folded in, where the bit-pattern key would take a LOP3 and an integer max per element).
// The pass turns it into the order-preserving key once at the end (amax_key: NaN sorts above
// +inf), so a NaN anywhere gives a NaN amax, hence a NaN tensor scale, like the reference's.
// For non-NaN values the max is the same number either way (|v| orders as its bit pattern).
__device__ __forceinline__ float max_abs_nan(float m, float v) {
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(m), "f"(fabsf(v)));
  return r;
}

__device__ __forceinline__ float amax8(float m, const float (&v)[8]) {
#pragma unroll
  for (int k = 0; k < 8; ++k) m = max_abs_nan(m, v[k]);
  return m;
}

__device__ __forceinline__ void warp_atomic_max(unsigned* acc, unsigned m) {
  if (acc == nullptr) return;
#pragma unroll
  for (int s = 16; s > 0; s /= 2) m = max(m, __shfl_xor_sync(kFull, m, s));
  if ((threadIdx.x & 31) == 0) atomicMax(acc, m);
}

// Where a group's outputs go: group `g` (linear index, in units of 8 elements) of a row-major
// quantized matrix. Its codes are the 4 bytes at 4g, its block scale is number g/2, its exact
// BF16 operand values (decode(code) * s_b) the 16 bytes at 16g; its elements have random indices
// 8g .. 8g+7 (sr) and its block random index g/2 (ms_eden). `data` and `operand` may each be
// nullptr (uniform per launch).
struct GroupOut {
  uint8_t* data;
  uint8_t* scales;
  uint16_t* operand;
  uint64_t g;
  bool active;
};

__device__ __forceinline__ void store_operand(const GroupOut& o, const float (&val)[8]) {
  uint32_t w[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(val[2 * k], val[2 * k + 1]);  // exact: <= 6 bits
    w[k] = *reinterpret_cast<const uint32_t*>(&h);
  }
  reinterpret_cast<uint4*>(o.operand)[o.g] = make_uint4(w[0], w[1], w[2], w[3]);
}

// A kernel's quantization mode: fixed at compile time (fewer instructions and registers than the
// generic code, which carries every mode), or kAnyMode: read from QuantParams at run time.
constexpr int kAnyMode = -1;

// Quantizes the (already rotated) group `v`, scaled by rt = inv_scale(tensor scale); `offset` is
// the launch's resolved rounding stream. MODE: kAnyMode or the value of p.mode. MS-EDEN's
// scale-rounding word is Philox word g/2 of (seed, offset): drawn here, or, with PRE_DRAWN,
// passed in as `eden_word` by a kernel that drew it for several groups at once. OPERAND_ONLY:
// the launch writes the BF16 operand only (o.data is nullptr), so the packed codes and the E4M3
// bits are not even computed (the backward's operands on Hopper). All 32 lanes must call it.
template <int MODE, bool PRE_DRAWN = false, bool OPERAND_ONLY = false>
__device__ __forceinline__ void quantize_group(const float (&v)[8], const QuantParams& p, float rt, uint64_t offset,
                                               uint32_t lane, const GroupOut& o, uint32_t eden_word = 0) {
  const int mode = MODE == kAnyMode ? p.mode : MODE;
  float xs[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) xs[k] = __fmul_rn(v[k], rt);
  float ab = max8abs(xs);
  ab = fmaxf(ab, __shfl_xor_sync(kFull, ab, 1));

  uint32_t codes = 0;
  uint8_t sb;
  float val[8];  // decode(code) * s_b: the exact BF16 operand
  if (mode == kFourOverSix) {
    // In magnitudes: the sign of u6, u4 and of both candidates' values is the sign of xs, and
    // |xs| - |d| has the magnitude of xs - d (RNE is symmetric), so the errors, the magnitude
    // codes and the values are computed sign-free and the sign is attached once at the end.
    const uint8_t s6 = block_scale_bits(ab, p.M), s4 = block_scale_bits(ab, p.M4);
    const float f6 = e4m3_to_float(s6), f4 = e4m3_to_float(s4);
    const float y6 = __frcp_rn(f6), y4 = __frcp_rn(f4);  // E4M3 values: normal reciprocals
    uint32_t c6 = 0, c4 = 0;
    float e6[8], e4[8], d6[8], d4[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const float a = fabsf(xs[k]);
      const float b6 = e2m1_rn_biased(__fmul_rn(a, y6)), b4 = e2m1_rn_biased(__fmul_rn(a, y4));
      if constexpr (!OPERAND_ONLY) {
        c6 |= (__float_as_uint(b6) & 7u) << (4 * k);
        c4 |= (__float_as_uint(b4) & 7u) << (4 * k);
      }
      d6[k] = __fmul_rn(e2m1_magnitude(b6), f6);
      d4[k] = __fmul_rn(e2m1_magnitude(b4), f4);
      const float r6 = __fsub_rn(a, d6[k]), r4 = __fsub_rn(a, d4[k]);
      e6[k] = __fmul_rn(r6, r6);
      e4[k] = __fmul_rn(r4, r4);
    }
    float E6 = tree8(e6), E4 = tree8(e4);
    E6 = __fadd_rn(E6, __shfl_xor_sync(kFull, E6, 1));
    E4 = __fadd_rn(E4, __shfl_xor_sync(kFull, E4, 1));
    const bool pick4 = E4 < E6;
    if constexpr (!OPERAND_ONLY) {
      uint32_t signs = 0;
#pragma unroll
      for (int k = 0; k < 8; ++k) signs |= (__float_as_uint(xs[k]) >> 31) << (4 * k + 3);
      codes = (pick4 ? c4 : c6) | signs;
    }
    sb = pick4 ? s4 : s6;
#pragma unroll
    for (int k = 0; k < 8; ++k)
      val[k] = __uint_as_float(__float_as_uint(pick4 ? d4[k] : d6[k]) | (__float_as_uint(xs[k]) & 0x80000000u));
  } else if (mode == kSR) {
    sb = block_scale_bits(ab, p.M);
    const float f = e4m3_to_float(sb), yf = __frcp_rn(f);
    const uint64_t q0 = o.g * 2;  // random indices 8g .. 8g+7 = Philox blocks 2g, 2g+1
    const U4 r0 = philox_block(p.seed, offset, q0), r1 = philox_block(p.seed, offset, q0 + 1);
    const uint32_t r[8] = {r0.x, r0.y, r0.z, r0.w, r1.x, r1.y, r1.z, r1.w};
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const float u = __fmul_rn(xs[k], yf);
      const float a = fminf(fabsf(u), 6.f);
      const int lo_idx = int(a >= 0.5f) + int(a >= 1.f) + int(a >= 1.5f) + int(a >= 2.f) + int(a >= 3.f) +
                         int(a >= 4.f) + int(a >= 6.f);
      const int hi_idx = lo_idx < 7 ? lo_idx + 1 : 7;
      const float lo = e2m1_mag(lo_idx), hi = e2m1_mag(hi_idx);
      // hi - lo is 0.5, 1 or 2: dividing by it is an exact scaling, i.e. a multiply by 2, 1, 0.5.
      const float inv = lo_idx < 4 ? 2.f : (lo_idx < 6 ? 1.f : 0.5f);
      const float pr = hi == lo ? 0.f : __fmul_rn(__fsub_rn(a, lo), inv);
      const uint32_t mag = uniform24(r[k]) < pr ? uint32_t(hi_idx) : uint32_t(lo_idx);
      const uint32_t code = mag | (signbit(u) ? 8u : 0u);
      codes |= code << (4 * k);
      val[k] = __fmul_rn(e2m1_decode(code), f);
    }
  } else {  // kRTN, kEden
    sb = block_scale_bits(ab, p.M);
    const float f = e4m3_to_float(sb), yf = __frcp_rn(f);
    float u[8], dq[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      u[k] = __fmul_rn(xs[k], yf);
      const float b = e2m1_rn_biased(u[k]);
      if constexpr (!OPERAND_ONLY) codes |= e2m1_code(b, u[k]) << (4 * k);
      dq[k] = e2m1_value(b, u[k]);
    }
    float fs = f;
    if (mode == kEden) {
      float nn[8], dd[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        nn[k] = __fmul_rn(u[k], u[k]);
        dd[k] = __fmul_rn(u[k], dq[k]);
      }
      float num = tree8(nn), den = tree8(dd);
#pragma unroll
      for (int m = 1; m < 16; m *= 2) {
        num = __fadd_rn(num, __shfl_xor_sync(kFull, num, m));
        den = __fadd_rn(den, __shfl_xor_sync(kFull, den, m));
      }
      const float c = den == 0.f ? 1.f : __fdiv_rn(num, den);
      const float sc = __fmul_rn(f, c);
      const float vs = sc > 448.f ? 448.f : sc;  // clamp keeping NaN, like the reference
      // E4M3 neighbours of vs: down = toward zero, up = next (or down).
      const uint8_t rn = e4m3_rn_bits(vs);
      const uint8_t down = e4m3_to_float(rn) > vs ? uint8_t(rn - 1) : rn;
      const float downf = e4m3_to_float(down);
      const uint8_t up = (downf == vs || down >= 0x7e) ? down : uint8_t(down + 1);
      const float upf = e4m3_to_float(up);
      // up - down is one E4M3 step, a power of two (normal in float32: 2^-9 .. 2^5), so the
      // division by it is the multiplication by its exact reciprocal: the same bits, fewer
      // instructions (both round the same real number once).
      const float step = __fsub_rn(upf, downf);
      const float inv_step = __int_as_float(0x7f000000 - __float_as_int(step));
      const float pr = upf == downf ? 0.f : __fmul_rn(__fsub_rn(vs, downf), inv_step);
      const uint32_t word = PRE_DRAWN ? eden_word : philox_word(p.seed, offset, o.g >> 1);
      const bool take_up = uniform24(word) < pr;
      sb = take_up ? up : down;
      fs = take_up ? upf : downf;
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) val[k] = __fmul_rn(dq[k], fs);
  }
  if (o.active) {
    if constexpr (!OPERAND_ONLY) {
      if (o.data != nullptr) {
        reinterpret_cast<uint32_t*>(o.data)[o.g] = codes;
        if ((lane & 1u) == 0) o.scales[o.g >> 1] = sb;
      }
    }
    if (OPERAND_ONLY || o.operand != nullptr) store_operand(o, val);
  }
}

// ------------------------------------------------------------------------------------------
// row_kernel: x (R, C) along C.
// ------------------------------------------------------------------------------------------
struct RowArgs {
  const void* x;
  int64_t R, C;
  QuantParams p;
  const float* amax;  // quantize pass
  uint8_t* data;
  uint8_t* scales;
  uint16_t* operand;
  float* tensor_scale;
  unsigned* acc_raw;  // amax pass: max |x|
  unsigned* acc_rot;  // amax pass: max |rotate(x)|
};

// Blocks per SM the row kernels are compiled for: the mode-specialised quantizers 4 (64
// registers; they are bound by instruction issue, which needs the warps more than the
// registers), the others 3 (85); float32 inputs one block less (their 8-element loads would spill).
template <int KIND, bool AMAX, int MODE>
constexpr int row_min_blocks() {
  return ((!AMAX && MODE != kAnyMode) ? 4 : 3) - (KIND == kF32 ? 1 : 0);
}

// MODE: kAnyMode or the launch's mode (kEden: with the 128-point rotation). OPERAND_ONLY: the
// launch writes the BF16 operand only.
template <int KIND, bool AMAX, int MODE, bool OPERAND_ONLY>
__global__ void __launch_bounds__(kThreads, row_min_blocks<KIND, AMAX, MODE>()) row_kernel(RowArgs a) {
  constexpr int kRot = MODE == kEden ? 128 : kAnyRot;
  constexpr int kUnroll = AMAX ? 4 : 2;
  const int64_t G = a.R * (a.C / 8);
  const int64_t T = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const uint32_t lane = threadIdx.x & 31u;
  float st = 1.f, rt = 1.f;
  if constexpr (!AMAX) {
    st = tensor_scale(*a.amax, a.p.D);
    rt = inv_scale(st);
    if (tid == 0) *a.tensor_scale = st;
  }
  float mraw = 0.f, mrot = 0.f;
  const Streams streams = resolve_streams(a.p);
  const Signs sg = load_signs(a.p, streams.sign_offset, lane);
  // Software pipeline: the loads of the next kUnroll groups are in flight while these are
  // quantized (the kernel is latency-bound otherwise: one 16-byte load per thread at a time).
  Vec<KIND> cur[kUnroll], nxt[kUnroll];
#pragma unroll
  for (int s = 0; s < kUnroll; ++s) {
    const int64_t g = s * T + tid;
    cur[s] = g < G ? vload<KIND>(a.x, nullptr, g * 8, a.C) : vzero<KIND>();
  }
  for (int64_t base = 0; base < G; base += T * kUnroll) {  // uniform trip count: shuffles stay converged
#pragma unroll
    for (int s = 0; s < kUnroll; ++s) {
      const int64_t g = base + T * kUnroll + s * T + tid;
      nxt[s] = g < G ? vload<KIND>(a.x, nullptr, g * 8, a.C) : vzero<KIND>();
    }
#pragma unroll
    for (int s = 0; s < kUnroll; ++s) {
      const int64_t g = base + s * T + tid;
      float v[8];
      vconvert<KIND>(cur[s], 1.f, v);
      if constexpr (AMAX) {
        if (a.acc_raw != nullptr) mraw = amax8(mraw, v);
        if (a.acc_rot != nullptr) {
          rotate8<false, kRot>(v, a.p, sg, lane);
          mrot = amax8(mrot, v);
        }
      } else {
        rotate8<true, kRot>(v, a.p, sg, lane);
        quantize_group<MODE, false, OPERAND_ONLY>(v, a.p, rt, streams.offset, lane,
                                                  GroupOut{a.data, a.scales, a.operand, uint64_t(g), g < G});
      }
    }
#pragma unroll
    for (int s = 0; s < kUnroll; ++s) cur[s] = nxt[s];
  }
  if constexpr (AMAX) {
    warp_atomic_max(a.acc_raw, amax_key(mraw));
    warp_atomic_max(a.acc_rot, scale_key(mrot, a.p));
  }
}

// ------------------------------------------------------------------------------------------
// tile_kernel: a 128x128 tile of x through shared memory; column-wise output (x^T along R),
// and the row-wise one from the same read when both are asked for.
// ------------------------------------------------------------------------------------------
struct TileArgs {
  const void* x;
  const uint8_t* x_scales;
  const float* x_tensor_scale;
  int64_t R, C;
  bool do_row, do_col;
  QuantParams prow, pcol;
  const float* amax_row;
  const float* amax_col;
  uint8_t *row_data, *row_scales, *col_data, *col_scales;
  uint16_t *row_operand, *col_operand;
  float *row_ts, *col_ts;
  unsigned *acc_raw, *acc_rowrot, *acc_colrot;  // amax pass
};

// The tile in shared memory, row stride TC. 16-bit inputs keep their own bits (half the shared
// memory of floats: twice the tiles per SM where registers allow; converting on each read is
// exact); float and decoded FP4 inputs are kept as floats. Columns are XOR-swizzled in units of
// 16 bytes by bits of r / 8, so that the column reads of 16 lanes (rows 8 l + k, l = lane & 15)
// spread over the banks (2-way at most) while 16-byte row accesses stay contiguous; the swizzle
// of the rows 8 l .. 8 l + 7 is one value, so a column read is a base plus k * TC.
template <int KIND, int TC>
struct SmemTile {
  static constexpr bool kHalf = KIND == kBF16 || KIND == kF16;
  using T = typename std::conditional<kHalf, uint16_t, float>::type;
  static constexpr int kPerChunk = 16 / sizeof(T);                      // elements per 16 bytes
  static constexpr int kSwizzleMask = kHalf ? TC / 8 - 1 : 7;           // chunks XORed
  static constexpr int kBytes = kTile * TC * int(sizeof(T));
  T* t;

  __device__ __forceinline__ static int idx(int r, int c) {
    return r * TC + (c ^ (((r >> 3) & kSwizzleMask) * kPerChunk));
  }
  __device__ __forceinline__ static float to_float(T e) {
    if constexpr (KIND == kBF16) {
      return bf16_bits_to_float(e);
    } else if constexpr (KIND == kF16) {
      __half_raw h;
      h.x = e;
      return __half2float(__half(h));
    } else {
      return e;
    }
  }
  // The 8 elements of row r from column 8 c8, from their loaded form.
  __device__ __forceinline__ void store_group(int r, int c8, const Vec<KIND>& raw, float st_in) const {
    if constexpr (kHalf) {
      *reinterpret_cast<uint4*>(t + idx(r, 8 * c8)) = raw.a;
    } else {
      float v[8];
      vconvert<KIND>(raw, st_in, v);
      *reinterpret_cast<float4*>(t + idx(r, 8 * c8)) = make_float4(v[0], v[1], v[2], v[3]);
      *reinterpret_cast<float4*>(t + idx(r, 8 * c8 + 4)) = make_float4(v[4], v[5], v[6], v[7]);
    }
  }
  __device__ __forceinline__ void load_row(int r, int c8, float (&v)[8]) const {
    if constexpr (kHalf) {
      Vec<KIND> raw;
      raw.a = *reinterpret_cast<const uint4*>(t + idx(r, 8 * c8));
      vconvert<KIND>(raw, 1.f, v);
    } else {
      const float4 lo = *reinterpret_cast<const float4*>(t + idx(r, 8 * c8));
      const float4 hi = *reinterpret_cast<const float4*>(t + idx(r, 8 * c8 + 4));
      v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w, v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
    }
  }
  // Rows 8 r8 .. 8 r8 + 7 of column c.
  __device__ __forceinline__ void load_col(int r8, int c, float (&v)[8]) const {
    const T* base = t + idx(8 * r8, c);
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = to_float(base[k * TC]);
  }
};

// MS-EDEN's scale-rounding words of one direction of a tile, drawn once per Philox block (four
// 16-blocks) instead of once per group: along the quantized dim a tile line (a row of the tile
// for the row-wise output, a column for the column-wise one) holds 128 elements = 8 blocks = 2
// Philox blocks, starting at a multiple of 8 blocks (the quantized dim and the tile origin are
// multiples of 128). `first_group(line)` is the global group index of the line's first element.
// Thread t draws Philox block t & 1 of line t >> 1; lines >= `lines` are skipped.
template <typename FirstGroup>
__device__ __forceinline__ void draw_eden_words(uint4* words, int lines, const QuantParams& p, uint64_t offset,
                                                FirstGroup first_group) {
  const int line = threadIdx.x >> 1, half = threadIdx.x & 1;
  if (line < lines) {
    const U4 r = philox_block(p.seed, offset, (first_group(line) >> 3) + uint64_t(half));
    words[2 * line + half] = make_uint4(r.x, r.y, r.z, r.w);
  }
}

// The pre-drawn word of the group at position `pos` (0..15) along its tile line.
__device__ __forceinline__ uint32_t eden_word(const uint4* words, int line, int pos) {
  return reinterpret_cast<const uint32_t*>(words)[8 * line + (pos >> 1)];
}

// Blocks per SM the tile kernels are compiled for (registers capped to fit; without a cap ptxas
// keeps the whole tile's decoded loads in registers): amax passes 5 (48 registers; 4 for full
// 128-wide tiles, whose 8 loads per thread would spill), MS-EDEN 4 (64), the generic quantizer 3
// (80).
template <int KIND, bool AMAX, int TC, int MODE>
constexpr int tile_min_blocks() {
  return AMAX ? (TC == kTile ? 4 : 5) : MODE == kEden ? 4 : 3;
}

// TC: tile width, 128 when a row-wise output (whose 128-chunks must fit) is produced, else 64
// (half the shared memory: more tiles in flight per SM for the column-wise-only launches).
// MODE: kAnyMode, or the mode of every enabled direction (kEden: with the 128-point rotation, its
// rounding words pre-drawn). OPERAND_ONLY: every enabled direction writes the BF16 operand only.
template <int KIND, bool AMAX, int TC, int MODE, bool OPERAND_ONLY>
__global__ void __launch_bounds__(kThreads, tile_min_blocks<KIND, AMAX, TC, MODE>()) tile_kernel(TileArgs a) {
  extern __shared__ float4 smem4[];
  using Tile = SmemTile<KIND, TC>;
  const Tile tile{reinterpret_cast<typename Tile::T*>(smem4)};
  constexpr bool kPreDrawn = MODE == kEden && !AMAX;
  constexpr int kRot = MODE == kEden ? 128 : kAnyRot;
  __shared__ uint4 words_row[kPreDrawn && TC == kTile ? 2 * kTile : 1];
  __shared__ uint4 words_col[kPreDrawn ? 2 * TC : 1];
  constexpr int kIters = kTile * TC / 8 / kThreads;  // 8 or 4
  constexpr int kGpr = TC / 8;                       // groups per tile row
  const int64_t R0 = int64_t(blockIdx.y) * kTile, C0 = int64_t(blockIdx.x) * TC;
  const int t = threadIdx.x;
  const uint32_t lane = t & 31u;
  const bool first = blockIdx.x == 0 && blockIdx.y == 0 && t == 0;

  float st_in = 1.f, st_row = 1.f, st_col = 1.f, rt_row = 1.f, rt_col = 1.f;
  if constexpr (KIND == kNVFP4) st_in = *a.x_tensor_scale;
  if constexpr (!AMAX) {
    if (a.do_row) {
      st_row = tensor_scale(*a.amax_row, a.prow.D);
      rt_row = inv_scale(st_row);
      if (first) *a.row_ts = st_row;
    }
    if (a.do_col) {
      st_col = tensor_scale(*a.amax_col, a.pcol.D);
      rt_col = inv_scale(st_col);
      if (first) *a.col_ts = st_col;
    }
  }

  // The rotations' signs, staged by warp 0 (rows) and warp 1 (columns) before the tile loads are
  // issued (their registers are not live across the Philox rounds).
  const Streams str_row = resolve_streams(a.prow);
  const Streams str_col = resolve_streams(a.pcol);
  __shared__ float4 signs_sm4[2][kTile / 4];
  stage_signs(a.prow, str_row.sign_offset, reinterpret_cast<float*>(signs_sm4[0]), 0);
  stage_signs(a.pcol, str_col.sign_offset, reinterpret_cast<float*>(signs_sm4[1]), 32);

  // Load the tile: group (r, c8) = 8 consecutive columns of row r; all loads issued first.
  Vec<KIND> raw[kIters];
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int grp = it * kThreads + t, r = grp / kGpr, c8 = grp % kGpr;
    const int64_t gr = R0 + r, gc = C0 + 8 * c8;
    raw[it] = (gr < a.R && gc < a.C) ? vload<KIND>(a.x, a.x_scales, gr * a.C + gc, a.C) : vzero<KIND>();
  }
  if constexpr (kPreDrawn) {  // while the loads are in flight
    if constexpr (TC == kTile) {
      if (a.do_row)
        draw_eden_words(words_row, kTile, a.prow, str_row.offset,
                        [&](int r) { return uint64_t(R0 + r) * uint64_t(a.C / 8) + uint64_t(C0 / 8); });
    }
    if (a.do_col)
      draw_eden_words(words_col, TC, a.pcol, str_col.offset,
                      [&](int c) { return uint64_t(C0 + c) * uint64_t(a.R / 8) + uint64_t(R0 / 8); });
  }
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int grp = it * kThreads + t;
    tile.store_group(grp / kGpr, grp % kGpr, raw[it], st_in);
  }
  __syncthreads();

  // Row-wise pass (from shared memory: keeps one copy of the quantizer in the code).
  float mraw = 0.f, mrow = 0.f, mcol = 0.f;
  const bool row_pass = AMAX ? (a.acc_raw != nullptr || a.acc_rowrot != nullptr) : a.do_row;
  const Signs sg_row = read_signs(a.prow, reinterpret_cast<const float*>(signs_sm4[0]), lane);  // rows: lane & 15 is the group's position
  if (row_pass) {
    // This thread's groups: rows r0 + it * kRowsPerIt, column group c8; output group index
    // g0 + it * (kRowsPerIt * C / 8) (computed once: the loop's own index math is 64-bit).
    constexpr int kRowsPerIt = kThreads / kGpr;
    const int r0 = t / kGpr, c8 = t % kGpr;
    const uint64_t g0 = uint64_t(R0 + r0) * uint64_t(a.C / 8) + uint64_t((C0 + 8 * c8) / 8);
    const uint64_t dg = uint64_t(kRowsPerIt) * uint64_t(a.C / 8);
    const int rows_left = int(std::min<int64_t>(a.R - R0, kTile)) - r0;  // rows r0 + ... < this
    const bool col_ok = C0 + 8 * c8 < a.C;
#pragma unroll 1
    for (int it = 0; it < kIters; ++it) {
      const int r = r0 + it * kRowsPerIt;
      float v[8];
      tile.load_row(r, c8, v);
      if constexpr (AMAX) {
        if (a.acc_raw != nullptr) mraw = amax8(mraw, v);
        if (a.acc_rowrot != nullptr) {
          rotate8<false, kRot>(v, a.prow, sg_row, lane);
          mrow = amax8(mrow, v);
        }
      } else {
        rotate8<true, kRot>(v, a.prow, sg_row, lane);
        const GroupOut o{a.row_data, a.row_scales, a.row_operand, g0 + uint64_t(it) * dg,
                         col_ok && it * kRowsPerIt < rows_left};
        if constexpr (kPreDrawn && TC == kTile)
          quantize_group<MODE, true, OPERAND_ONLY>(v, a.prow, rt_row, str_row.offset, lane, o,
                                                   eden_word(words_row, r, c8));
        else
          quantize_group<MODE, false, OPERAND_ONLY>(v, a.prow, rt_row, str_row.offset, lane, o);
      }
    }
  }

  const bool col_pass = AMAX ? a.acc_colrot != nullptr : a.do_col;
  const Signs sg_col = read_signs(a.pcol, reinterpret_cast<const float*>(signs_sm4[1]), lane);  // columns: lane & 15 is r8
  if (col_pass) {
    // Columns c0 + 16 it, row group r8 (lane & 15); output group g0 + it * (16 R / 8).
    const int c0 = t >> 4, r8 = t & 15;
    const uint64_t g0 = uint64_t(C0 + c0) * uint64_t(a.R / 8) + uint64_t((R0 + 8 * r8) / 8);
    const uint64_t dg = uint64_t(kThreads / 16) * uint64_t(a.R / 8);
    const int cols_left = int(std::min<int64_t>(a.C - C0, TC)) - c0;
    const bool row_ok = R0 + 8 * r8 < a.R;
#pragma unroll 1
    for (int it = 0; it < kIters; ++it) {
      const int c = c0 + it * (kThreads / 16);
      float v[8];
      tile.load_col(r8, c, v);
      if constexpr (AMAX) {
        rotate8<false, kRot>(v, a.pcol, sg_col, lane);
        mcol = amax8(mcol, v);
      } else {
        rotate8<true, kRot>(v, a.pcol, sg_col, lane);
        const GroupOut o{a.col_data, a.col_scales, a.col_operand, g0 + uint64_t(it) * dg,
                         row_ok && it * (kThreads / 16) < cols_left};
        if constexpr (kPreDrawn)
          quantize_group<MODE, true, OPERAND_ONLY>(v, a.pcol, rt_col, str_col.offset, lane, o,
                                                   eden_word(words_col, c, r8));
        else
          quantize_group<MODE, false, OPERAND_ONLY>(v, a.pcol, rt_col, str_col.offset, lane, o);
      }
    }
  }
  if constexpr (AMAX) {
    warp_atomic_max(a.acc_raw, amax_key(mraw));
    warp_atomic_max(a.acc_rowrot, scale_key(mrow, a.prow));
    warp_atomic_max(a.acc_colrot, scale_key(mcol, a.pcol));
  }
}

// ------------------------------------------------------------------------------------------
// 16x16-block RTN: one warp per 16x16 tile (lane = 2 * row + half).
// ------------------------------------------------------------------------------------------
template <int KIND>
__global__ void __launch_bounds__(kThreads) q2d_kernel(const void* x, int64_t R, int64_t C, float D, float M,
                                                       const float* amax, uint8_t* data, uint8_t* scales,
                                                       float* ts) {
  const int64_t tiles_c = C / 16, tiles = (R / 16) * tiles_c;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const uint32_t lane = threadIdx.x & 31u;
  const float st = tensor_scale(*amax, D), rt = inv_scale(st);
  if (blockIdx.x == 0 && threadIdx.x == 0) *ts = st;
  for (int64_t w = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; w < tiles; w += warps) {
    const int64_t row = (w / tiles_c) * 16 + lane / 2, col0 = (w % tiles_c) * 16 + (lane & 1u) * 8;
    float v[8];
    vconvert<KIND>(vload<KIND>(x, nullptr, row * C + col0, C), 1.f, v);
    float xs[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) xs[k] = __fmul_rn(v[k], rt);
    float m = max8abs(xs);
#pragma unroll
    for (int s = 16; s > 0; s /= 2) m = fmaxf(m, __shfl_xor_sync(kFull, m, s));
    const uint8_t sb = block_scale_bits(m, M);
    const float yf = __frcp_rn(e4m3_to_float(sb));
    uint32_t codes = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) codes |= e2m1_rn(__fmul_rn(xs[k], yf)) << (4 * k);
    *reinterpret_cast<uint32_t*>(data + row * (C / 2) + col0 / 2) = codes;
    if ((lane & 1u) == 0) scales[row * (C / 16) + col0 / 16] = sb;
  }
}

// ------------------------------------------------------------------------------------------
// Dequantize: one thread per group of 8.
// ------------------------------------------------------------------------------------------
template <int OUT>
__global__ void __launch_bounds__(kThreads) dequant_kernel(const uint8_t* data, const uint8_t* scales,
                                                           const float* ts, int64_t R, int64_t C, bool apply_ts,
                                                           void* out) {
  const int64_t G = R * (C / 8);
  const float st = apply_ts ? *ts : 1.f;
  for (int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; g < G; g += int64_t(gridDim.x) * blockDim.x) {
    const uint32_t codes = __ldg(reinterpret_cast<const uint32_t*>(data) + g);
    const float sb = e4m3_to_float(__ldg(scales + g / 2));
    float v[8];
    e2m1_decode8(codes, v);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      v[k] = __fmul_rn(v[k], sb);
      if (apply_ts) v[k] = __fmul_rn(v[k], st);
    }
    if constexpr (OUT == kF32) {
      float4* o = reinterpret_cast<float4*>(out) + 2 * g;
      o[0] = make_float4(v[0], v[1], v[2], v[3]);
      o[1] = make_float4(v[4], v[5], v[6], v[7]);
    } else {
      uint32_t w[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if constexpr (OUT == kBF16) {
          const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
          w[k] = *reinterpret_cast<const uint32_t*>(&h);
        } else {
          const __half2 h = __floats2half2_rn(v[2 * k], v[2 * k + 1]);
          w[k] = *reinterpret_cast<const uint32_t*>(&h);
        }
      }
      reinterpret_cast<uint4*>(out)[g] = make_uint4(w[0], w[1], w[2], w[3]);
    }
  }
}

__global__ void fill_one(float* a, float* b) {
  float* p = threadIdx.x == 0 ? a : b;
  if (p != nullptr) *p = 1.f;
}

// ------------------------------------------------------------------------------------------
// Host side
// ------------------------------------------------------------------------------------------
int num_sms() {
  static int n = [] {
    int dev = 0, v = 0;
    QT_CUDA_CHECK(cudaGetDevice(&dev));
    QT_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    return v;
  }();
  return n;
}

int grid_for(int64_t work_items, int per_block, int blocks_per_sm) {
  const int64_t need = (work_items + per_block - 1) / per_block;
  const int64_t cap = int64_t(num_sms()) * blocks_per_sm;
  return int(std::max<int64_t>(1, std::min(need, cap)));
}

template <int KIND, bool AMAX, int MODE, bool OPERAND_ONLY = false>
void launch_row_mode(const RowArgs& a, cudaStream_t stream) {
  row_kernel<KIND, AMAX, MODE, OPERAND_ONLY><<<grid_for(a.R * (a.C / 8), kThreads * 2, 8), kThreads, 0, stream>>>(a);
  QT_LAUNCH_CHECK();
}

// The forward's Four over Six and the backward's MS-EDEN get kernels specialised to their mode;
// the other modes share the generic one. An amax pass does not quantize: its MODE = kEden only
// fixes the rotation at 128 points (unrolled stages), used where its rotated maximum is one.
template <int KIND, bool AMAX>
void launch_row(const RowArgs& a, cudaStream_t stream) {
  if constexpr (AMAX) {
    if (a.acc_rot != nullptr && a.p.rot_n == 128) return launch_row_mode<KIND, AMAX, kEden>(a, stream);
  } else {
    if (a.p.mode == kFourOverSix) return launch_row_mode<KIND, AMAX, kFourOverSix>(a, stream);
    if (a.p.mode == kEden && a.p.rot_n == 128) {
      if (a.data == nullptr) return launch_row_mode<KIND, AMAX, kEden, true>(a, stream);
      return launch_row_mode<KIND, AMAX, kEden>(a, stream);
    }
  }
  launch_row_mode<KIND, AMAX, kAnyMode>(a, stream);
}

template <int KIND, bool AMAX, int TC, int MODE, bool OPERAND_ONLY>
void launch_tile_tc(const TileArgs& a, cudaStream_t stream) {
  constexpr int smem = SmemTile<KIND, TC>::kBytes;
  static bool configured = [] {
    QT_CUDA_CHECK(cudaFuncSetAttribute(tile_kernel<KIND, AMAX, TC, MODE, OPERAND_ONLY>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    return true;
  }();
  (void)configured;
  const dim3 grid(unsigned((a.C + TC - 1) / TC), unsigned((a.R + kTile - 1) / kTile));
  QT_HOST_ASSERT(grid.y <= 65535u, "too many rows for the tile grid");
  tile_kernel<KIND, AMAX, TC, MODE, OPERAND_ONLY><<<grid, kThreads, smem, stream>>>(a);
  QT_LAUNCH_CHECK();
}

template <int KIND, bool AMAX, int MODE, bool OPERAND_ONLY = false>
void launch_tile_mode(const TileArgs& a, cudaStream_t stream) {
  const bool rowwise = AMAX ? a.acc_rowrot != nullptr : a.do_row;
  if (rowwise) launch_tile_tc<KIND, AMAX, 128, MODE, OPERAND_ONLY>(a, stream);
  else launch_tile_tc<KIND, AMAX, 64, MODE, OPERAND_ONLY>(a, stream);
}

// MS-EDEN in every enabled direction (the backward's e, and the re-quantization of the saved
// operands) gets the specialised kernel with pre-drawn rounding words.
template <int KIND, bool AMAX>
void launch_tile(const TileArgs& a, cudaStream_t stream) {
  if constexpr (AMAX) {  // rotated maxima all of 128-point rotations: unrolled stages (kEden)
    const bool row_ok = a.acc_rowrot == nullptr || a.prow.rot_n == 128;
    const bool col_ok = a.acc_colrot == nullptr || a.pcol.rot_n == 128;
    if ((a.acc_rowrot != nullptr || a.acc_colrot != nullptr) && row_ok && col_ok)
      return launch_tile_mode<KIND, AMAX, kEden>(a, stream);
  } else {
    const auto eden = [](const QuantParams& p) { return p.mode == kEden && p.rot_n == 128; };
    if ((!a.do_row || eden(a.prow)) && (!a.do_col || eden(a.pcol))) {
      if ((!a.do_row || a.row_data == nullptr) && (!a.do_col || a.col_data == nullptr))
        return launch_tile_mode<KIND, AMAX, kEden, true>(a, stream);
      return launch_tile_mode<KIND, AMAX, kEden>(a, stream);
    }
  }
  launch_tile_mode<KIND, AMAX, kAnyMode>(a, stream);
}

template <template <int, bool> class F, bool AMAX, typename Args>
void by_kind(int kind, const Args& a, cudaStream_t stream) {
  switch (kind) {
    case kF32: F<kF32, AMAX>::run(a, stream); break;
    case kBF16: F<kBF16, AMAX>::run(a, stream); break;
    case kF16: F<kF16, AMAX>::run(a, stream); break;
    default: QT_HOST_ASSERT(false, "unsupported input kind " + std::to_string(kind));
  }
}
template <int KIND, bool AMAX>
struct RowLaunch {
  static void run(const RowArgs& a, cudaStream_t s) { launch_row<KIND, AMAX>(a, s); }
};

void launch_tile_kind(int kind, bool amax, const TileArgs& a, cudaStream_t s) {
  switch (kind * 2 + int(amax)) {
    case kF32 * 2: launch_tile<kF32, false>(a, s); break;
    case kF32 * 2 + 1: launch_tile<kF32, true>(a, s); break;
    case kBF16 * 2: launch_tile<kBF16, false>(a, s); break;
    case kBF16 * 2 + 1: launch_tile<kBF16, true>(a, s); break;
    case kF16 * 2: launch_tile<kF16, false>(a, s); break;
    case kF16 * 2 + 1: launch_tile<kF16, true>(a, s); break;
    case kNVFP4 * 2: launch_tile<kNVFP4, false>(a, s); break;
    case kNVFP4 * 2 + 1: launch_tile<kNVFP4, true>(a, s); break;
    default: QT_HOST_ASSERT(false, "unsupported input kind " + std::to_string(kind));
  }
}

void check_dir(const DirSpec& d, int64_t cols, const char* name) {
  if (!d.enabled) return;
  QT_HOST_ASSERT((d.data || d.operand) && (!d.data == !d.scales) && d.tensor_scale,
                 std::string(name) + ": missing output pointers");
  QT_HOST_ASSERT(!d.p.step || d.p.step_stride, std::string(name) + ": step counter without a stride");
  QT_HOST_ASSERT(d.amax_given || d.amax_ws, std::string(name) + ": missing amax workspace");
  QT_HOST_ASSERT(d.p.rot_n == 0 || d.p.rot_n == 16 || d.p.rot_n == 128, "rotation must be 0, 16 or 128");
  const int64_t mult = (d.p.mode == kEden || d.p.rot_n == 128) ? 128 : 16;
  QT_HOST_ASSERT(cols % mult == 0, std::string(name) + ": quantized dim " + std::to_string(cols) +
                                       " is not a multiple of " + std::to_string(mult));
}

}  // namespace

void quantize(const QuantizeSpec& s, cudaStream_t stream) {
  QT_HOST_ASSERT(s.row.enabled || s.col.enabled, "nothing to quantize");
  QT_HOST_ASSERT(s.R >= 0 && s.C % 16 == 0, "C must be a multiple of 16");
  QT_HOST_ASSERT(!s.col.enabled || s.R % 16 == 0, "R must be a multiple of 16 for the column-wise output");
  QT_HOST_ASSERT(s.kind != kNVFP4 || (!s.row.enabled && s.x_scales && s.x_tensor_scale),
                 "packed FP4 input: column-wise output only, with its scales");
  check_dir(s.row, s.C, "row-wise");
  check_dir(s.col, s.R, "column-wise");
  if (s.R == 0 || s.C == 0) {  // empty: tensor scale 1 (amax 0), nothing else to write
    fill_one<<<1, 2, 0, stream>>>(s.row.enabled ? s.row.tensor_scale : nullptr,
                                  s.col.enabled ? s.col.tensor_scale : nullptr);
    QT_LAUNCH_CHECK();
    return;
  }

  // Resolve where each direction's amax comes from; a raw max |x| is shared by both directions.
  float *ws_raw = nullptr, *ws_rowrot = nullptr, *ws_colrot = nullptr;
  const float* amax_row = s.row.amax_given;
  const float* amax_col = s.col.amax_given;
  if (s.row.enabled && !amax_row) {
    if (s.row.p.rot_n == 0) amax_row = ws_raw = s.row.amax_ws;
    else amax_row = ws_rowrot = s.row.amax_ws;
  }
  if (s.col.enabled && !amax_col) {
    if (s.col.p.rot_n == 0) amax_col = ws_raw ? ws_raw : (ws_raw = s.col.amax_ws);
    else amax_col = ws_colrot = s.col.amax_ws;
  }
  // Zero the accumulators: one memset over the span of those in use when they are adjacent (the
  // extension puts both directions' workspaces side by side), else one each.
  float* lo = nullptr;
  float* hi = nullptr;
  int used = 0;
  for (float* w : {ws_raw, ws_rowrot, ws_colrot}) {
    if (!w) continue;
    ++used;
    lo = (!lo || w < lo) ? w : lo;
    hi = (!hi || w > hi) ? w : hi;
  }
  if (used && hi - lo + 1 == used) {
    QT_CUDA_CHECK(cudaMemsetAsync(lo, 0, size_t(used) * sizeof(float), stream));
  } else {
    for (float* w : {ws_raw, ws_rowrot, ws_colrot})
      if (w) QT_CUDA_CHECK(cudaMemsetAsync(w, 0, sizeof(float), stream));
  }

  TileArgs t{};
  t.x = s.x;
  t.x_scales = s.x_scales;
  t.x_tensor_scale = s.x_tensor_scale;
  t.R = s.R;
  t.C = s.C;
  t.do_row = s.row.enabled;
  t.do_col = s.col.enabled;
  t.prow = s.row.p;
  t.pcol = s.col.p;

  // Amax pass (one read of x at most).
  if (ws_colrot || (s.kind == kNVFP4 && (ws_raw || ws_rowrot))) {
    TileArgs am = t;
    am.acc_raw = reinterpret_cast<unsigned*>(ws_raw);
    am.acc_rowrot = reinterpret_cast<unsigned*>(ws_rowrot);
    am.acc_colrot = reinterpret_cast<unsigned*>(ws_colrot);
    launch_tile_kind(s.kind, true, am, stream);
  } else if (ws_raw || ws_rowrot) {
    RowArgs am{};
    am.x = s.x;
    am.R = s.R;
    am.C = s.C;
    am.p = s.row.p;
    am.acc_raw = reinterpret_cast<unsigned*>(ws_raw);
    am.acc_rot = reinterpret_cast<unsigned*>(ws_rowrot);
    by_kind<RowLaunch, true>(s.kind, am, stream);
  }

  // Quantize pass.
  if (s.col.enabled) {
    t.amax_row = amax_row;
    t.amax_col = amax_col;
    t.row_data = s.row.data;
    t.row_scales = s.row.scales;
    t.row_operand = s.row.operand;
    t.row_ts = s.row.tensor_scale;
    t.col_data = s.col.data;
    t.col_scales = s.col.scales;
    t.col_operand = s.col.operand;
    t.col_ts = s.col.tensor_scale;
    launch_tile_kind(s.kind, false, t, stream);
  } else {
    RowArgs q{};
    q.x = s.x;
    q.R = s.R;
    q.C = s.C;
    q.p = s.row.p;
    q.amax = amax_row;
    q.data = s.row.data;
    q.scales = s.row.scales;
    q.operand = s.row.operand;
    q.tensor_scale = s.row.tensor_scale;
    by_kind<RowLaunch, false>(s.kind, q, stream);
  }
}

void quantize_2d(int kind, const void* x, int64_t R, int64_t C, float D, float M, uint8_t* data, uint8_t* scales,
                 float* ts, float* amax_ws, cudaStream_t stream) {
  QT_HOST_ASSERT(R % 16 == 0 && C % 16 == 0, "quantize_2d: R and C must be multiples of 16");
  if (R == 0 || C == 0) {
    fill_one<<<1, 2, 0, stream>>>(ts, nullptr);
    QT_LAUNCH_CHECK();
    return;
  }
  QT_CUDA_CHECK(cudaMemsetAsync(amax_ws, 0, sizeof(float), stream));
  RowArgs am{};
  am.x = x;
  am.R = R;
  am.C = C;
  am.acc_raw = reinterpret_cast<unsigned*>(amax_ws);
  by_kind<RowLaunch, true>(kind, am, stream);
  const int grid = grid_for((R / 16) * (C / 16), kThreads / 32, 8);
  switch (kind) {
    case kF32: q2d_kernel<kF32><<<grid, kThreads, 0, stream>>>(x, R, C, D, M, amax_ws, data, scales, ts); break;
    case kBF16: q2d_kernel<kBF16><<<grid, kThreads, 0, stream>>>(x, R, C, D, M, amax_ws, data, scales, ts); break;
    case kF16: q2d_kernel<kF16><<<grid, kThreads, 0, stream>>>(x, R, C, D, M, amax_ws, data, scales, ts); break;
    default: QT_HOST_ASSERT(false, "unsupported input kind");
  }
  QT_LAUNCH_CHECK();
}

void dequantize(const uint8_t* data, const uint8_t* scales, const float* ts, int64_t R, int64_t C, int out_kind,
                bool apply_ts, void* out, cudaStream_t stream) {
  QT_HOST_ASSERT(C % 16 == 0, "dequantize: C must be a multiple of 16");
  if (R == 0 || C == 0) return;
  const int grid = grid_for(R * (C / 8), kThreads, 16);
  switch (out_kind) {
    case kF32: dequant_kernel<kF32><<<grid, kThreads, 0, stream>>>(data, scales, ts, R, C, apply_ts, out); break;
    case kBF16: dequant_kernel<kBF16><<<grid, kThreads, 0, stream>>>(data, scales, ts, R, C, apply_ts, out); break;
    case kF16: dequant_kernel<kF16><<<grid, kThreads, 0, stream>>>(data, scales, ts, R, C, apply_ts, out); break;
    default: QT_HOST_ASSERT(false, "unsupported output kind");
  }
  QT_LAUNCH_CHECK();
}

}  // namespace quartet
