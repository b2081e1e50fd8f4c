// Host-side API of the quartet-te kernels (no torch, no device code): the launchers that
// csrc/bindings.cpp calls, their argument structs, and the one macro family for checks.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include <cuda_runtime_api.h>

// ---------------------------------------------------------------------------------------------
// Checks: one macro family, each recording file and line (DeepGEMM-style).
// ---------------------------------------------------------------------------------------------
namespace quartet {

struct Error : public std::runtime_error {
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

[[noreturn]] inline void fail(const char* file, int line, const std::string& what) {
  throw Error(std::string("quartet_te._C: ") + what + " (" + file + ":" + std::to_string(line) + ")");
}

}  // namespace quartet

#define QT_HOST_ASSERT(cond, msg)                                                        \
  do {                                                                                   \
    if (!(cond)) ::quartet::fail(__FILE__, __LINE__, std::string("check failed: ") +    \
                                                         #cond + ": " + (msg));          \
  } while (0)

#define QT_CUDA_CHECK(expr)                                                              \
  do {                                                                                   \
    cudaError_t qt_err_ = (expr);                                                        \
    if (qt_err_ != cudaSuccess)                                                          \
      ::quartet::fail(__FILE__, __LINE__, std::string("CUDA error: ") +                 \
                                              cudaGetErrorString(qt_err_) + " in " #expr); \
  } while (0)

// After every launch: catches configuration errors at once (asynchronous faults surface at the
// next synchronizing call, as usual).
#define QT_LAUNCH_CHECK() QT_CUDA_CHECK(cudaGetLastError())

namespace quartet {

// ---------------------------------------------------------------------------------------------
// Modes and constants (values come from Python, computed in float64 and rounded once).
// ---------------------------------------------------------------------------------------------
enum Mode : int { kRTN = 0, kFourOverSix = 1, kSR = 2, kEden = 3, kNone = 4 };

struct QuantParams {
  int mode;            // Mode
  float D;             // tensor-scale divisor
  float M;             // block-scale divisor (M6, M_SR or M_EDEN)
  float M4;            // four_over_six second candidate
  int rot_n;           // 0 (no rotation), 16 or 128
  float rot_scale;     // sqrt(rot_n) as float32 (the butterfly runs on chunks pre-scaled by 1/rot_n)
  const float* signs;  // rot_n floats (+-1), device; nullptr: drawn from Philox (seed, sign_offset)
  uint64_t seed;
  uint64_t offset;       // Philox stream of the random rounding (sr, ms_eden)
  uint64_t sign_offset;  // Philox stream of the signs when `signs` is nullptr
  // Device step counter (int64): when set, both streams are relative to step * step_stride, so
  // the launch needs no host-side step and replays correctly inside a CUDA graph.
  const int64_t* step;
  uint64_t step_stride;
};

enum InKind : int { kF32 = 0, kBF16 = 1, kF16 = 2, kNVFP4 = 3 };

// One output direction of a quantize launch ("row": along C of x (R, C); "col": along R, i.e.
// the quantization of x^T, an (C, R) matrix).
struct DirSpec {
  bool enabled = false;
  QuantParams p{};
  uint8_t* data = nullptr;          // (rows, cols/2) packed codes, or nullptr (no FP4 copy)
  uint8_t* scales = nullptr;        // (rows, cols/16) E4M3 bits (with data)
  uint16_t* operand = nullptr;      // (rows, cols) bf16 decode(code) * s_b, or nullptr
  float* tensor_scale = nullptr;    // 0-d
  const float* amax_given = nullptr;  // caller's amax, or nullptr to compute it
  float* amax_ws = nullptr;           // one float of workspace, used when computing
};

struct QuantizeSpec {
  int kind = kF32;                  // InKind of x
  const void* x = nullptr;          // (R, C) row-major; packed FP4 (R, C/2) for kNVFP4
  const uint8_t* x_scales = nullptr;  // kNVFP4 only: (R, C/16)
  const float* x_tensor_scale = nullptr;  // kNVFP4 only
  int64_t R = 0, C = 0;
  DirSpec row, col;
};

// amax pass(es) where needed, then one quantize pass; both directions from one read of x.
void quantize(const QuantizeSpec& spec, cudaStream_t stream);

// 16x16-block RTN (NVIDIA's weight quantizer), scales replicated per row: (R, C/16).
void quantize_2d(int kind, const void* x, int64_t R, int64_t C, float D, float M, uint8_t* data,
                 uint8_t* scales, float* tensor_scale, float* amax_ws, cudaStream_t stream);

// decode(code) * s_b (* s_t if apply_tensor_scale) -> out (kF32, kBF16 or kF16), (R, C).
void dequantize(const uint8_t* data, const uint8_t* scales, const float* tensor_scale, int64_t R,
                int64_t C, int out_kind, bool apply_tensor_scale, void* out, cudaStream_t stream);

// alpha_beta[0] = ta * tb, alpha_beta[1] = 0: the device-side alpha/beta of the emulated GEMM's
// cuBLASLt epilogue (tensor scales never travel to the host).
void gemm_alpha(const float* ta, const float* tb, float* alpha_beta, cudaStream_t stream);

}  // namespace quartet
