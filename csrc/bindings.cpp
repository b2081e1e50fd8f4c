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

// A `dtype` tensor of `sizes` at `byte_offset` in `base`'s allocation (as at::empty makes one,
// but sharing the storage: no allocation, no dispatcher call; freed with the last user).
Tensor carve(const Tensor& base, int64_t byte_offset, c10::IntArrayRef sizes, at::ScalarType dtype) {
  Tensor t = at::detail::make_tensor<c10::TensorImpl>(c10::Storage(base.storage()),
                                                      c10::DispatchKeySet(c10::DispatchKey::CUDA),
                                                      c10::scalarTypeToTypeMeta(dtype));
  c10::TensorImpl* impl = t.unsafeGetTensorImpl();
  impl->set_storage_offset(byte_offset / int64_t(c10::elementSize(dtype)));
  impl->set_sizes_contiguous(sizes);
  return t;
}

int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

// Every output of one quantize call, allocated here in as few allocations as their lifetimes
// allow (host time: each allocation costs microseconds, and a linear's step makes five calls):
// per direction [data (uint8), scales (float8_e4m3fn), tensor_scale (0-d float32), operand
// (bfloat16)], undefined (None in Python) where not emitted. One direction's packed codes and
// scales share one allocation (they are saved together); the BF16 operand has its own (it is
// freed after its GEMM); both tensor scales and the two floats of amax workspace (`ws`) sit in a
// 16-byte tail of the first packed-FP4 allocation, or in their own 16 bytes without one.
// emit: 1 packed FP4 (+ scales), 2 the BF16 operand, 3 both; 0 (direction disabled) nothing.
// poison >= 0 fills every emitted byte with it first (tests: an unwritten element shows up).
struct Outputs {
  std::vector<Tensor> row, col;
  float* ws = nullptr;
};

Outputs make_outputs(const Tensor& x, int64_t R, int64_t C, int64_t row_emit, int64_t col_emit, int64_t poison,
                     cudaStream_t stream) {
  const auto u8o = x.options().dtype(at::kByte);
  const int64_t fp4_bytes = R * C / 2 + R * C / 16;  // the same for x (R, C) and x^T (C, R)
  Tensor bundle[2], meta;
  int64_t meta_off = 0;
  for (int d = 0; d < 2; ++d) {
    if (!((d == 0 ? row_emit : col_emit) & 1)) continue;
    const bool tail = !meta.defined();
    bundle[d] = at::empty({round16(fp4_bytes) + (tail ? 16 : 0)}, u8o);
    if (tail) {
      meta = bundle[d];
      meta_off = round16(fp4_bytes);
    }
  }
  if (!meta.defined()) meta = at::empty({16}, u8o);
  Outputs out;
  for (int d = 0; d < 2; ++d) {
    const int64_t emit = d == 0 ? row_emit : col_emit;
    const int64_t rows = d == 0 ? R : C, cols = d == 0 ? C : R;
    std::vector<Tensor> o(4);
    if (emit & 1) {
      o[0] = carve(bundle[d], 0, {rows, cols / 2}, at::kByte);
      o[1] = carve(bundle[d], rows * cols / 2, {rows, cols / 16}, at::kFloat8_e4m3fn);
    }
    if (emit) o[2] = carve(meta, meta_off + 4 * d, {}, at::kFloat);
    if (emit & 2) o[3] = at::empty({rows, cols}, x.options().dtype(at::kBFloat16));
    if (poison >= 0)
      for (const Tensor& t : o)
        if (t.defined() && t.numel()) QT_CUDA_CHECK(cudaMemsetAsync(t.data_ptr(), int(poison), t.nbytes(), stream));
    (d == 0 ? out.row : out.col) = std::move(o);
  }
  out.ws = reinterpret_cast<float*>(static_cast<uint8_t*>(meta.data_ptr()) + meta_off + 8);
  return out;
}

// f = {D, M, M4, rot_scale}; mode < 0 disables the direction. `signs` absent with a rotation:
// drawn in the kernel from (seed, sign_offset). `step` (int64, one element): offsets are relative
// to step * stride. `outs`: this direction's tensors from make_outputs.
quartet::DirSpec dir_spec(const Tensor& like, int64_t mode, const std::vector<double>& f, int64_t rot_n,
                          const optional<Tensor>& signs, int64_t seed, int64_t offset, int64_t sign_offset,
                          const optional<Tensor>& step, int64_t stride, const optional<Tensor>& amax,
                          int64_t emit, const std::vector<Tensor>& outs, float* amax_ws) {
  quartet::DirSpec d;
  if (mode < 0) return d;
  QT_HOST_ASSERT(mode <= quartet::kEden, "bad mode " + std::to_string(mode));
  QT_HOST_ASSERT(f.size() == 4, "expected 4 constants");
  QT_HOST_ASSERT(emit >= 1 && emit <= 3, "emit must be 1 (FP4), 2 (BF16 operand) or 3 (both)");
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
  d.data = (emit & 1) ? static_cast<uint8_t*>(outs[0].data_ptr()) : nullptr;
  d.scales = (emit & 1) ? static_cast<uint8_t*>(outs[1].data_ptr()) : nullptr;
  d.tensor_scale = outs[2].data_ptr<float>();
  d.operand = (emit & 2) ? static_cast<uint16_t*>(outs[3].data_ptr()) : nullptr;
  d.amax_ws = amax_ws;
  return d;
}

