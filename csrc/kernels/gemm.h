/* gemm.h: internal GEMM entry point of the core (gemm.c). */
#ifndef EENET_GEMM_H
#define EENET_GEMM_H

/* C (M,N) = alpha * op(A) @ op(B) + beta * C; row-major; trans_* nonzero
 * means op(X) = X^T (A stored (K,M), B stored (N,K)). */
void eenet_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                 int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* Threads OpenBLAS uses for calls made from here on (no-op without it). */
void eenet_blas_set_threads(int n);

#endif /* EENET_GEMM_H */
