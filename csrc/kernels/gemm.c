/* gemm.c: the single-precision GEMM the conv kernels call.
 *
 * C (M,N) = alpha * op(A) (M,K) @ op(B) (K,N) + beta * C, row-major, with
 * op(X) = X or X^T.  With OpenBLAS (EENET_HAVE_OPENBLAS, what setup.py
 * always builds) this is scipy_cblas_sgemm; without it a plain loop-ordered
 * fallback keeps the core buildable (correct, not fast).
 *
 * Why OpenBLAS rather than an own GEMM micro-kernel: measured single-threaded
 * on the 2-core AMD EPYC (Zen 4) build machine, scipy-openblas32's sgemm
 * (SkylakeX kernels) runs at 103 GFLOP/s on 2048^3 and 57-98 GFLOP/s on the
 * conv GEMM shapes (M x N x K = 16x1024x144: 57, 32x256x288: 91,
 * 64x64x576: 93), close to the FMA limit; the conv work that GEMM does not do
 * well (im2col traffic, small channels) is handled by the direct kernels of
 * conv_avx512.c instead (see conv.c).
 */
#include "gemm.h"

#include <stddef.h>

#ifdef EENET_HAVE_OPENBLAS
#include <cblas.h>
#endif

void eenet_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                 int lda, const float *B, int ldb, float beta, float *C, int ldc) {
#ifdef EENET_HAVE_OPENBLAS
    scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                      trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb,
                      beta, C, ldc);
#else
    for (int m = 0; m < M; m++) {
        float *c = C + (size_t)m * ldc;
        if (beta == 0.0f) {
            for (int n = 0; n < N; n++) {
                c[n] = 0.0f;
            }
        } else if (beta != 1.0f) {
            for (int n = 0; n < N; n++) {
                c[n] *= beta;
            }
        }
        for (int k = 0; k < K; k++) {
            float a = alpha * (trans_a ? A[(size_t)k * lda + m] : A[(size_t)m * lda + k]);
            if (trans_b) {
                for (int n = 0; n < N; n++) {
                    c[n] += a * B[(size_t)n * ldb + k];
                }
            } else {
                const float *b = B + (size_t)k * ldb;
                for (int n = 0; n < N; n++) {
                    c[n] += a * b[n];
                }
            }
        }
    }
#endif
}

void eenet_blas_set_threads(int n) {
#ifdef EENET_HAVE_OPENBLAS
    scipy_openblas_set_num_threads(n < 1 ? 1 : n);
#else
    (void)n;
#endif
}
