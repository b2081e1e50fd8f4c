// Device side of the emulated (Hopper) NVFP4 GEMM: the alpha/beta pair its cuBLASLt call reads
// from device memory (csrc/gemm_lt.cpp), so the tensor scales never travel to the host and the
// GEMM's epilogue applies alpha, the bias and the output cast in one pass.
#include "common.cuh"

namespace quartet {
namespace {

__global__ void alpha_kernel(const float* ta, const float* tb, float* alpha_beta) {
  alpha_beta[0] = __fmul_rn(*ta, *tb);  // s_tA * s_tB, as the reference's alpha
  alpha_beta[1] = 0.f;
}

}  // namespace

void gemm_alpha(const float* ta, const float* tb, float* alpha_beta, cudaStream_t stream) {
  alpha_kernel<<<1, 1, 0, stream>>>(ta, tb, alpha_beta);
  QT_LAUNCH_CHECK();
}

}  // namespace quartet
