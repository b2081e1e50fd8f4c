// Python bindings of quartet_te._C: thin tensor-to-pointer adapters over csrc/quartet.h.
// Python (quartet_te/kernels.py) validates arguments with clear errors first; these checks are
// the last line (QT_HOST_ASSERT carries file and line), run before any launch.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <optional>
#include <vector>

#include "quartet.h"

namespace {

using at::Tensor;
using std::optional;

int kind_of(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return quartet::kF32;
    case at::kBFloat16: return quartet::kBF16;
    case at::kHalf: return quartet::kF16;
    default: QT_HOST_ASSERT(false, std::string("unsupported dtype ") + c10::toString(t.scalar_type()));
  }
  return -1;
}

void check_cuda(const Tensor& t, const Tensor& like, const char* name) {
  QT_HOST_ASSERT(t.is_cuda(), std::string(name) + " must be a CUDA tensor");
  QT_HOST_ASSERT(t.get_device() == like.get_device(), std::string(name) + " is on another device");
  QT_HOST_ASSERT(t.is_contiguous(), std::string(name) + " must be contiguous");
}

uint8_t* u8(const optional<Tensor>& t) { return t ? static_cast<uint8_t*>(t->data_ptr()) : nullptr; }
uint16_t* u16(const optional<Tensor>& t) { return t ? static_cast<uint16_t*>(t->data_ptr()) : nullptr; }
float* f32(const optional<Tensor>& t) { return t ? t->data_ptr<float>() : nullptr; }

// f = {D, M, M4, rot_scale}; mode < 0 disables the direction. `signs` absent with a rotation:
// drawn in the kernel from (seed, sign_offset). `step` (int64, one element): offsets are relative
// to step * stride. Outputs: packed FP4 (data + scales) and/or the BF16 operand.
quartet::DirSpec dir_spec(const Tensor& like, int64_t mode, const std::vector<double>& f, int64_t rot_n,
                          const optional<Tensor>& signs, int64_t seed, int64_t offset, int64_t sign_offset,
                          const optional<Tensor>& step, int64_t stride, const optional<Tensor>& amax,
                          const optional<Tensor>& data, const optional<Tensor>& scales,
                          const optional<Tensor>& operand, const optional<Tensor>& ts, float* amax_ws) {
  quartet::DirSpec d;
  if (mode < 0) return d;
  QT_HOST_ASSERT(mode <= quartet::kEden, "bad mode " + std::to_string(mode));
  QT_HOST_ASSERT(f.size() == 4, "expected 4 constants");
  QT_HOST_ASSERT((data || operand) && bool(data) == bool(scales) && ts, "missing outputs");
  for (const auto* t : {&data, &scales, &operand, &ts})
    if (*t) check_cuda(**t, like, "output");
  QT_HOST_ASSERT(ts->scalar_type() == at::kFloat, "tensor scale must be float32");
  QT_HOST_ASSERT(!operand || operand->scalar_type() == at::kBFloat16, "operand must be bfloat16");
  QT_HOST_ASSERT(rot_n == 0 || rot_n == 16 || rot_n == 128, "rotation must be 0, 16 or 128");
  d.enabled = true;
  d.p.mode = int(mode);
  d.p.D = float(f[0]);
  d.p.M = float(f[1]);
  d.p.M4 = float(f[2]);
  d.p.rot_scale = float(f[3]);
  d.p.rot_n = int(rot_n);
  d.p.signs = nullptr;
  if (signs) {
    check_cuda(*signs, like, "signs");
    QT_HOST_ASSERT(signs->scalar_type() == at::kFloat && signs->numel() == rot_n, "signs: rot_n float32");
    d.p.signs = signs->data_ptr<float>();
  }
  d.p.seed = uint64_t(seed);
  d.p.offset = uint64_t(offset);
  d.p.sign_offset = uint64_t(sign_offset);
  d.p.step = nullptr;
  d.p.step_stride = uint64_t(stride);
  if (step) {
    check_cuda(*step, like, "step");
    QT_HOST_ASSERT(step->scalar_type() == at::kLong && step->numel() == 1, "step must be one int64");
    QT_HOST_ASSERT(stride > 0, "step without a stride");
    d.p.step = step->data_ptr<int64_t>();
  }
  if (amax) {
    check_cuda(*amax, like, "amax");
    QT_HOST_ASSERT(amax->scalar_type() == at::kFloat && amax->numel() == 1, "amax must be one float32");
    d.amax_given = amax->data_ptr<float>();
  }
  d.data = u8(data);
  d.scales = u8(scales);
  d.operand = u16(operand);
  d.tensor_scale = f32(ts);
  d.amax_ws = amax_ws;
  return d;
}

// x: (R, C) float/bf16/fp16, or packed FP4 (R, C/2) uint8 with x_scales (R, C/16) and x_ts.
// One direction's arguments, in order: mode, consts, rot_n, signs, seed, offset, sign_offset, step,
// stride, amax, data, scales, operand, tensor_scale.
#define QT_DIR_ARGS(p)                                                                             \
  int64_t p##_mode, const std::vector<double>&p##_f, int64_t p##_rot, const optional<Tensor>&p##_signs, \
      int64_t p##_seed, int64_t p##_offset, int64_t p##_soff, const optional<Tensor>&p##_step,          \
      int64_t p##_stride, const optional<Tensor>&p##_amax, const optional<Tensor>&p##_data,             \
      const optional<Tensor>&p##_scales, const optional<Tensor>&p##_operand, const optional<Tensor>&p##_ts
