/* eenet.h: things every C file of the core shares.
 *
 * Errors are values: every public function returns an eenet_status and, on
 * failure, writes a human-readable message with eenet_set_error().  Only
 * module.c turns a status into a Python exception (ValueError for
 * EENET_ERR_VALUE, MemoryError for EENET_ERR_NOMEM, FloatingPointError for
 * EENET_ERR_NONFINITE, RuntimeError otherwise).
 *
 * Layout everywhere: float32, NCHW, C-contiguous.
 */
#ifndef EENET_H
#define EENET_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    EENET_OK = 0,
    EENET_ERR_VALUE = 1,      /* bad argument: shape, range, size */
    EENET_ERR_NOMEM = 2,      /* allocation failed */
    EENET_ERR_NONFINITE = 3,  /* NaN/Inf met where it must not be */
    EENET_ERR_INTERNAL = 4    /* broken invariant: a bug in eenet */
} eenet_status;

/* Thread-local last error message (printf-style).  Returns `status` so a
 * caller can write `return eenet_set_error(EENET_ERR_VALUE, "...", ...);`. */
eenet_status eenet_set_error(eenet_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
const char *eenet_last_error(void);

/* Threads used by every OpenMP region of the core (OpenBLAS itself always runs
 * single-threaded, see eenet_core_init).  Default: the cores available. */
void eenet_set_num_threads(int n);
int eenet_get_num_threads(void);

/* This thread's number in the innermost OpenMP team (0 outside a parallel
 * region or without OpenMP). */
int eenet_thread_num(void);

/* Threads in the innermost OpenMP team (1 outside a parallel region or
 * without OpenMP). */
int eenet_team_size(void);

/* Threads for a parallel loop over `units` work items: nt clamped to
 * [1, units] (no thread without an item; at least one). */
int eenet_threads_for(int nt, long long units);

/* Cap eenet_get_num_threads() at n (n <= 0: no cap) for the calling thread
 * only, e.g. around a run too small to share; returns the previous cap so a
 * caller can restore it. */
int eenet_limit_threads(int n);

/* Measured FP32 FMA throughput (GFLOP/s) of `nthreads` threads running
 * independent FMA chains on the widest vectors the CPU has (peak.c), best of
 * rounds filling about `seconds`, timed by the wall clock or (use_cpu_clock)
 * by process CPU time per thread.  *lanes_out (may be NULL) gets the vector
 * width used: 16 (AVX-512), 8 (AVX2) or 1. */
eenet_status eenet_peak_gflops(double *gflops, int *lanes_out, double seconds, int nthreads,
                               int use_cpu_clock);

/* One-time set-up when the extension loads (OpenBLAS single-threaded). */
void eenet_core_init(void);

#endif /* EENET_H */
