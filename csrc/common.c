/* common.c: error buffer and thread-count control shared by the whole core. */
#include "eenet.h"

#include <stdarg.h>
#include <stdio.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef EENET_HAVE_OPENBLAS
#include <cblas.h>
#endif

static _Thread_local char error_message[1024];

eenet_status eenet_set_error(eenet_status status, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(error_message, sizeof error_message, fmt, args);
    va_end(args);
    return status;
}

const char *eenet_last_error(void) {
    return error_message[0] ? error_message : "unknown error";
}

static int num_threads = 0; /* 0: not yet set, use the OpenMP default */

void eenet_set_num_threads(int n) {
    if (n < 1) {
        n = 1;
    }
    num_threads = n;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
}

/* OpenBLAS stays single-threaded: the core's parallelism is its own OpenMP
 * loops (conv calls sgemm once per sample inside them), and OpenBLAS's pthread
 * workers busy-wait after each threaded call, stealing cores from OpenMP
 * (measured ~5% of CPU time on 2 cores).  Called once when _core is imported. */
void eenet_core_init(void) {
#ifdef EENET_HAVE_OPENBLAS
    scipy_openblas_set_num_threads(1);
#endif
}

/* Per calling thread: 0 for no limit, else the most threads this thread's
 * kernels may use (see eenet_limit_threads). */
static _Thread_local int thread_limit = 0;

int eenet_limit_threads(int n) {
    int previous = thread_limit;
    thread_limit = n > 0 ? n : 0;
    return previous;
}

int eenet_thread_num(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

int eenet_team_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

int eenet_threads_for(int nt, long long units) {
    if (nt > units) {
        nt = (int)units;
    }
    return nt < 1 ? 1 : nt;
}

int eenet_get_num_threads(void) {
    int n;
    if (num_threads > 0) {
        n = num_threads;
    } else {
#ifdef _OPENMP
        n = omp_get_max_threads();
#else
        n = 1;
#endif
    }
    return thread_limit > 0 && thread_limit < n ? thread_limit : n;
}
