// The emulated (Hopper) NVFP4 GEMM's one BF16 GEMM, through cuBLASLt:
//   D (M x N, row-major) = alpha * A (M x K) . B (N x K)^T  [+ bias (N)],   alpha = s_tA * s_tB
// with A and B the exact BF16 operands decode(code) * s_b, FP32 accumulation, and alpha read from
// device memory (CUBLASLT_POINTER_MODE_DEVICE): the epilogue applies alpha, the bias and the cast
// to D's dtype in the same pass, with no FP32 product in memory and no host synchronisation.
// Host code only (torch glue for the handle, the stream and the workspace); csrc/gemm.cu holds
// the alpha kernel.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cublasLt.h>
#include <torch/extension.h>

#include <map>
#include <mutex>
#include <optional>
#include <tuple>

#include "quartet.h"

#define QT_CUBLAS_CHECK(expr)                                                                   \
  do {                                                                                          \
    const cublasStatus_t qt_st_ = (expr);                                                       \
    if (qt_st_ != CUBLAS_STATUS_SUCCESS)                                                        \
      ::quartet::fail(__FILE__, __LINE__, std::string("cuBLASLt error ") + std::to_string(int(qt_st_)) + \
                                              " in " #expr);                                    \
  } while (0)

namespace {

using at::Tensor;

cudaDataType_t cuda_type(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16: return CUDA_R_16BF;
    case at::kHalf: return CUDA_R_16F;
    case at::kFloat: return CUDA_R_32F;
    default: QT_HOST_ASSERT(false, std::string("unsupported GEMM dtype ") + c10::toString(t));
  }
  return CUDA_R_32F;
}

int alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int al = 256;
  while (al > 1 && a % al) al /= 2;
  return al;
}

// One cached plan per problem: descriptors, layouts and the heuristic's algorithm. The bias
// pointer is set per call (under the lock, right before the launch).
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool ok = false;  // the heuristic found an algorithm
};

using Key = std::tuple<int64_t, int64_t, int64_t, int, int, int, int, int, int, int, size_t>;

std::mutex g_mutex;
std::map<Key, Plan> g_plans;

Plan make_plan(cublasLtHandle_t handle, int64_t M, int64_t N, int64_t K, cudaDataType_t out_t, int bias_t,
               int align_a, int align_b, int align_d, int align_bias, size_t ws) {
  Plan p;
  QT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
  const cublasLtPointerMode_t pm = CUBLASLT_POINTER_MODE_DEVICE;
  QT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof(opT)));
  QT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof(opN)));
  QT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_POINTER_MODE, &pm, sizeof(pm)));
  if (bias_t >= 0) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    const cudaDataType_t bt = cudaDataType_t(bias_t);
    QT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    QT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
  }
  // Column-major view of the row-major problem: D^T (N x M) = B (N x K) . A^T, i.e. cuBLAS's
  // A = our B (K x N col-major, transposed), cuBLAS's B = our A (K x M col-major).
  QT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.la, CUDA_R_16BF, uint64_t(K), uint64_t(N), K));
  QT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.lb, CUDA_R_16BF, uint64_t(K), uint64_t(M), K));
  QT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.ld, out_t, uint64_t(N), uint64_t(M), N));

  cublasLtMatmulPreference_t pref = nullptr;
  QT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint32_t aa = uint32_t(align_a), ab = uint32_t(align_b), ad = uint32_t(align_d);
  QT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  // cuBLAS's A is our B and vice versa.
  QT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &ab, sizeof(ab)));
  QT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &aa, sizeof(aa)));
  QT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ad, sizeof(ad)));
  QT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ad, sizeof(ad)));
  (void)align_bias;  // part of the key: an unaligned bias may need another algorithm
  cublasLtMatmulHeuristicResult_t result{};
  int returned = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(handle, p.desc, p.la, p.lb, p.ld, p.ld, pref, 1, &result, &returned);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st == CUBLAS_STATUS_SUCCESS && returned > 0) {
    p.algo = result.algo;
    p.ok = true;
  }
  return p;
}

}  // namespace

