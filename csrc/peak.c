/* peak.c: the machine's FP32 fused-multiply-add throughput, measured.
 *
 * benchmarks/kernels.py reports each kernel's rate as a share of this figure.
 * Every thread runs ACCUMULATORS independent FMA chains on the widest vectors
 * the CPU has (AVX-512: 16 lanes; else AVX2+FMA: 8 lanes; else scalar fmaf),
 * enough chains to hide the FMA latency on two pipes:
 *
 *     acc[a] = acc[a] * mul + add        (2 FLOPs per lane per FMA)
 *
 * rate = threads * iterations * ACCUMULATORS * lanes * 2 / seconds, the best
 * of several timed rounds; seconds are wall time, or the process's CPU time
 * divided by the thread count.  It is the rate the FMA units sustain, an
 * upper bound no convolution reaches (it reads no memory).
 */
/* clock_gettime / CLOCK_MONOTONIC under -std=c11 */
#define _POSIX_C_SOURCE 199309L

#include "eenet.h"

#include <math.h>
#include <time.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define EENET_PEAK_X86 1
#endif

enum { ACCUMULATORS = 12 };

/* use_cpu_clock: the process's CPU time divided by the thread count (robust
 * to other processes' load when every thread keeps its core busy), else wall
 * time. */
static double now_seconds(int use_cpu_clock) {
    struct timespec ts;
    clock_gettime(use_cpu_clock ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Each chain function returns a value derived from every accumulator so the
 * compiler cannot drop the loop.  mul is just under 1 and add small, so the
 * chains converge to add / (1 - mul) and stay finite. */
#ifdef EENET_PEAK_X86
__attribute__((target("avx512f"))) static float chains_avx512(long iterations, float mul,
                                                              float add) {
    __m512 acc[ACCUMULATORS];
    const __m512 m = _mm512_set1_ps(mul), a = _mm512_set1_ps(add);
    for (int k = 0; k < ACCUMULATORS; k++) {
        acc[k] = _mm512_set1_ps((float)k);
    }
    for (long i = 0; i < iterations; i++) {
        for (int k = 0; k < ACCUMULATORS; k++) {
            acc[k] = _mm512_fmadd_ps(acc[k], m, a);
        }
    }
    __m512 sum = acc[0];
    for (int k = 1; k < ACCUMULATORS; k++) {
        sum = _mm512_add_ps(sum, acc[k]);
    }
    return _mm512_reduce_add_ps(sum);
}

__attribute__((target("avx2,fma"))) static float chains_avx2(long iterations, float mul,
                                                             float add) {
    __m256 acc[ACCUMULATORS];
    const __m256 m = _mm256_set1_ps(mul), a = _mm256_set1_ps(add);
    for (int k = 0; k < ACCUMULATORS; k++) {
        acc[k] = _mm256_set1_ps((float)k);
    }
    for (long i = 0; i < iterations; i++) {
        for (int k = 0; k < ACCUMULATORS; k++) {
            acc[k] = _mm256_fmadd_ps(acc[k], m, a);
        }
    }
    float lanes[8], total = 0.0f;
    __m256 sum = acc[0];
    for (int k = 1; k < ACCUMULATORS; k++) {
        sum = _mm256_add_ps(sum, acc[k]);
    }
    _mm256_storeu_ps(lanes, sum);
    for (int l = 0; l < 8; l++) {
        total += lanes[l];
    }
    return total;
}
#endif

static float chains_scalar(long iterations, float mul, float add) {
    float acc[ACCUMULATORS];
    for (int k = 0; k < ACCUMULATORS; k++) {
        acc[k] = (float)k;
    }
    for (long i = 0; i < iterations; i++) {
        for (int k = 0; k < ACCUMULATORS; k++) {
            acc[k] = fmaf(acc[k], mul, add);
        }
    }
    float total = 0.0f;
    for (int k = 0; k < ACCUMULATORS; k++) {
        total += acc[k];
    }
    return total;
}

/* Lanes of the widest FMA path this CPU runs (16, 8 or 1). */
static int fma_lanes(void) {
#ifdef EENET_PEAK_X86
    if (__builtin_cpu_supports("avx512f")) {
        return 16;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        return 8;
    }
#endif
    return 1;
}

static float run_chains(int lanes, long iterations, float mul, float add) {
#ifdef EENET_PEAK_X86
    if (lanes == 16) {
        return chains_avx512(iterations, mul, add);
    }
    if (lanes == 8) {
        return chains_avx2(iterations, mul, add);
    }
#endif
    return chains_scalar(iterations, mul, add);
}

/* One timed round: every thread runs `iterations`; returns seconds (wall, or
 * CPU seconds per thread). */
static double timed_round(int lanes, long iterations, int nthreads, int use_cpu_clock,
                          volatile float *sink) {
    double t0 = now_seconds(use_cpu_clock);
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        float r = run_chains(lanes, iterations, 0.999999f, 1e-6f);
        if (r == 12345.678f) { /* practically never; keeps r alive */
            *sink = r;
        }
    }
    double t = now_seconds(use_cpu_clock) - t0;
    return use_cpu_clock ? t / nthreads : t;
}

eenet_status eenet_peak_gflops(double *gflops, int *lanes_out, double seconds, int nthreads,
                               int use_cpu_clock) {
    if (gflops == NULL) {
        return eenet_set_error(EENET_ERR_VALUE, "peak_gflops: gflops must not be NULL");
    }
    if (!(seconds > 0.0) || seconds > 60.0) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "peak_gflops: seconds must be in (0, 60], got %g", seconds);
    }
    if (nthreads < 1) {
        return eenet_set_error(EENET_ERR_VALUE, "peak_gflops: nthreads must be >= 1, got %d",
                               nthreads);
    }
#ifndef _OPENMP
    nthreads = 1;
#endif
    const int lanes = fma_lanes();
    volatile float sink = 0.0f;
    /* calibrate: grow the iteration count until one round takes >= 1/8 of
     * the budget, then time rounds until the budget is spent (at least 3) */
    long iterations = 1 << 14;
    double t = timed_round(lanes, iterations, nthreads, use_cpu_clock, &sink);
    while (t < seconds / 8.0 && iterations < (1L << 40)) {
        iterations *= 2;
        t = timed_round(lanes, iterations, nthreads, use_cpu_clock, &sink);
    }
    double best = t, spent = t;
    for (int round = 0; round < 3 || spent < seconds; round++) {
        t = timed_round(lanes, iterations, nthreads, use_cpu_clock, &sink);
        spent += t;
        if (t < best) {
            best = t;
        }
        if (round > 1000) {
            break;
        }
    }
    double flops = 2.0 * (double)nthreads * (double)iterations * ACCUMULATORS * lanes;
    *gflops = flops / best / 1e9;
    if (lanes_out != NULL) {
        *lanes_out = lanes;
    }
    return EENET_OK;
}