#define QT_DIR_SPEC(p, ws)                                                                                 \
  dir_spec(x, p##_mode, p##_f, p##_rot, p##_signs, p##_seed, p##_offset, p##_soff, p##_step, p##_stride,   \
           p##_amax, p##_data, p##_scales, p##_operand, p##_ts, ws)

// x: (R, C) float/bf16/fp16, or packed FP4 (R, C/2) uint8 with x_scales (R, C/16) and x_ts.
void quantize(const Tensor& x, const optional<Tensor>& x_scales, const optional<Tensor>& x_ts, int64_t R,
              int64_t C, QT_DIR_ARGS(row), QT_DIR_ARGS(col), const Tensor& workspace) {
  check_cuda(x, x, "x");
  check_cuda(workspace, x, "workspace");
  QT_HOST_ASSERT(workspace.scalar_type() == at::kFloat && workspace.numel() >= 2, "workspace: 2 float32");
  const c10::cuda::CUDAGuard guard(x.device());
  quartet::QuantizeSpec s;
  s.R = R;
  s.C = C;
  s.x = x.data_ptr();
  if (x.scalar_type() == at::kByte) {
    QT_HOST_ASSERT(x_scales && x_ts, "packed FP4 input needs its scales");
    check_cuda(*x_scales, x, "x_scales");
    check_cuda(*x_ts, x, "x_tensor_scale");
    QT_HOST_ASSERT(x.numel() == R * C / 2 && x_scales->numel() == R * C / 16, "packed FP4 input: bad sizes");
    s.kind = quartet::kNVFP4;
    s.x_scales = u8(x_scales);
    s.x_tensor_scale = f32(x_ts);
  } else {
    s.kind = kind_of(x);
    QT_HOST_ASSERT(x.numel() == R * C, "x: bad size");
  }
  QT_HOST_ASSERT(reinterpret_cast<uintptr_t>(s.x) % 16 == 0, "x must be 16-byte aligned");
  float* ws = workspace.data_ptr<float>();
  s.row = QT_DIR_SPEC(row, ws);
  s.col = QT_DIR_SPEC(col, ws + 1);
  quartet::quantize(s, c10::cuda::getCurrentCUDAStream());
}

void quantize_2d(const Tensor& x, double D, double M, const Tensor& data, const Tensor& scales, const Tensor& ts,
                 const Tensor& workspace) {
  check_cuda(x, x, "x");
  for (const auto* t : {&data, &scales, &ts, &workspace}) check_cuda(*t, x, "output");
  QT_HOST_ASSERT(x.dim() == 2, "x must be 2-D");
  QT_HOST_ASSERT(reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0, "x must be 16-byte aligned");
  const c10::cuda::CUDAGuard guard(x.device());
  quartet::quantize_2d(kind_of(x), x.data_ptr(), x.size(0), x.size(1), float(D), float(M),
                       static_cast<uint8_t*>(data.data_ptr()), static_cast<uint8_t*>(scales.data_ptr()),
                       ts.data_ptr<float>(), workspace.data_ptr<float>(), c10::cuda::getCurrentCUDAStream());
}

void dequantize(const Tensor& data, const Tensor& scales, const Tensor& ts, bool apply_tensor_scale,
                const Tensor& out) {
  check_cuda(data, data, "data");
  for (const auto* t : {&scales, &ts, &out}) check_cuda(*t, data, "tensor");
  QT_HOST_ASSERT(data.dim() == 2 && out.dim() == 2 && out.size(0) == data.size(0) &&
                     out.size(1) == 2 * data.size(1) && scales.numel() == out.numel() / 16,
                 "dequantize: shapes do not match");
  const c10::cuda::CUDAGuard guard(data.device());
  quartet::dequantize(static_cast<const uint8_t*>(data.data_ptr()), static_cast<const uint8_t*>(scales.data_ptr()),
                      ts.data_ptr<float>(), out.size(0), out.size(1), kind_of(out), apply_tensor_scale,
                      out.data_ptr(), c10::cuda::getCurrentCUDAStream());
}

}  // namespace

// csrc/gemm_lt.cpp
bool gemm_bf16(const at::Tensor& a, const at::Tensor& b, const at::Tensor& ta, const at::Tensor& tb,
               const std::optional<at::Tensor>& bias, const at::Tensor& out);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "quartet-te CUDA kernels (NVFP4 quantization, MS-EDEN, re-quantization); see quartet_te/kernels.py";
  m.def("quantize", &quantize, "row-wise and/or column-wise NVFP4 quantization of one input");
  m.def("quantize_2d", &quantize_2d, "16x16-block RTN");
  m.def("dequantize", &dequantize, "decode NVFP4");
  m.def("gemm_bf16", &gemm_bf16, "alpha * a @ b.T (+ bias) through cuBLASLt, alpha = ta * tb read on the device");
}