// One direction's arguments, in order: mode, consts, rot_n, signs, seed, offset, sign_offset, step,
// stride, amax, emit.
#define QT_DIR_ARGS(p)                                                                             \
  int64_t p##_mode, const std::vector<double>&p##_f, int64_t p##_rot, const optional<Tensor>&p##_signs, \
      int64_t p##_seed, int64_t p##_offset, int64_t p##_soff, const optional<Tensor>&p##_step,          \
      int64_t p##_stride, const optional<Tensor>&p##_amax, int64_t p##_emit
#define QT_DIR_SPEC(p, outs, ws)                                                                           \
  dir_spec(x, p##_mode, p##_f, p##_rot, p##_signs, p##_seed, p##_offset, p##_soff, p##_step, p##_stride,   \
           p##_amax, p##_emit, outs, ws)

// x: (R, C) float/bf16/fp16, or packed FP4 (R, C/2) uint8 with x_scales (R, C/16) and x_ts (one
// float32). Returns the row-wise [data, scales, tensor_scale, operand] (x along C) then the
// column-wise ones (x^T along R), allocated here.
std::vector<Tensor> quantize(const Tensor& x, const optional<Tensor>& x_scales, const optional<Tensor>& x_ts,
                             int64_t R, int64_t C, QT_DIR_ARGS(row), QT_DIR_ARGS(col), int64_t poison) {
  check_cuda(x, x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  quartet::QuantizeSpec s;
  s.R = R;
  s.C = C;
  s.x = x.data_ptr();
  if (x.scalar_type() == at::kByte) {
    QT_HOST_ASSERT(x_scales && x_ts, "packed FP4 input needs its scales");
    check_cuda(*x_scales, x, "x_scales");
    check_cuda(*x_ts, x, "x_tensor_scale");
    QT_HOST_ASSERT(x_scales->element_size() == 1 && x_ts->scalar_type() == at::kFloat && x_ts->numel() == 1,
                   "packed FP4 input: one-byte block scales and one float32 tensor scale");
    QT_HOST_ASSERT(x.numel() == R * C / 2 && x_scales->numel() == R * C / 16, "packed FP4 input: bad sizes");
    s.kind = quartet::kNVFP4;
    s.x_scales = static_cast<uint8_t*>(x_scales->data_ptr());
    s.x_tensor_scale = x_ts->data_ptr<float>();
  } else {
    s.kind = kind_of(x);
    QT_HOST_ASSERT(x.numel() == R * C, "x: bad size");
  }
  QT_HOST_ASSERT(reinterpret_cast<uintptr_t>(s.x) % 16 == 0, "x must be 16-byte aligned");
  Outputs out = make_outputs(x, R, C, row_mode >= 0 ? row_emit : 0, col_mode >= 0 ? col_emit : 0, poison, stream);
  s.row = QT_DIR_SPEC(row, out.row, out.ws);
  s.col = QT_DIR_SPEC(col, out.col, out.ws + 1);
  quartet::quantize(s, stream);
  out.row.insert(out.row.end(), out.col.begin(), out.col.end());
  return out.row;
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
std::optional<at::Tensor> gemm_bf16(const at::Tensor& a, const at::Tensor& b, const at::Tensor& ta,
                                    const at::Tensor& tb, const std::optional<at::Tensor>& bias, int64_t out_kind);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "quartet-te CUDA kernels (NVFP4 quantization, MS-EDEN, re-quantization); see quartet_te/kernels.py";
  m.def("quantize", &quantize, "row-wise and/or column-wise NVFP4 quantization of one input (allocates its outputs)");
  m.def("quantize_2d", &quantize_2d, "16x16-block RTN");
  m.def("dequantize", &dequantize, "decode NVFP4");
  m.def("gemm_bf16", &gemm_bf16, "alpha * a @ b.T (+ bias) through cuBLASLt, alpha = ta * tb read on the device (None: no algorithm)");
}