// alpha * a . b^T (+ bias), alpha = ta * tb on the device, in a new (M, N) tensor of dtype
// out_kind (0 float32, 1 bfloat16, 2 float16). Returns None (launching nothing) if cuBLASLt has no
// algorithm for this problem, so the caller can fall back.
std::optional<Tensor> gemm_bf16(const Tensor& a, const Tensor& b, const Tensor& ta, const Tensor& tb,
                                const std::optional<Tensor>& bias, int64_t out_kind) {
  QT_HOST_ASSERT(a.is_cuda() && b.is_cuda() && ta.is_cuda() && tb.is_cuda(), "gemm_bf16: CUDA tensors expected");
  QT_HOST_ASSERT(a.scalar_type() == at::kBFloat16 && b.scalar_type() == at::kBFloat16,
                 "gemm_bf16: operands must be bfloat16");
  QT_HOST_ASSERT(a.dim() == 2 && b.dim() == 2, "gemm_bf16: 2-D tensors expected");
  QT_HOST_ASSERT(a.is_contiguous() && b.is_contiguous(), "gemm_bf16: contiguous tensors expected");
  QT_HOST_ASSERT(out_kind >= 0 && out_kind <= 2, "gemm_bf16: out_kind must be 0 (f32), 1 (bf16) or 2 (f16)");
  const int64_t M = a.size(0), K = a.size(1), N = b.size(0);
  QT_HOST_ASSERT(b.size(1) == K, "gemm_bf16: K mismatch");
  QT_HOST_ASSERT(M > 0 && N > 0 && K > 0, "gemm_bf16: empty problem");
  QT_HOST_ASSERT(ta.scalar_type() == at::kFloat && tb.scalar_type() == at::kFloat && ta.numel() == 1 &&
                     tb.numel() == 1, "gemm_bf16: tensor scales must be one float32 each");
  for (const Tensor* t : {&b, &ta, &tb})
    QT_HOST_ASSERT(t->get_device() == a.get_device(), "gemm_bf16: tensors on different devices");
  int bias_t = -1;
  const void* bias_ptr = nullptr;
  if (bias) {
    QT_HOST_ASSERT(bias->is_cuda() && bias->get_device() == a.get_device() && bias->is_contiguous() &&
                       bias->numel() == N, "gemm_bf16: bias must be a contiguous CUDA vector of N elements");
    bias_t = int(cuda_type(bias->scalar_type()));
    bias_ptr = bias->data_ptr();
  }
  const c10::cuda::CUDAGuard guard(a.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();
  constexpr at::ScalarType kOut[3] = {at::kFloat, at::kBFloat16, at::kHalf};
  Tensor out = at::empty({M, N}, a.options().dtype(kOut[out_kind]));
  const cudaDataType_t out_t = cuda_type(out.scalar_type());
  // torch's own cuBLASLt workspace of this handle and stream (what its matmuls use): no
  // allocation per call.
  void* workspace = at::cuda::getCUDABlasLtWorkspace();
  const size_t ws_bytes = at::cuda::getCUDABlasLtWorkspaceSize();
  const Key key{M, N, K, int(out_t), bias_t, alignment(a.data_ptr()), alignment(b.data_ptr()),
                alignment(out.data_ptr()), bias_ptr ? alignment(bias_ptr) : 0, a.get_device(), ws_bytes};

  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_plans.find(key);
  if (it == g_plans.end())
    it = g_plans.emplace(key, make_plan(handle, M, N, K, out_t, bias_t, std::get<5>(key), std::get<6>(key),
                                        std::get<7>(key), std::get<8>(key), ws_bytes)).first;
  Plan& p = it->second;
  if (!p.ok) return std::nullopt;
  // alpha and beta (= 0) come from the caching allocator, in stream order.
  Tensor alpha_beta = at::empty({2}, a.options().dtype(at::kFloat));
  if (bias_ptr)
    QT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr, sizeof(bias_ptr)));
  quartet::gemm_alpha(ta.data_ptr<float>(), tb.data_ptr<float>(), alpha_beta.data_ptr<float>(), stream);
  const float* alpha = alpha_beta.data_ptr<float>();
  QT_CUBLAS_CHECK(cublasLtMatmul(handle, p.desc, alpha, b.data_ptr(), p.la, a.data_ptr(), p.lb, alpha + 1,
                                 out.data_ptr(), p.ld, out.data_ptr(), p.ld, &p.algo, workspace, ws_bytes, stream));
  return out;
}
