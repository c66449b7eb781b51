/* net.c: the network engine (see net.h for the memory layout and the
 * encoding of the op program).
 *
 * Forward runs the ops in program order (stage 0, exit 0, stage 1, ...), so an
 * exit reads its stage-boundary tensor after the stage wrote it.  Backward runs
 * them in reverse and every kernel ACCUMULATES into the gradient of its inputs,
 * which is what makes the fan-out of a boundary tensor (to its exit and to the
 * next stage) correct without a special case.  A tensor's gradient slot is
 * zeroed when its last consumer (in forward order) is reached in backward, and
 * released after its producer's backward; slots of equal size are reused.
 */
/* clock_gettime / CLOCK_MONOTONIC under -std=c11; madvise (glibc: _DEFAULT_SOURCE) */
#define _POSIX_C_SOURCE 199309L
#define _DEFAULT_SOURCE 1

#include "net.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

#ifdef _OPENMP
#include <omp.h>
static double now_seconds(void) { return omp_get_wtime(); }
#else
#include <time.h>
static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
#endif

/* Eval runs on at least SPLIT_MIN_ROWS rows split them between threads (at
 * most SPLIT_MAX_THREADS, each with its own conv scratch); see run_ops.  The
 * environment variable EENET_EVAL_SPLIT=0 (read by eenet_net_create) turns the
 * split off for that network.  SPLIT_MIN_MACS: see split_threads (EENet-20 splits
 * from 4 rows per thread on its first stage, EENet-8 never: at 2 threads under
 * load its early-exit runs did not gain while full runs did, and its whole
 * network is 0.16 M multiply-adds per sample). */
#define SPLIT_MIN_ROWS 2
#define SPLIT_MIN_MACS 16e6
#define SPLIT_MAX_THREADS 64

/* Eval runs take a thread's rows through a segment's ops at most
 * EVAL_CHUNK_ROWS rows at a time (see run_rows_chunked); EVAL_CHUNK_WIDE_ROWS
 * for a predict run whose convolutions all write 16K floats or more per row. */
#define EVAL_CHUNK_ROWS 16
#define EVAL_CHUNK_WIDE_ROWS 4

/* ---- per-kind layer structs ---------------------------------------------- */

typedef struct {
    int C, H, W, K, k, stride, pad, Ho, Wo;
    size_t w;     /* offset of weight (K,C,k,k) in params */
    long bias;    /* offset of bias (K) or -1 */
    /* eval mode: the weights transformed once for the conv's path (see
     * prepare_convs), kept while the weights and the conv switch stay */
    size_t prep, prep_n;  /* offset in net->prep and size (0: nothing to prepare) */
    size_t wcopy;         /* offset in net->prep_w of the weights prep was made from */
    int prep_tag;         /* eenet_conv2d_prepare's tag, 0: not prepared */
    int prep_impl;        /* eenet_conv2d_get_impl() when prepared, -1 before */
    /* eval mode: the batch norm reading this conv's output folded into it
     * (plan_eval_fusion): the conv then writes fuse_out = relu?(conv(x, w')
     * + b' + fuse_res) with w', b' in net->fold at `fold` (wn weights, then K
     * biases); -1 / 0 when not folded */
    int fuse_bn, fuse_out, fuse_res, fuse_relu;
    size_t fold;
    size_t bncopy;        /* offset in net->prep_w of the batch norm's gamma, beta,
                           * running mean and variance (4K) the fold was made from */
} conv_layer;

typedef struct {
    int C, HW;
    size_t gamma, beta, rmean, rvar; /* gamma/beta in params, running stats in bufs */
    int nbt;
    float eps, momentum;
    size_t save;  /* offset in the save area: mean (C) then invstd (C) */
} bn_layer;

typedef struct {
    size_t n;     /* per-sample elements */
} eltwise_layer;

typedef struct {
    int C, H, W, k, stride, pad, Ho, Wo;
    size_t argmax; /* offset in the argmax area, max_batch*C*Ho*Wo entries */
} maxpool_layer;

typedef struct {
    int C, HW;
} gap_layer;

typedef struct {
    int in, outf;
    size_t w;     /* weight (outf, in) */
    long bias;    /* bias (outf) or -1 */
} linear_layer;

typedef struct {
    int K;
} softmax_layer;

typedef struct {
    int kind;
    int in0, in1, out;
    int segment;
    union {
        conv_layer conv;
        bn_layer bn;
        eltwise_layer elt;
        maxpool_layer pool;
        gap_layer gap;
        linear_layer lin;
        softmax_layer sm;
    } u;
} net_op;

struct eenet_net {
    int num_tensors;
    size_t *tsize;        /* (T) per-sample floats */
    float **act;          /* (T) activation rows, max_batch * tsize */
    float **eact;         /* (T) eval mode's activation rows (plan_eval_arena): tensors
                           * share rows once dead; = act with EENET_EVAL_ARENA=0 */
    float *eval_own;      /* eval rows allocated apart from the arena, or NULL */
    size_t eval_own_floats;
    float **grad;         /* (T) gradient slot or NULL */
    int *last_consumer;   /* (T) index of the last op reading the tensor, -1 if none */
    int *fused_relu;      /* (num_ops) ReLU fusion: for a batch norm or add whose output's
                           * only reader is a ReLU (in place, same segment), that ReLU's op
                           * index; -2 on that ReLU (its forward and backward run inside
                           * the batch norm's or add's); -1 otherwise */
    int num_ops;
    net_op *ops;
    int num_exits;        /* E1, final included */
    int *exit_input, *exit_prob, *exit_conf;
    int *seg_begin;       /* (2*E1 + 1): ops of segment g are [seg_begin[g], seg_begin[g+1]) */
    float *costs;         /* (E1) */
    int K, max_batch;

    size_t num_params, num_bufs;
    int num_bn;
    float *params, *grads, *opt_state, *bufs, *bufs_snapshot;
    int64_t *nbt, *nbt_snapshot;

    float *arena;
    size_t arena_floats;
    float *grad_arena;
    size_t grad_arena_floats;
    float *save_area;
    size_t save_floats;
    int32_t *argmax_area;
    size_t argmax_count;
    float *workspace;
    size_t workspace_floats;
    int nthreads;         /* thread count the conv workspace was sized for; the conv
                           * kernels use min(this, eenet_get_num_threads()) */

    float *probs_all, *conf_all, *dprobs_all, *dconf_all; /* (E1,max_batch,K), (E1,max_batch) */
    int *active;          /* (max_batch) original index of each active row in predict */
    int *moves;           /* (2 * max_batch) predict's compaction: rows left free below the
                           * kept count, then the kept rows above it moved into them */

    float *fold;          /* eval: folded conv weights and biases (conv_layer.fold) */
    size_t fold_floats;
    char *eval_skip;      /* (num_ops) eval: 1 on batch norms and adds done inside a conv */
    float *prep;          /* eval: prepared conv weights (conv_layer.prep) */
    float *prep_w;        /* eval: the weights they were prepared from (conv_layer.wcopy) */
    size_t prep_floats, prep_w_floats;
    int split_threads;    /* eval runs split rows between up to this many threads */
    int eval_chunk_wide;  /* rows per chunk (at most eval_chunk) of the predict runs
                           * whose convolutions all write 16K floats or more per row */
    int eval_chunk;       /* eval runs take at most this many rows through the ops at
                           * a time (run_rows_chunked; 0: all) */
    float *split_ws;      /* split_threads conv scratches of split_ws_floats (1 thread) */
    size_t split_ws_floats;
    long *eval_lrow;      /* (2T) eval: a tensor used within one predict run only (see
                           * plan_eval_local) has its rows in the chunk scratch of the
                           * thread running it, eval_lrow[t] * chunk rows floats in; -1:
                           * its rows are eact's.  Then the same for a forward
                           * (eval_lrow + T), where only the input and outputs stay */
    size_t eval_lrow_floats; /* floats per chunk row of the local tensors' buffers (the
                              * larger of the two plans) */
    float *chunk_rows;    /* split_threads (at least 1) scratches of chunk_floats */
    size_t chunk_floats;

    int profiling;                   /* eenet_net_set_profiling */
    double prof[EENET_PROF_SLOTS];   /* seconds per slot */
    double prof_t;                   /* time of the last mark */
};

/* ---- profiling ---------------------------------------------------------------- */

static const char *const prof_names[EENET_PROF_SLOTS] = {
    "conv2d.forward", "batchnorm2d.forward", "relu.forward", "add.forward",
    "maxpool2d.forward", "global_avgpool.forward", "linear.forward", "sigmoid.forward",
    "softmax.forward", "conv2d.backward", "batchnorm2d.backward", "relu.backward",
    "add.backward", "maxpool2d.backward", "global_avgpool.backward", "linear.backward",
    "sigmoid.backward", "softmax.backward", "zero_grad", "loss", "optimizer", "exit_output",
    "other"};

void eenet_net_set_profiling(eenet_net *net, int on) {
    net->profiling = on != 0;
    memset(net->prof, 0, sizeof net->prof);
    net->prof_t = now_seconds();
}

void eenet_net_profile(const eenet_net *net, double *out) {
    memcpy(out, net->prof, sizeof net->prof);
}

const char *eenet_net_profile_name(int i) {
    return i >= 0 && i < EENET_PROF_SLOTS ? prof_names[i] : NULL;
}

/* Start of a timed part (profiling on). */
static void prof_start(eenet_net *net) {
    if (net->profiling) {
        net->prof_t = now_seconds();
    }
}

/* End of a timed part: charge the time since the last mark to slot, restart. */
static void prof_mark(eenet_net *net, int slot) {
    if (net->profiling) {
        const double t = now_seconds();
        net->prof[slot] += t - net->prof_t;
        net->prof_t = t;
    }
}

/* ---- big buffers ------------------------------------------------------------ */

/* Zeroed n * size bytes (NULL when out of memory), freed with big_free: the
 * activation rows and conv scratches.  From 2 MB up, where the system has
 * anonymous mmap: 2 MB aligned and, where Linux offers it (MADV_HUGEPAGE;
 * transparent huge pages in "madvise" mode, this host's setting, give none
 * otherwise), backed by huge pages as they are first touched: fewer TLB
 * misses, and physically contiguous 2 MB, so where the rows a layer streams
 * through fall in the caches no longer depends on which 4 KB pages the process
 * got (which of the two helps more was not measured).  Measured (2 threads,
 * quiet, one build in one process, networks with and without, alternating;
 * time without / with, medians): EENet-20 predict_all 1.09 (batch 32) and 1.10
 * (128), early-exit predict 1.13 and 1.09, training step 1.18 and 1.07;
 * EENet-110 batch 32 predict_all 1.10, predict 1.08.  EENET_HUGE_PAGES=0 in the
 * environment (read when a network is built) turns it off.  The block's start
 * and length (or the calloc'd block) are kept in the 64 bytes before the
 * pointer returned. */
#define BIG_HEAD 64
typedef struct {
    void *base;
    size_t len; /* mapped bytes, 0: base came from calloc */
} big_head;

static void *big_calloc(size_t n, size_t size) {
    const size_t huge = (size_t)1 << 21;
    if (size != 0 && n > ((size_t)-1 - 2 * huge) / size) {
        return NULL;
    }
    const size_t bytes = n * size;
    char *p = NULL;
    big_head head = {NULL, 0};
#if defined(MAP_ANONYMOUS)
    const char *env = getenv("EENET_HUGE_PAGES");
    if (bytes >= huge && !(env && env[0] == '0')) {
        /* one huge page more than needed: the first lies partly before the
         * aligned start, which leaves room for the head */
        const size_t len = (bytes + huge - 1) / huge * huge + huge;
        void *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base != MAP_FAILED) {
            p = (char *)(((uintptr_t)base + BIG_HEAD + huge - 1) / huge * huge);
#if defined(MADV_HUGEPAGE)
            (void)madvise(p, len - (size_t)(p - (char *)base), MADV_HUGEPAGE); /* advice only */
#endif
            head.base = base;
            head.len = len;
        }
    }
#endif
    if (!p) {
        char *base = calloc(1, bytes + BIG_HEAD);
        if (!base) {
            return NULL;
        }
        p = base + BIG_HEAD;
        head.base = base;
    }
    memcpy(p - BIG_HEAD, &head, sizeof head);
    return p;
}

static void big_free(void *ptr) {
    if (!ptr) {
        return;
    }
    big_head head;
    memcpy(&head, (char *)ptr - BIG_HEAD, sizeof head);
#if defined(MAP_ANONYMOUS)
    if (head.len) {
        munmap(head.base, head.len);
        return;
    }
#endif
    free(head.base);
}

/* ---- accessors ------------------------------------------------------------ */

float *eenet_net_params(eenet_net *net) { return net->params; }
float *eenet_net_grads(eenet_net *net) { return net->grads; }
float *eenet_net_opt_state(eenet_net *net) { return net->opt_state; }
float *eenet_net_bufs(eenet_net *net) { return net->bufs; }
int64_t *eenet_net_nbt(eenet_net *net) { return net->nbt; }
size_t eenet_net_num_params(const eenet_net *net) { return net->num_params; }
size_t eenet_net_num_bufs(const eenet_net *net) { return net->num_bufs; }
int eenet_net_num_bn(const eenet_net *net) { return net->num_bn; }
int eenet_net_num_exits(const eenet_net *net) { return net->num_exits; }
int eenet_net_num_classes(const eenet_net *net) { return net->K; }
int eenet_net_max_batch(const eenet_net *net) { return net->max_batch; }
size_t eenet_net_input_size(const eenet_net *net) { return net->tsize[0]; }

size_t eenet_net_bytes(const eenet_net *net) {
    size_t f = 4 * net->num_params + 2 * net->num_bufs + net->arena_floats +
               net->grad_arena_floats + net->save_floats + net->workspace_floats +
               (net->split_ws ? (size_t)net->split_threads * net->split_ws_floats : 0) +
               net->prep_floats + net->prep_w_floats + net->fold_floats + net->eval_own_floats +
               2 * (size_t)net->num_exits * net->max_batch * (net->K + 1);
    return f * sizeof(float) + net->argmax_count * sizeof(int32_t) +
           2 * (size_t)net->num_bn * sizeof(int64_t);
}

void eenet_net_free(eenet_net *net) {
    if (!net) {
        return;
    }
    free(net->tsize);
    free(net->act);
    free(net->eact);
    big_free(net->eval_own);
    free(net->eval_lrow);
    big_free(net->chunk_rows);
    free(net->grad);
    free(net->last_consumer);
    free(net->fused_relu);
    free(net->ops);
    free(net->exit_input);
    free(net->exit_prob);
    free(net->exit_conf);
    free(net->seg_begin);
    free(net->costs);
    free(net->params);
    free(net->grads);
    free(net->opt_state);
    free(net->bufs);
    free(net->bufs_snapshot);
    free(net->nbt);
    free(net->nbt_snapshot);
    big_free(net->arena);
    big_free(net->grad_arena);
    big_free(net->save_area);
    free(net->argmax_area);
    big_free(net->workspace);
    big_free(net->split_ws);
    free(net->prep);
    free(net->prep_w);
    free(net->fold);
    free(net->eval_skip);
    free(net->probs_all);
    free(net->conf_all);
    free(net->dprobs_all);
    free(net->dconf_all);
    free(net->active);
    free(net->moves);
    free(net);
}

/* ---- construction --------------------------------------------------------- */

static int tensor_ok(const eenet_net *net, int t) { return t >= 0 && t < net->num_tensors; }

/* Per-sample C, H, W of tensor t. */
#define TC(t) (tensors[3 * (t)])
#define TH(t) (tensors[3 * (t) + 1])
#define TW(t) (tensors[3 * (t) + 2])

/* Check that offset + n fits in a buffer of `total` floats. */
static int range_ok(long off, size_t n, size_t total) {
    return off >= 0 && (size_t)off <= total && n <= total - (size_t)off;
}

/* Decode and check op i; fills net->ops[i] and grows the save/argmax/workspace needs. */
static eenet_status decode_op(eenet_net *net, int i, const int32_t *rec, const float *f,
                              const int32_t *tensors) {
    net_op *op = &net->ops[i];
    op->kind = rec[EENET_F_KIND];
    op->in0 = rec[EENET_F_IN0];
    op->in1 = rec[EENET_F_IN1];
    op->out = rec[EENET_F_OUT];
    op->segment = rec[EENET_F_SEGMENT];
    if (!tensor_ok(net, op->in0) || !tensor_ok(net, op->out) || op->out == 0 ||
        op->out == op->in0) {
        return eenet_set_error(EENET_ERR_VALUE, "op %d: bad tensor ids in %d -> out %d", i,
                               op->in0, op->out);
    }
    int in = op->in0, out = op->out;
    size_t in_n = net->tsize[in], out_n = net->tsize[out];
    switch (op->kind) {
    case EENET_OP_CONV2D: {
        conv_layer *L = &op->u.conv;
        L->C = TC(in);
        L->H = TH(in);
        L->W = TW(in);
        L->K = TC(out);
        L->k = rec[EENET_F_KERNEL];
        L->stride = rec[EENET_F_STRIDE];
        L->pad = rec[EENET_F_PAD];
        if (L->k < 1 || L->stride < 1 || L->pad < 0) {
            return eenet_set_error(EENET_ERR_VALUE, "op %d: bad conv kernel/stride/pad", i);
        }
        L->Ho = eenet_conv_out_size(L->H, L->k, L->stride, L->pad);
        L->Wo = eenet_conv_out_size(L->W, L->k, L->stride, L->pad);
        if (L->Ho != TH(out) || L->Wo != TW(out)) {
            return eenet_set_error(EENET_ERR_VALUE, "op %d: conv output %dx%d, tensor %dx%d", i,
                                   L->Ho, L->Wo, TH(out), TW(out));
        }
        size_t wn = (size_t)L->K * L->C * L->k * L->k;
        if (!range_ok(rec[EENET_F_WEIGHT], wn, net->num_params)) {
            return eenet_set_error(EENET_ERR_VALUE, "op %d: conv weight outside params", i);
        }
        L->w = (size_t)rec[EENET_F_WEIGHT];
        L->bias = rec[EENET_F_BIAS];
        if (L->bias >= 0 && !range_ok(L->bias, (size_t)L->K, net->num_params)) {
            return eenet_set_error(EENET_ERR_VALUE, "op %d: conv bias outside params", i);
        }
        size_t ws = eenet_conv2d_workspace_floats(net->max_batch, L->C, L->H, L->W, L->K, L->k,
                                                  L->k, L->stride, L->pad, net->nthreads);
        size_t ws1 = eenet_conv2d_workspace_floats(net->max_batch, L->C, L->H, L->W, L->K,
                                                   L->k, L->k, L->stride, L->pad, 1);
        if (ws1 > net->split_ws_floats) {
            net->split_ws_floats = ws1;
        }
        if (ws > net->workspace_floats) {
            net->workspace_floats = ws;
        }
        L->prep_n = eenet_conv2d_prepared_floats(L->C, L->H, L->W, L->K, L->k, L->k, L->stride,
                                                 L->pad);
        L->prep_tag = 0;
        L->prep_impl = -1;
        L->fuse_bn = L->fuse_out = L->fuse_res = -1;
        L->fuse_relu = 0;
        if (L->prep_n > 0) {
            L->prep = net->prep_floats;
            net->prep_floats += L->prep_n;
            L->wcopy = net->prep_w_floats;
            net->prep_w_floats += wn;
        }
        break;
    }
    case EENET_OP_BATCHNORM2D: {
        bn_layer *L = &op->u.bn;
        L->C = TC(in);
        L->HW = TH(in) * TW(in);
        if (in_n != out_n) {
            return eenet_set_error(EENET_ERR_VALUE, "op %d: batch norm changes the shape", i);
        }
        if (!range_ok(rec[EENET_F_WEIGHT], (size_t)L->C, net->num_params) ||
            !range_ok(rec[EENET_F_BIAS], (size_t)L->C, net->num_params) ||
            !range_ok(rec[EENET_F_RMEAN], (size_t)L->C, net->num_bufs) ||
            !range_ok(rec[EENET_F_RVAR], (size_t)L->C, net->num_bufs) ||
            rec[EENET_F_NBT] < 0 || rec[EENET_F_NBT] >= net->num_bn) {
            return eenet_set_error(EENET_ERR_VALUE, "op %d: batch norm offsets out of range", i);
        }
        L->gamma = (size_t)rec[EENET_F_WEIGHT];
        L->beta = (size_t)rec[EENET_F_BIAS];
        L->rmean = (size_t)rec[EENET_F_RMEAN];
        L->rvar = (size_t)rec[EENET_F_RVAR];
        L->nbt = rec[EENET_F_NBT];
        L->eps = f[0];
        L->momentum = f[1];
        L->save = net->save_floats;
        net->save_floats += 2 * (size_t)L->C;
        break;
    }
    case EENET_OP_RELU:
    case EENET_OP_SIGMOID:
        if (in_n != out_n) {
            return eenet_set_error(EENET_ERR_VALUE, "op %d: elementwise op changes the size", i);
        }
        op->u.elt.n = in_n;
        break;
    case EENET_OP_ADD:
        if (!tensor_ok(net, op->in1) || net->tsize[op->in1] != out_n || in_n != out_n ||
            op->in1 == out) {
            return eenet_set_error(EENET_ERR_VALUE, "op %d: add needs two inputs of its size", i);
        }
        op->u.elt.n = in_n;
        break;
    case EENET_OP_MAXPOOL2D: {
        maxpool_layer *L = &op->u.pool;
        L->C = TC(in);
        L->H = TH(in);
        L->W = TW(in);
        L->k = rec[EENET_F_KERNEL];
        L->stride = rec[EENET_F_STRIDE];
        L->pad = rec[EENET_F_PAD];
        if (L->k < 1 || L->stride < 1 || L->pad < 0 || TC(out) != L->C) {
            return eenet_set_error(EENET_ERR_VALUE, "op %d: bad max pool", i);
        }
        L->Ho = eenet_conv_out_size(L->H, L->k, L->stride, L->pad);
        L->Wo = eenet_conv_out_size(L->W, L->k, L->stride, L->pad);
        if (L->Ho != TH(out) || L->Wo != TW(out)) {
            return eenet_set_error(EENET_ERR_VALUE, "op %d: max pool output size mismatch", i);
        }
        L->argmax = net->argmax_count;
        net->argmax_count += (size_t)net->max_batch * out_n;
        break;
    }
    case EENET_OP_GLOBAL_AVGPOOL:
        op->u.gap.C = TC(in);
        op->u.gap.HW = TH(in) * TW(in);
        if (out_n != (size_t)TC(in)) {
            return eenet_set_error(EENET_ERR_VALUE, "op %d: global pool output is not (C,)", i);
        }
        break;
    case EENET_OP_LINEAR: {
        linear_layer *L = &op->u.lin;
        L->in = (int)in_n;
        L->outf = (int)out_n;
        if (!range_ok(rec[EENET_F_WEIGHT], in_n * out_n, net->num_params)) {
            return eenet_set_error(EENET_ERR_VALUE, "op %d: linear weight outside params", i);
        }
        L->w = (size_t)rec[EENET_F_WEIGHT];
        L->bias = rec[EENET_F_BIAS];
        if (L->bias >= 0 && !range_ok(L->bias, out_n, net->num_params)) {
            return eenet_set_error(EENET_ERR_VALUE, "op %d: linear bias outside params", i);
        }
        break;
    }
    case EENET_OP_SOFTMAX:
        if (in_n != out_n) {
            return eenet_set_error(EENET_ERR_VALUE, "op %d: softmax changes the size", i);
        }
        op->u.sm.K = (int)in_n;
        break;
    default:
        return eenet_set_error(EENET_ERR_VALUE, "op %d: unknown kind %d", i, op->kind);
    }
    return EENET_OK;
}

/* Assign gradient slots: walk backward order, a tensor's slot is born at its
 * last consumer and dies after its producer.  Slots of equal per-sample size
 * are reused.  Returns EENET_ERR_NOMEM on allocation failure. */
static eenet_status plan_grads(eenet_net *net) {
    int T = net->num_tensors;
    int *slot_of = malloc(sizeof(int) * (size_t)T);
    size_t *slot_size = malloc(sizeof(size_t) * (size_t)(T + 1));
    int *slot_free = malloc(sizeof(int) * (size_t)(T + 1));
    size_t *slot_off = malloc(sizeof(size_t) * (size_t)(T + 1));
    int nslots = 0;
    eenet_status st = EENET_OK;
    if (!slot_of || !slot_size || !slot_free || !slot_off) {
        st = eenet_set_error(EENET_ERR_NOMEM, "out of memory planning gradients");
        goto done;
    }
    for (int t = 0; t < T; t++) {
        slot_of[t] = -1;
    }
#define BIRTH(t)                                                                  \
    do {                                                                          \
        int s_ = -1;                                                              \
        for (int j_ = 0; j_ < nslots; j_++) {                                     \
            if (slot_free[j_] && slot_size[j_] == net->tsize[t]) {                \
                s_ = j_;                                                          \
                break;                                                            \
            }                                                                     \
        }                                                                         \
        if (s_ < 0) {                                                             \
            s_ = nslots++;                                                        \
            slot_size[s_] = net->tsize[t];                                        \
        }                                                                         \
        slot_free[s_] = 0;                                                        \
        slot_of[t] = s_;                                                          \
    } while (0)
    /* the loss writes the gradients of every exit's probabilities and confidence */
    for (int e = 0; e < net->num_exits; e++) {
        BIRTH(net->exit_prob[e]);
        if (net->exit_conf[e] >= 0) {
            BIRTH(net->exit_conf[e]);
        }
    }
    for (int i = net->num_ops - 1; i >= 0; i--) {
        const net_op *op = &net->ops[i];
        if (net->fused_relu[i] == -2) {
            continue; /* done inside the batch norm's backward */
        }
        int ins[2] = {op->in0, op->kind == EENET_OP_ADD ? op->in1 : -1};
        for (int j = 0; j < 2; j++) {
            int t = ins[j];
            if (t > 0 && net->last_consumer[t] == i && slot_of[t] < 0) {
                BIRTH(t);
            }
        }
        /* a batch norm fused with its ReLU reads the ReLU's output gradient
         * (the ReLU was skipped above: its input's gradient is never born) */
        const int done = net->fused_relu[i] >= 0 ? net->ops[net->fused_relu[i]].out : op->out;
        if (slot_of[done] >= 0) {
            slot_free[slot_of[done]] = 1;
        }
    }
#undef BIRTH
    size_t total = 0;
    for (int s = 0; s < nslots; s++) {
        slot_off[s] = total;
        total += slot_size[s] * (size_t)net->max_batch;
    }
    net->grad_arena_floats = total;
    net->grad_arena = big_calloc(total ? total : 1, sizeof(float));
    if (!net->grad_arena) {
        st = eenet_set_error(EENET_ERR_NOMEM, "out of memory: gradient arena of %zu floats",
                             total);
        goto done;
    }
    for (int t = 0; t < T; t++) {
        net->grad[t] = slot_of[t] >= 0 ? net->grad_arena + slot_off[slot_of[t]] : NULL;
    }
done:
    free(slot_of);
    free(slot_size);
    free(slot_free);
    free(slot_off);
    return st;
}

/* Eval-mode fusion plan (after fused_relu; with readers[t] = the ops reading
 * tensor t and producer[t] = the op writing it, -1 for the input).  In eval a
 * batch norm is affine per channel, so one that reads a conv's output alone
 * folds into that conv (same segment):
 *   BN(conv(x, w) + b) = conv(x, w') + b',  w'_k = s_k w_k,
 *   b'_k = beta_k + (b_k - mean_k) s_k,     s_k = gamma_k / sqrt(var_k + eps),
 * and the conv writes the batch norm's output, with the ReLU fused into the
 * batch norm applied as it stores; a batch norm without ReLU whose output is
 * read only by an add (ResNet's second conv of a block) hands the add to the
 * conv as well: conv writes relu?(conv + b' + residual) into the add's output,
 * provided the residual is made before the conv runs.  The folded batch norms
 * and adds are marked in eval_skip.  Space for the folded weights and the
 * copies prepare_convs checks them against is counted into fold_floats and
 * prep_w_floats.  Results differ from the unfolded forward by rounding only
 * (the tests hold eval outputs to PyTorch's); EENET_EVAL_FUSE=0 in the
 * environment when the network is built turns the fusion off. */
static void plan_eval_fusion(eenet_net *net, const int *readers, const int *producer) {
    const char *env = getenv("EENET_EVAL_FUSE");
    if (env && env[0] == '0') {
        return;
    }
    for (int j = 0; j < net->num_ops; j++) {
        const net_op *bn = &net->ops[j];
        const int i = bn->kind == EENET_OP_BATCHNORM2D ? producer[bn->in0] : -1;
        if (i < 0 || net->ops[i].kind != EENET_OP_CONV2D || readers[bn->in0] != 1 ||
            net->ops[i].segment != bn->segment) {
            continue;
        }
        conv_layer *L = &net->ops[i].u.conv;
        L->fuse_bn = j;
        L->fuse_out = bn->out; /* a fused ReLU runs in place: its output is this tensor */
        L->fuse_relu = net->fused_relu[j] >= 0;
        net->eval_skip[j] = 1;
        if (!L->fuse_relu && readers[bn->out] == 1) {
            /* the one reader of the batch norm's output: an add taking a residual
             * made before the conv? */
            for (int k = j + 1; k < net->num_ops; k++) {
                const net_op *add = &net->ops[k];
                if (add->kind != EENET_OP_ADD || (add->in0 != bn->out && add->in1 != bn->out)) {
                    continue;
                }
                const int res = add->in0 == bn->out ? add->in1 : add->in0;
                if (res != bn->out && producer[res] < i && add->segment == bn->segment) {
                    L->fuse_out = add->out;
                    L->fuse_res = res;
                    L->fuse_relu = net->fused_relu[k] >= 0;
                    net->eval_skip[k] = 1;
                }
                break;
            }
        }
        const size_t wn = (size_t)L->K * L->C * L->k * L->k;
        L->fold = net->fold_floats;
        net->fold_floats += wn + (size_t)L->K;
        if (L->prep_n == 0) { /* no weight copy yet */
            L->wcopy = net->prep_w_floats;
            net->prep_w_floats += wn;
        }
        L->bncopy = net->prep_w_floats;
        net->prep_w_floats += 4 * (size_t)L->K + (L->bias >= 0 ? (size_t)L->K : 0);
    }
}

/* Whether op i runs in eval mode (fused ReLUs, folded batch norms and adds run
 * inside their producer). */
static int eval_runs(const eenet_net *net, int i) {
    return !(net->fused_relu[i] == -2 || net->eval_skip[i]);
}

/* The tensors op i reads in eval mode (up to 2; returns how many) and the one
 * it writes. */
static int eval_io(const eenet_net *net, int i, int rd[2], int *wr) {
    const net_op *op = &net->ops[i];
    int n = 0;
    rd[n++] = op->in0;
    *wr = op->out;
    if (op->kind == EENET_OP_ADD) {
        rd[n++] = op->in1;
    } else if (op->kind == EENET_OP_CONV2D && op->u.conv.fuse_out >= 0) {
        *wr = op->u.conv.fuse_out;
        if (op->u.conv.fuse_res >= 0) {
            rd[n++] = op->u.conv.fuse_res;
        }
    }
    return n;
}

/* The roots (alias) of what op i touches in eval mode: roots[0], roots[1] its
 * reads (roots[1] = roots[0] for one read), roots[2] the tensor it writes.
 * Returns the number of reads (1 or 2), or 0 if op i does not run in eval. */
static int eval_roots(const eenet_net *net, const int *alias, int i, int roots[3]) {
    int rd[2], wr;
    if (!eval_runs(net, i)) {
        return 0;
    }
    const int n = eval_io(net, i, rd, &wr);
    roots[0] = alias[rd[0]];
    roots[1] = alias[n > 1 ? rd[1] : rd[0]];
    roots[2] = alias[wr];
    return n;
}

/* Of the nbuf row buffers, the free one (freed_at >= 0) of exactly `need`
 * floats per row freed last, else a new one (cap[] set, *nbuf grown); taken
 * (freed_at = -1).  Returns its index. */
static int eval_take_buffer(size_t need, size_t *cap, long *freed_at, int *nbuf) {
    int best = -1;
    for (int b = 0; b < *nbuf; b++) {
        if (freed_at[b] >= 0 && cap[b] == need && (best < 0 || freed_at[b] > freed_at[best])) {
            best = b;
        }
    }
    if (best < 0) {
        best = (*nbuf)++;
        cap[best] = need;
    }
    freed_at[best] = -1;
    return best;
}

/* Eval: the tensors that live within one chunk of rows (run_rows_chunked).
 * predict runs ops [seg_begin[2s], seg_begin[2s + 2]) (stage s and its exit)
 * on the rows still running, then reads that exit's outputs and input row by
 * row; a forward runs every op and reads the exits' outputs.  A tensor
 * written and read by the ops of one such run only (not the input, not an
 * exit's probabilities or confidence, nor in predict an exit's input) is
 * needed by a chunk only while that chunk goes through the run, so every
 * chunk of a thread can use the same rows: net->chunk_rows, one scratch of
 * eval_lrow_floats per chunk row per thread, where these tensors share
 * buffers of their per-sample size by liveness as in plan_eval_arena.  One
 * plan for predict's runs (whole = 0, eval_lrow), one for a forward (whole =
 * 1, eval_lrow + T).  With
 * rows indexed by sample instead, each chunk writes rows last touched a whole
 * call ago (EENet-20 batch 128: 128 rows of a 16x32x32 tensor are 8 MB, 3
 * such tensors per stage-1 block), which cache misses and write-allocates
 * make slower.  eact keeps rows for every tensor: runs not taken in chunks
 * (training, per-op threading, EENET_EVAL_CHUNK=0) use those.
 * EENET_EVAL_LOCAL=0 in the environment when the network is built turns this
 * off.  last, buf_of, cap and freed_at are plan_eval_arena's arrays (T + 1),
 * reused here: last[r] is the last eval op reading root r. */
static eenet_status plan_eval_local(eenet_net *net, const int *alias, const int *last,
                                    int *buf_of, size_t *cap, long *freed_at, int whole) {
    const int T = net->num_tensors;
    long *lrow = net->eval_lrow + (whole ? T : 0);
    int *run_of = malloc(sizeof(int) * (size_t)T); /* root: its run, -2: several/none */
    if (!run_of) {
        return eenet_set_error(EENET_ERR_NOMEM, "out of memory: eval chunk plan");
    }
    for (int t = 0; t < T; t++) {
        lrow[t] = -1;
        run_of[t] = -1;
        buf_of[t] = -1;
    }
    for (int s = 0; s < net->num_exits; s++) {
        for (int i = net->seg_begin[2 * s]; i < net->seg_begin[2 * s + 2]; i++) {
            int roots[3];
            if (!eval_roots(net, alias, i, roots)) {
                continue;
            }
            for (int j = 0; j < 3; j++) {
                const int r = roots[j];
                const int run = whole ? 0 : s;
                run_of[r] = run_of[r] == -1 || run_of[r] == run ? run : -2;
            }
        }
    }
    run_of[alias[0]] = -2;
    for (int e = 0; e < net->num_exits; e++) {
        run_of[alias[net->exit_prob[e]]] = -2;
        if (!whole) {
            run_of[alias[net->exit_input[e]]] = -2;
        }
        if (net->exit_conf[e] >= 0) {
            run_of[alias[net->exit_conf[e]]] = -2;
        }
    }
    /* buffers of the local roots, taken and freed in op order as plan_eval_arena's */
    int nbuf = 0;
    for (int i = 0; i < net->num_ops; i++) {
        int roots[3];
        if (!eval_roots(net, alias, i, roots)) {
            continue;
        }
        for (int j = 0; j < 3; j++) {
            const int r = roots[j];
            if (run_of[r] >= 0 && buf_of[r] < 0) {
                buf_of[r] = eval_take_buffer(net->tsize[r], cap, freed_at, &nbuf);
            }
        }
        for (int j = 0; j < 3; j++) {
            const int r = roots[j];
            if (run_of[r] >= 0 && last[r] <= i && freed_at[buf_of[r]] < 0) {
                freed_at[buf_of[r]] = i;
            }
        }
    }
    /* buffer b: cap[b] floats per row, at a 64-byte multiple per row */
    size_t total = 0;
    for (int b = 0; b < nbuf; b++) {
        const size_t at = total;
        total += (cap[b] + 15) / 16 * 16;
        cap[b] = at;
    }
    for (int t = 0; t < T; t++) {
        const int r = alias[t];
        if (run_of[r] >= 0) {
            lrow[t] = (long)cap[buf_of[r]];
        }
    }
    net->eval_lrow_floats = total > net->eval_lrow_floats ? total : net->eval_lrow_floats;
    free(run_of);
    return EENET_OK;
}

/* Eval-mode activation rows (net->eact).  The training arena gives every
 * tensor its own rows, since backward reads them all; an eval forward needs a
 * tensor only from the op that writes it to the last op that reads it.  Walking
 * the eval ops in order, a tensor (an in-place ReLU's output shares its input's
 * rows: alias) takes the rows of a dead tensor of the same per-sample size --
 * the most recently freed, whose lines are likeliest still cached -- before
 * that op's dead inputs are freed (no op writes over its own inputs); the
 * exits' probabilities and confidences stay to the end (gather_outputs,
 * predict).  Same size only: run_ops splits rows between threads, and a
 * thread ahead by an op writing rows [lo, hi) of a tensor of another size
 * would reach into the rows another thread still reads.  So each layer writes over rows that the last few layers used
 * instead of rows last touched a whole forward ago: measured (1 thread, C
 * harness, 6 chained 16->16 3x3 32x32 F(4x4) layers, CPU time, min of 30, 3
 * rotating buffers vs a new buffer per layer): N=16 172-176 vs 141-147
 * GFLOP/s, N=32 144-147 vs 128-135; 32->32 16x16 225-230 vs 204-212; 64->64
 * 8x8 177-180 either way.  Rows are laid out in the training arena (eval and
 * training calls never overlap, and nothing reads the activations a training
 * step leaves) when they fit, else in their own allocation.  EENET_EVAL_ARENA=0
 * in the environment when the network is built keeps eact = act. */
static eenet_status plan_eval_arena(eenet_net *net, const int *alias) {
    const int T = net->num_tensors;
    net->eact = calloc((size_t)T, sizeof(float *));
    if (!net->eact) {
        return eenet_set_error(EENET_ERR_NOMEM, "out of memory: eval activation table");
    }
    for (int t = 0; t < T; t++) {
        net->eact[t] = net->act[t];
    }
    const char *env = getenv("EENET_EVAL_ARENA");
    if (env && env[0] == '0') {
        return EENET_OK;
    }
    /* last[r]: last eval op reading root r (num_ops: kept to the end, -1: never touched) */
    int *last = malloc(sizeof(int) * (size_t)T), *buf_of = malloc(sizeof(int) * (size_t)T);
    size_t *cap = malloc(sizeof(size_t) * (size_t)(T + 1)), *boff = malloc(sizeof(size_t) * (size_t)(T + 1));
    long *freed_at = malloc(sizeof(long) * (size_t)(T + 1));
    if (!last || !buf_of || !cap || !boff || !freed_at) {
        free(last), free(buf_of), free(cap), free(boff), free(freed_at);
        return eenet_set_error(EENET_ERR_NOMEM, "out of memory: eval activation plan");
    }
    for (int t = 0; t < T; t++) {
        last[t] = -1;
        buf_of[t] = -1;
    }
    last[alias[0]] = 0;
    for (int i = 0; i < net->num_ops; i++) {
        int roots[3];
        const int n = eval_roots(net, alias, i, roots);
        for (int j = 0; j < n; j++) {
            last[roots[j]] = i;
        }
        if (n > 0 && last[roots[2]] < i) {
            last[roots[2]] = i; /* written, maybe never read: live through its op */
        }
    }
    for (int e = 0; e < net->num_exits; e++) {
        last[alias[net->exit_prob[e]]] = net->num_ops;
        if (net->exit_conf[e] >= 0) {
            last[alias[net->exit_conf[e]]] = net->num_ops;
        }
    }
    int nbuf = 0;
    /* the rows of a root: a free buffer of its size, else a new one */
    buf_of[alias[0]] = eval_take_buffer(net->tsize[alias[0]], cap, freed_at, &nbuf);
    for (int i = 0; i < net->num_ops; i++) {
        int roots[3];
        const int n = eval_roots(net, alias, i, roots);
        if (n == 0) {
            continue;
        }
        for (int j = 0; j < n; j++) {
            if (buf_of[roots[j]] < 0) { /* read before any eval op writes it */
                buf_of[roots[j]] = eval_take_buffer(net->tsize[roots[j]], cap, freed_at, &nbuf);
            }
        }
        if (buf_of[roots[2]] < 0) {
            buf_of[roots[2]] = eval_take_buffer(net->tsize[roots[2]], cap, freed_at, &nbuf);
        }
        /* then free what dies here (inputs and a dead output alike) */
        for (int j = 0; j < 3; j++) {
            const int r = roots[j];
            if (last[r] == i && freed_at[buf_of[r]] < 0) {
                freed_at[buf_of[r]] = i;
            }
        }
    }
    size_t total = 0;
    for (int b = 0; b < nbuf; b++) {
        boff[b] = total;
        total += (cap[b] * (size_t)net->max_batch + 15) / 16 * 16; /* 64-byte steps */
    }
    float *base = net->arena;
    if (total > net->arena_floats) {
        net->eval_own = big_calloc(total ? total : 1, sizeof(float));
        if (!net->eval_own) {
            free(last), free(buf_of), free(cap), free(boff), free(freed_at);
            return eenet_set_error(EENET_ERR_NOMEM, "out of memory: eval activations (%zu floats)",
                                   total);
        }
        net->eval_own_floats = total;
        base = net->eval_own;
    }
    for (int t = 0; t < T; t++) {
        const int b = buf_of[alias[t]];
        if (b >= 0) {
            net->eact[t] = base + boff[b];
        }
    }
    eenet_status st = EENET_OK;
    env = getenv("EENET_EVAL_LOCAL");
    if (!(env && env[0] == '0')) {
        net->eval_lrow = malloc(sizeof(long) * 2 * (size_t)T);
        st = net->eval_lrow ? EENET_OK
                            : eenet_set_error(EENET_ERR_NOMEM, "out of memory: eval chunk plan");
        for (int whole = 0; whole < 2 && st == EENET_OK; whole++) {
            st = plan_eval_local(net, alias, last, buf_of, cap, freed_at, whole);
        }
    }
    free(last), free(buf_of), free(cap), free(boff), free(freed_at);
    return st;
}

/* ALLOC: calloc; BIG_ALLOC: big_calloc (free with big_free) */
#define ALLOC_BY(alloc, ptr, count)                                                    \
    do {                                                                               \
        size_t n_ = (size_t)(count);                                                   \
        (ptr) = alloc(n_ ? n_ : 1, sizeof(*(ptr)));                                    \
        if (!(ptr)) {                                                                  \
            st = eenet_set_error(EENET_ERR_NOMEM, "out of memory allocating %s (%zu)", \
                                 #ptr, n_);                                            \
            goto fail;                                                                 \
        }                                                                              \
    } while (0)
#define ALLOC(ptr, count) ALLOC_BY(calloc, ptr, count)
#define BIG_ALLOC(ptr, count) ALLOC_BY(big_calloc, ptr, count)

eenet_status eenet_net_create(eenet_net **out, const int32_t *tensors, int num_tensors,
                              const int32_t *ops, const float *opf, int num_ops,
                              const int32_t *exits, int num_exits, const float *costs,
                              size_t num_params, size_t num_bufs, int num_bn, int max_batch) {
    eenet_status st = EENET_OK;
    *out = NULL;
    if (num_tensors < 2 || num_ops < 1 || num_exits < 1 || max_batch < 1 || num_bn < 0) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "net: need tensors >= 2, ops >= 1, exits >= 1, max_batch >= 1");
    }
    eenet_net *net = calloc(1, sizeof *net);
    if (!net) {
        return eenet_set_error(EENET_ERR_NOMEM, "out of memory allocating the network");
    }
    net->num_tensors = num_tensors;
    net->num_ops = num_ops;
    net->num_exits = num_exits;
    net->max_batch = max_batch;
    net->num_params = num_params;
    net->num_bufs = num_bufs;
    net->num_bn = num_bn;
    net->nthreads = eenet_get_num_threads();

    ALLOC(net->tsize, num_tensors);
    ALLOC(net->act, num_tensors);
    ALLOC(net->grad, num_tensors);
    ALLOC(net->last_consumer, num_tensors);
    for (int t = 0; t < num_tensors; t++) {
        if (TC(t) < 1 || TH(t) < 1 || TW(t) < 1) {
            st = eenet_set_error(EENET_ERR_VALUE, "tensor %d: bad shape (%d, %d, %d)", t, TC(t),
                                 TH(t), TW(t));
            goto fail;
        }
        net->tsize[t] = (size_t)TC(t) * TH(t) * TW(t);
        net->last_consumer[t] = -1;
    }
    ALLOC(net->ops, num_ops);
    ALLOC(net->exit_input, num_exits);
    ALLOC(net->exit_prob, num_exits);
    ALLOC(net->exit_conf, num_exits);
    ALLOC(net->seg_begin, 2 * num_exits + 1);
    ALLOC(net->costs, num_exits);
    /* decode ops; every op's inputs must be produced by an earlier op (or be the image) */
    int *produced;
    ALLOC(produced, num_tensors);
    produced[0] = 1;
    int prev_segment = 0;
    for (int i = 0; i < num_ops; i++) {
        st = decode_op(net, i, ops + (size_t)i * EENET_OP_FIELDS, opf + 2 * (size_t)i, tensors);
        if (st != EENET_OK) {
            free(produced);
            goto fail;
        }
        net_op *op = &net->ops[i];
        int nin = op->kind == EENET_OP_ADD ? 2 : 1;
        int ins[2] = {op->in0, op->in1};
        for (int j = 0; j < nin; j++) {
            if (!produced[ins[j]]) {
                free(produced);
                st = eenet_set_error(EENET_ERR_VALUE, "op %d reads tensor %d before it exists",
                                     i, ins[j]);
                goto fail;
            }
            net->last_consumer[ins[j]] = i;
        }
        if (produced[op->out]) {
            free(produced);
            st = eenet_set_error(EENET_ERR_VALUE, "op %d writes tensor %d twice", i, op->out);
            goto fail;
        }
        produced[op->out] = 1;
        if (op->segment < prev_segment || op->segment >= 2 * num_exits) {
            free(produced);
            st = eenet_set_error(EENET_ERR_VALUE, "op %d: segment %d out of order", i,
                                 op->segment);
            goto fail;
        }
        prev_segment = op->segment;
    }
    free(produced);
    /* segment ranges */
    {
        int g = 0;
        for (int i = 0; i <= num_ops; i++) {
            int seg = i < num_ops ? net->ops[i].segment : 2 * num_exits;
            while (g <= seg) {
                net->seg_begin[g++] = i;
            }
        }
    }
    /* exits */
    for (int e = 0; e < num_exits; e++) {
        net->exit_input[e] = exits[3 * e];
        net->exit_prob[e] = exits[3 * e + 1];
        net->exit_conf[e] = exits[3 * e + 2];
        net->costs[e] = costs[e];
        if (!tensor_ok(net, net->exit_input[e]) || !tensor_ok(net, net->exit_prob[e]) ||
            (net->exit_conf[e] >= 0 && !tensor_ok(net, net->exit_conf[e])) ||
            net->exit_conf[e] == 0 || net->exit_prob[e] == 0) {
            st = eenet_set_error(EENET_ERR_VALUE, "exit %d: bad tensor ids", e);
            goto fail;
        }
        if (e == 0) {
            net->K = (int)net->tsize[net->exit_prob[e]];
        }
        if ((int)net->tsize[net->exit_prob[e]] != net->K ||
            (net->exit_conf[e] >= 0 && net->tsize[net->exit_conf[e]] != 1)) {
            st = eenet_set_error(EENET_ERR_VALUE, "exit %d: probabilities not (K,) or conf not (1,)",
                                 e);
            goto fail;
        }
    }
    /* buffers */
    ALLOC(net->params, num_params);
    ALLOC(net->grads, num_params);
    ALLOC(net->opt_state, 2 * num_params);
    ALLOC(net->bufs, num_bufs);
    ALLOC(net->bufs_snapshot, num_bufs);
    ALLOC(net->nbt, num_bn);
    ALLOC(net->nbt_snapshot, num_bn);
    ALLOC(net->fused_relu, num_ops);
    ALLOC(net->eval_skip, num_ops);
    /* In-place ReLU: a ReLU whose input has no other reader writes over that
     * input.  Safe because no backward reads the input of a ReLU's input
     * tensor's producer output (conv, batch norm and add backward read their
     * inputs and saved statistics, never their outputs) and ReLU backward
     * reads only its output.  Saves a third of the arena and its traffic. */
    {
        int *alias, *readers;
        ALLOC(alias, num_tensors);
        ALLOC(readers, num_tensors);
        for (int i = 0; i < num_ops; i++) {
            const net_op *op = &net->ops[i];
            readers[op->in0] += 1;
            if (op->kind == EENET_OP_ADD) {
                readers[op->in1] += 1;
            }
        }
        for (int t = 0; t < num_tensors; t++) {
            alias[t] = t;
        }
        for (int i = 0; i < num_ops; i++) {
            const net_op *op = &net->ops[i];
            if (op->kind == EENET_OP_RELU && op->in0 != 0 && readers[op->in0] == 1) {
                alias[op->out] = alias[op->in0]; /* ops are in order: in0's root is final */
            }
        }
        /* BN -> ReLU or add -> ReLU with the output read by that ReLU alone
         * (so the ReLU runs in place): the producer's forward applies the ReLU
         * as it writes, and its backward applies the ReLU's (mask the output
         * gradient as relu_backward into a zeroed buffer would) while reading
         * the ReLU's output gradient; no other op reads either gradient. */
        for (int i = 0; i < num_ops; i++) {
            net->fused_relu[i] = -1;
        }
        for (int j = 0; j < num_ops; j++) {
            const net_op *op = &net->ops[j];
            if (op->kind != EENET_OP_RELU || readers[op->in0] != 1 || op->in0 == op->out) {
                continue;
            }
            for (int i = 0; i < j; i++) {
                if (net->ops[i].out == op->in0 &&
                    (net->ops[i].kind == EENET_OP_BATCHNORM2D ||
                     net->ops[i].kind == EENET_OP_ADD) &&
                    net->ops[i].segment == op->segment && net->fused_relu[i] == -1) {
                    net->fused_relu[i] = j;
                    net->fused_relu[j] = -2;
                }
            }
        }
        {
            int *producer = malloc(sizeof(int) * (size_t)num_tensors);
            if (!producer) {
                free(alias);
                free(readers);
                st = eenet_set_error(EENET_ERR_NOMEM, "out of memory: fusion plan");
                goto fail;
            }
            for (int t = 0; t < num_tensors; t++) {
                producer[t] = -1;
            }
            for (int i = 0; i < num_ops; i++) {
                producer[net->ops[i].out] = i;
            }
            plan_eval_fusion(net, readers, producer);
            free(producer);
        }
        net->arena_floats = 0;
        for (int t = 0; t < num_tensors; t++) {
            if (alias[t] == t) {
                net->arena_floats += net->tsize[t] * (size_t)max_batch;
            }
        }
        net->arena = big_calloc(net->arena_floats ? net->arena_floats : 1, sizeof(float));
        if (!net->arena) {
            free(alias);
            free(readers);
            st = eenet_set_error(EENET_ERR_NOMEM, "out of memory: activation arena of %zu floats",
                                 net->arena_floats);
            goto fail;
        }
        size_t off = 0;
        for (int t = 0; t < num_tensors; t++) {
            if (alias[t] == t) {
                net->act[t] = net->arena + off;
                off += net->tsize[t] * (size_t)max_batch;
            }
        }
        for (int t = 0; t < num_tensors; t++) {
            net->act[t] = net->act[alias[t]];
        }
        st = plan_eval_arena(net, alias);
        free(alias);
        free(readers);
        if (st != EENET_OK) {
            goto fail;
        }
    }
    st = plan_grads(net);
    if (st != EENET_OK) {
        goto fail;
    }
    BIG_ALLOC(net->save_area, net->save_floats);
    ALLOC(net->argmax_area, net->argmax_count);
    BIG_ALLOC(net->workspace, net->workspace_floats);
    net->split_threads = net->nthreads < SPLIT_MAX_THREADS ? net->nthreads : SPLIT_MAX_THREADS;
    {
        /* EENET_EVAL_SPLIT=0 in the environment (read when a network is built) keeps
         * eval runs on per-op threading, for comparisons */
        const char *env = getenv("EENET_EVAL_SPLIT");
        if (env && env[0] == '0') {
            net->split_threads = 1;
        }
    }
    net->eval_chunk = EVAL_CHUNK_ROWS;
    net->eval_chunk_wide = EVAL_CHUNK_WIDE_ROWS;
    {
        /* EENET_EVAL_CHUNK_WIDE=<rows>, read when a network is built */
        const char *env = getenv("EENET_EVAL_CHUNK_WIDE");
        if (env && env[0] >= '1' && env[0] <= '9') {
            net->eval_chunk_wide = atoi(env);
        }
    }
    {
        /* EENET_EVAL_CHUNK=<rows> (0: no chunks), read when a network is built */
        const char *env = getenv("EENET_EVAL_CHUNK");
        if (env && env[0] >= '0' && env[0] <= '9') {
            net->eval_chunk = atoi(env);
        }
    }
    if (net->split_threads >= 2) {
        BIG_ALLOC(net->split_ws, (size_t)net->split_threads * net->split_ws_floats);
    }
    if (net->eval_lrow && net->eval_chunk > 0) {
        /* chunks of at most eval_chunk rows (run_rows_chunked), one scratch per thread */
        net->chunk_floats = net->eval_lrow_floats * (size_t)net->eval_chunk;
        BIG_ALLOC(net->chunk_rows, (size_t)(net->split_threads > 1 ? net->split_threads : 1) *
                                   net->chunk_floats);
    }
    ALLOC(net->prep, net->prep_floats);
    ALLOC(net->prep_w, net->prep_w_floats);
    ALLOC(net->fold, net->fold_floats);
    ALLOC(net->probs_all, (size_t)num_exits * max_batch * net->K);
    ALLOC(net->dprobs_all, (size_t)num_exits * max_batch * net->K);
    ALLOC(net->conf_all, (size_t)num_exits * max_batch);
    ALLOC(net->dconf_all, (size_t)num_exits * max_batch);
    ALLOC(net->active, max_batch);
    ALLOC(net->moves, 2 * (size_t)max_batch);
    *out = net;
    return EENET_OK;
fail:
    eenet_net_free(net);
    return st;
}

#undef TC
#undef TH
#undef TW

/* ---- running ops ----------------------------------------------------------- */

/* Rows [r0, r0 + N) of tensor t: in act (net->act in training, net->eact in
 * eval), or for a chunk-local tensor (plan_eval_local) the first N rows of the
 * thread's chunk scratch `chunk` (NULL: not a chunk, every tensor in act). */
typedef struct {
    float *const *act;
    float *chunk;
    const long *lrow; /* net->eval_lrow's plan for this run (with chunk) */
    int r0;
} row_map;

static float *rows_of(const eenet_net *net, const row_map *m, int t) {
    if (m->chunk && m->lrow[t] >= 0) {
        return m->chunk + (size_t)m->lrow[t] * (size_t)net->eval_chunk;
    }
    return m->act[t] + (size_t)m->r0 * net->tsize[t];
}

/* Forward of op i on rows [r0, r0 + N) (r0 = m->r0).  training: BN batch
 * statistics + running update (only with r0 = 0 and the whole batch).  The
 * conv kernels run with scratch ws sized for nth threads. */
static eenet_status op_forward_rows(eenet_net *net, int i, const row_map *m, int N,
                                    int training, float *ws, int nth) {
    net_op *op = &net->ops[i];
    const int r0 = m->r0;
    const float *in = rows_of(net, m, op->in0);
    float *out = rows_of(net, m, op->out);
    switch (op->kind) {
    case EENET_OP_CONV2D: {
        conv_layer *L = &op->u.conv;
        /* eval: weights prepared by prepare_convs (training changes them every step) */
        const int tag = training ? 0 : L->prep_tag;
        const float *w = net->params + L->w;
        const float *bias = L->bias >= 0 ? net->params + L->bias : NULL;
        const float *residual = NULL;
        if (!training && L->fuse_out >= 0) {
            /* the folded batch norm's (or its add's) output, see plan_eval_fusion */
            w = net->fold + L->fold;
            bias = w + (size_t)L->K * L->C * L->k * L->k;
            out = rows_of(net, m, L->fuse_out);
            if (L->fuse_res >= 0) {
                residual = rows_of(net, m, L->fuse_res);
            }
        }
        return eenet_conv2d_forward_fused(out, in, w, tag ? net->prep + L->prep : NULL, tag,
                                          bias, residual, training ? 0 : L->fuse_relu, ws, N,
                                          L->C, L->H, L->W, L->K, L->k, L->k, L->stride, L->pad,
                                          nth);
    }
    case EENET_OP_BATCHNORM2D: {
        bn_layer *L = &op->u.bn;
        const int relu = net->fused_relu[i] >= 0; /* out is also the ReLU's output */
        if (training) {
            /* PyTorch: num_batches_tracked += 1 in train mode (momentum is fixed, so it is
             * only bookkeeping). */
            net->nbt[L->nbt] += 1;
            return (relu ? eenet_bn2d_relu_forward_train : eenet_bn2d_forward_train)(
                out, net->save_area + L->save, net->save_area + L->save + L->C,
                net->bufs + L->rmean, net->bufs + L->rvar, in, net->params + L->gamma,
                net->params + L->beta, L->momentum, L->eps, N, L->C, L->HW);
        }
        return (relu ? eenet_bn2d_relu_forward_eval : eenet_bn2d_forward_eval)(
            out, in, net->params + L->gamma, net->params + L->beta, net->bufs + L->rmean,
            net->bufs + L->rvar, L->eps, N, L->C, L->HW);
    }
    case EENET_OP_RELU:
        return eenet_relu_forward(out, in, (size_t)N * op->u.elt.n);
    case EENET_OP_SIGMOID:
        return eenet_sigmoid_forward(out, in, (size_t)N * op->u.elt.n);
    case EENET_OP_ADD:
        return (net->fused_relu[i] >= 0 ? eenet_add_relu_forward : eenet_add_forward)(
            out, in, rows_of(net, m, op->in1),
            (size_t)N * op->u.elt.n);
    case EENET_OP_MAXPOOL2D: {
        maxpool_layer *L = &op->u.pool;
        return eenet_maxpool2d_forward(out,
                                       net->argmax_area + L->argmax +
                                           (size_t)r0 * net->tsize[op->out],
                                       in, N, L->C, L->H, L->W, L->k, L->stride, L->pad);
    }
    case EENET_OP_GLOBAL_AVGPOOL:
        return eenet_global_avgpool_forward(out, in, N, op->u.gap.C, op->u.gap.HW);
    case EENET_OP_LINEAR: {
        linear_layer *L = &op->u.lin;
        const float *bias = L->bias >= 0 ? net->params + L->bias : NULL;
        if (training) {
            return eenet_linear_forward(out, in, net->params + L->w, bias, N, L->in, L->outf);
        }
        /* Eval mode: one row at a time.  linear_forward picks its path (BLAS or
         * loops) and OpenBLAS its blocking from N, so a batched call may round a
         * sample differently from a call on that sample alone; row by row, a
         * sample's outputs never depend on its batch neighbours, which makes
         * batched early exit equal a one-sample-at-a-time loop exactly. */
        for (int n = 0; n < N; n++) {
            eenet_status st = eenet_linear_forward(out + (size_t)n * L->outf,
                                                   in + (size_t)n * L->in, net->params + L->w,
                                                   bias, 1, L->in, L->outf);
            if (st != EENET_OK) {
                return st;
            }
        }
        return EENET_OK;
    }
    case EENET_OP_SOFTMAX:
        return eenet_softmax_forward(out, in, N, op->u.sm.K);
    default:
        return eenet_set_error(EENET_ERR_INTERNAL, "op %d: unknown kind %d", i, op->kind);
    }
}

/* The output gradient op i's backward reads: its ReLU's when fused, else its own
 * (NULL when nothing downstream has a gradient). */
static float *op_dout(const eenet_net *net, int i) {
    return net->fused_relu[i] >= 0 ? net->grad[net->ops[net->fused_relu[i]].out]
                                   : net->grad[net->ops[i].out];
}

/* Backward of op i on N rows (training-mode statistics); ACCUMULATES into the
 * gradients of its inputs (when they have a slot) and of its parameters, except
 * that input j's gradient is OVERWRITTEN (as if accumulated into zeros) where bit
 * j of `set` is on -- only for kinds set_capable() accepts. */
static eenet_status op_backward(eenet_net *net, int i, int N, int set) {
    net_op *op = &net->ops[i];
    const float *in = net->act[op->in0];
    const float *out = net->act[op->out];
    float *dout = op_dout(net, i);
    float *din = net->grad[op->in0];
    if (!dout) {
        return EENET_OK; /* nothing downstream: no gradient flows */
    }
    switch (op->kind) {
    case EENET_OP_CONV2D: {
        conv_layer *L = &op->u.conv;
        return eenet_conv2d_backward_ex(din, net->grads + L->w,
                                        L->bias >= 0 ? net->grads + L->bias : NULL, dout, in,
                                        net->params + L->w, net->workspace, N, L->C, L->H,
                                        L->W, L->K, L->k, L->k, L->stride, L->pad,
                                        net->nthreads);
    }
    case EENET_OP_BATCHNORM2D: {
        bn_layer *L = &op->u.bn;
        const float *relu_out = net->fused_relu[i] >= 0 ? out : NULL; /* in place */
        if (set & 1) {
            return eenet_bn2d_backward_set(din, net->grads + L->gamma, net->grads + L->beta,
                                           dout, relu_out, in, net->params + L->gamma,
                                           net->save_area + L->save,
                                           net->save_area + L->save + L->C, N, L->C, L->HW);
        }
        if (relu_out) {
            return eenet_bn2d_relu_backward(din, net->grads + L->gamma, net->grads + L->beta,
                                            dout, relu_out, in, net->params + L->gamma,
                                            net->save_area + L->save,
                                            net->save_area + L->save + L->C, N, L->C, L->HW);
        }
        return eenet_bn2d_backward(din, net->grads + L->gamma, net->grads + L->beta, dout, in,
                                   net->params + L->gamma, net->save_area + L->save,
                                   net->save_area + L->save + L->C, N, L->C, L->HW);
    }
    case EENET_OP_RELU:
        return din ? eenet_relu_backward(din, dout, out, (size_t)N * op->u.elt.n) : EENET_OK;
    case EENET_OP_SIGMOID:
        return din ? eenet_sigmoid_backward(din, dout, out, (size_t)N * op->u.elt.n) : EENET_OK;
    case EENET_OP_ADD: {
        /* either side may be the image (no gradient: NULL); in0 == in1 never
         * comes with set bits (see set_capable) */
        float *db = op->in1 == op->in0 ? NULL : net->grad[op->in1];
        const float *relu_out = net->fused_relu[i] >= 0 ? out : NULL; /* in place */
        const size_t n = (size_t)N * op->u.elt.n;
        eenet_status st = eenet_add_relu_backward(din, db, dout, relu_out, n, set);
        if (st == EENET_OK && op->in1 == op->in0 && din) {
            st = eenet_add_relu_backward(din, NULL, dout, relu_out, n, 0);
        }
        return st;
    }
    case EENET_OP_MAXPOOL2D: {
        maxpool_layer *L = &op->u.pool;
        return din ? eenet_maxpool2d_backward(din, dout, net->argmax_area + L->argmax, N, L->C,
                                              L->H, L->W, L->Ho, L->Wo)
                   : EENET_OK;
    }
    case EENET_OP_GLOBAL_AVGPOOL:
        return din ? eenet_global_avgpool_backward(din, dout, N, op->u.gap.C, op->u.gap.HW)
                   : EENET_OK;
    case EENET_OP_LINEAR: {
        linear_layer *L = &op->u.lin;
        return eenet_linear_backward(din, net->grads + L->w,
                                     L->bias >= 0 ? net->grads + L->bias : NULL, dout, in,
                                     net->params + L->w, N, L->in, L->outf);
    }
    case EENET_OP_SOFTMAX:
        return din ? eenet_softmax_backward(din, dout, out, N, op->u.sm.K) : EENET_OK;
    default:
        return eenet_set_error(EENET_ERR_INTERNAL, "op %d: unknown kind %d", i, op->kind);
    }
}

/* 1 if op i's backward can OVERWRITE the gradient of its input j (0 or 1)
 * rather than accumulate into a zeroed one: batch norm and add, when an
 * output gradient exists (else the backward returns without writing) and the
 * add's two inputs are distinct tensors. */
static int set_capable(const eenet_net *net, int i, int j) {
    const net_op *op = &net->ops[i];
    if (!op_dout(net, i)) {
        return 0;
    }
    switch (op->kind) {
    case EENET_OP_BATCHNORM2D:
        return j == 0;
    case EENET_OP_ADD:
        return op->in0 != op->in1;
    default:
        return 0;
    }
}

/* Ops [begin, end) forward on rows [r0, r0 + N) (chunk: the thread's chunk
 * scratch for an eval chunk, else NULL); timed when `timed`. */
static eenet_status run_ops_rows(eenet_net *net, int begin, int end, int r0, int N,
                                 int training, float *ws, int nth, int timed, float *chunk) {
    /* a run of every op is a forward's (gather_outputs reads the exits' outputs
     * only); any other is one of predict's */
    const long *lrow = net->eval_lrow + (begin == 0 && end == net->num_ops ? net->num_tensors : 0);
    const row_map m = {training ? net->act : net->eact, chunk, chunk ? lrow : NULL, r0};
    for (int i = begin; i < end; i++) {
        if (net->fused_relu[i] == -2 || (!training && net->eval_skip[i])) {
            continue; /* done inside its producer's forward */
        }
        eenet_status st = op_forward_rows(net, i, &m, N, training, ws, nth);
        if (timed) {
            prof_mark(net, EENET_PROF_FWD + net->ops[i].kind);
        }
        if (st != EENET_OK) {
            return st;
        }
    }
    return EENET_OK;
}

/* Whether ops [begin, end) are one of predict's runs (not a whole forward)
 * whose convolutions all write at least 16K floats per row (64 KB: EENet-20's
 * and -110's first stage, 16x32x32, where their early exits leave).  Such runs
 * take EVAL_CHUNK_WIDE_ROWS rows at a time: measured (2 threads, quiet, one
 * build, nets with EENET_EVAL_CHUNK=4 and 16 alternating in one process, time
 * 4 / 16 rows, medians) predict 0.94-0.96 (EENet-20 batch 32 and 128,
 * EENet-110 batch 32) and 0.89 (EENet-110 batch 128), but predict_all
 * 1.02-1.09: a whole forward, and runs reaching the 16x16 and 8x8 stages,
 * whose kernels take 4 samples per block, keep EVAL_CHUNK_ROWS. */
static int wide_run(const eenet_net *net, int begin, int end) {
    if (begin == 0 && end == net->num_ops) {
        return 0;
    }
    for (int i = begin; i < end; i++) {
        const net_op *op = &net->ops[i];
        if (op->kind == EENET_OP_CONV2D &&
            (long)op->u.conv.K * op->u.conv.Ho * op->u.conv.Wo < 16384) {
            return 0;
        }
    }
    return 1;
}

/* Eval: ops [begin, end) on rows [r0, r0 + N) single-threaded, at most
 * net->eval_chunk rows at a time: each chunk goes through every op before the
 * next starts, so a layer's input, output and residual rows stay in cache
 * between layers (with plan_eval_arena's shared rows; eval ops are row-local
 * and a sample's bits never depend on the rows around it).  Measured (1
 * thread, CPU time, min of 10-12 calls, load average ~1.8, EENET_EVAL_CHUNK=0
 * -> 16, with shared rows): EENet-110 batch 128 predict_all 521 -> 394 ms,
 * early exit 133 -> 107 ms; EENet-20 batch 128 80.3 -> 64.8 ms, 28.5 -> 25.9
 * ms; at batch 32 within the noise (EENet-110 85-92 vs 85-97 ms).  Chunks of
 * 4 and 8 rows were not told apart from 16 under that load. */
static eenet_status run_rows_chunked(eenet_net *net, int begin, int end, int r0, int N,
                                     float *ws, int timed, int thread) {
    /* ceil(N / R) chunks of near-equal size (25 rows: 13 + 12, not 16 + 9) */
    int R = net->eval_chunk > 0 ? net->eval_chunk : N;
    if (R > net->eval_chunk_wide && wide_run(net, begin, end)) {
        R = net->eval_chunk_wide;
    }
    const int nc = (N + R - 1) / R;
    float *chunk = net->chunk_rows ? net->chunk_rows + (size_t)thread * net->chunk_floats : NULL;
    for (int c = 0; c < nc; c++) {
        const int a = (int)((long)N * c / nc), b = (int)((long)N * (c + 1) / nc);
        eenet_status st = run_ops_rows(net, begin, end, r0 + a, b - a, 0, ws, 1, timed, chunk);
        if (st != EENET_OK) {
            return st;
        }
    }
    return EENET_OK;
}

/* Per-sample multiply-adds of op i (conv and linear; 0 for the rest). */
static double op_macs(const eenet_net *net, int i) {
    const net_op *op = &net->ops[i];
    if (op->kind == EENET_OP_CONV2D) {
        const conv_layer *L = &op->u.conv;
        return (double)L->K * L->C * L->k * L->k * L->Ho * L->Wo;
    }
    if (op->kind == EENET_OP_LINEAR) {
        return (double)op->u.lin.in * op->u.lin.outf;
    }
    return 0.0;
}

/* Threads for an eval-mode run of ops [begin, end) on N rows split between
 * threads: 1 for no split.  A split needs each thread's share to be at least
 * SPLIT_MIN_MACS multiply-adds, so that its one fork/join and the imbalance of
 * whole samples stay small; smaller runs (EENet-8) keep per-op threading. */
static double run_macs(const eenet_net *net, int begin, int end) {
    double macs = 0.0;
    for (int i = begin; i < end; i++) {
        macs += op_macs(net, i);
    }
    return macs;
}

static int split_threads(const eenet_net *net, int begin, int end, int N) {
    int T = eenet_get_num_threads();
    T = T < net->split_threads ? T : net->split_threads;
    T = T < N ? T : N;
    if (N < SPLIT_MIN_ROWS || T < 2) {
        return 1;
    }
    return (double)(N / T) * run_macs(net, begin, end) >= SPLIT_MIN_MACS ? T : 1;
}

/* Where run_ops splits a row's ops [begin, end) in two of near-equal
 * multiply-adds: ops [begin, mid) and [mid, end). */
static int split_mid(const eenet_net *net, int begin, int end) {
    const double half = 0.5 * run_macs(net, begin, end);
    double acc = 0.0;
    for (int i = begin; i < end; i++) {
        const double next = acc + op_macs(net, i);
        if (next >= half) {
            return next - half < half - acc ? i + 1 : i;
        }
        acc = next;
    }
    return end;
}

/* Eval mode: make the prepared weights of the convolutions among ops
 * [begin, end) match their weights.  A conv's weights are transformed again
 * when they differ bit for bit from the copy they were prepared from (a
 * training step, load_state_dict, or a write through a state_dict view all
 * change them unseen) or when the conv switch changed; checking costs one
 * pass over the weights and their copy.  Measured (64->64 3x3 on 8x8, one
 * thread, us per sample, prepared vs transformed at each call): one sample
 * 41.5 vs 74.0, three 31.4 vs 42.1, sixteen 26.9 vs 28.8 -- the few rows
 * that reach an early-exit net's last stage gain most. */
static void prepare_convs(eenet_net *net, int begin, int end) {
    const int impl = eenet_conv2d_get_impl();
    for (int i = begin; i < end; i++) {
        if (net->ops[i].kind != EENET_OP_CONV2D) {
            continue;
        }
        conv_layer *L = &net->ops[i].u.conv;
        const int folded = L->fuse_out >= 0;
        if (L->prep_n == 0 && !folded) {
            continue;
        }
        const float *w = net->params + L->w;
        float *copy = net->prep_w + L->wcopy;
        const size_t wn = (size_t)L->K * L->C * L->k * L->k;
        const int K = L->K;
        if (folded) {
            /* the fold also reads the batch norm's parameters and running
             * statistics (and the conv bias): copies of them beside the weights' */
            const bn_layer *B = &net->ops[L->fuse_bn].u.bn;
            const float *src[5] = {net->params + B->gamma, net->params + B->beta,
                                   net->bufs + B->rmean, net->bufs + B->rvar,
                                   L->bias >= 0 ? net->params + L->bias : NULL};
            float *bc = net->prep_w + L->bncopy;
            int same = L->prep_impl == impl && memcmp(w, copy, sizeof(float) * wn) == 0;
            for (int q = 0; q < 5 && same; q++) {
                same = !src[q] || memcmp(src[q], bc + (size_t)q * K, sizeof(float) * K) == 0;
            }
            if (same) {
                continue;
            }
            memcpy(copy, w, sizeof(float) * wn);
            for (int q = 0; q < 5; q++) {
                if (src[q]) {
                    memcpy(bc + (size_t)q * K, src[q], sizeof(float) * K);
                }
            }
            /* w'_k = s_k w_k, b'_k = beta_k + (b_k - mean_k) s_k, s_k = gamma_k /
             * sqrt(var_k + eps), each rounded once from double */
            float *fw = net->fold + L->fold, *fb = fw + wn;
            const size_t per_k = wn / (size_t)K;
            for (int k = 0; k < K; k++) {
                const double sk = (double)src[0][k] / sqrt((double)src[3][k] + (double)B->eps);
                for (size_t e = 0; e < per_k; e++) {
                    fw[(size_t)k * per_k + e] = (float)(sk * (double)w[(size_t)k * per_k + e]);
                }
                const double bk = src[4] ? (double)src[4][k] : 0.0;
                fb[k] = (float)((double)src[1][k] + (bk - (double)src[2][k]) * sk);
            }
            w = fw;
        } else {
            /* the tag depends on the shape and the switch only: a path that
             * prepares nothing needs no look at the weights */
            if (L->prep_impl == impl &&
                (L->prep_tag == 0 || memcmp(w, copy, sizeof(float) * wn) == 0)) {
                continue;
            }
            memcpy(copy, w, sizeof(float) * wn);
        }
        L->prep_tag = L->prep_n ? eenet_conv2d_prepare(net->prep + L->prep, w, L->C, L->H, L->W,
                                                       L->K, L->k, L->k, L->stride, L->pad)
                                : 0;
        L->prep_impl = impl;
    }
}

/* Ops [begin, end) forward on the first N rows.  Eval mode with several
 * threads: the rows are split into contiguous parts, one per thread, each
 * running every op single-threaded with its own conv scratch -- one fork/join
 * per call instead of one per op, and no op split thinner than a sample.  Eval
 * kernels compute each sample on its own (see the eval linear below), so the
 * split changes no result. */
static eenet_status run_ops(eenet_net *net, int begin, int end, int N, int training) {
    if (!training) {
        prepare_convs(net, begin, end);
    }
    const int T = training ? 1 : split_threads(net, begin, end, N);
    if (T < 2 && !training && end > begin &&
        (double)N * run_macs(net, begin, end) / (end - begin) < SPLIT_MIN_MACS) {
        /* An eval run not split by rows whose ops average under SPLIT_MIN_MACS
         * multiply-adds runs single-threaded: per-op threading pays a
         * fork/join per op (a wake-up each with OMP_WAIT_POLICY=PASSIVE) that
         * ops this small do not earn back.  Measured at 2 threads, per-op
         * threaded -> one thread: EENet-20 3x32x32 one row (0.7 M per op)
         * predict_all 2.05 -> 0.94 ms; EENet-8 batch 128 predict_all 1.61 ->
         * 1.08 ms, early-exit predict 1.03 -> 0.72 ms.  Large inputs
         * (ImageNet-sized layers) keep per-op threads. */
        int previous = eenet_limit_threads(1);
        eenet_status st = run_rows_chunked(net, begin, end, 0, N, net->workspace, 1, 0);
        eenet_limit_threads(previous);
        return st;
    }
    if (T < 2 && !training && eenet_get_num_threads() < 2) {
        return run_rows_chunked(net, begin, end, 0, N, net->workspace, 1, 0); /* one thread */
    }
    if (T < 2) {
        return run_ops_rows(net, begin, end, 0, N, training, net->workspace, net->nthreads, 1,
                            NULL);
    }
    eenet_status err = EENET_OK;
    char msg[512];
    msg[0] = '\0';
    const int mid = split_mid(net, begin, end);
    atomic_int half_done; /* the leftover row's first half: 0 running, 1 done, 2 failed */
    atomic_init(&half_done, 0);
#ifdef _OPENMP
#pragma omp parallel num_threads(T)
#endif
    {
        /* split by the team that really runs (a build without OpenMP, or a
         * runtime that grants fewer threads, runs all rows on fewer parts) */
        int t = 0, team = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        team = omp_get_num_threads();
#endif
        if (t < T) {
            const int parts = team < T ? team : T;
            /* N = parts * k + 1 rows (k >= 1): the last row's ops are split at
             * mid, the first part run by thread 0 before its own rows, the
             * second by the last thread after its own, so that no thread has a
             * whole row more than another (EENet-20 batch 32: 7 rows reach the
             * last exit, 3 on one thread and 4 on the other).  That row takes
             * its rows in eact (no chunk scratch): the two parts run on
             * different threads, one after the other. */
            const int leftover = parts >= 2 && N > parts && N % parts == 1 && mid > begin &&
                                 mid < end;
            const int M = N - leftover;
            const int lo = (int)((long)M * t / parts), hi = (int)((long)M * (t + 1) / parts);
            float *ws = net->split_ws + (size_t)t * net->split_ws_floats;
            eenet_status st = EENET_OK;
            if (leftover && t == 0) {
                st = run_ops_rows(net, begin, mid, M, 1, 0, ws, 1, 1, NULL);
                atomic_store_explicit(&half_done, st == EENET_OK ? 1 : 2, memory_order_release);
            }
            if (hi > lo && st == EENET_OK) {
                st = run_rows_chunked(net, begin, end, lo, hi - lo, ws, t == 0, t);
            }
            if (leftover && t == parts - 1 && st == EENET_OK) {
                int h;
                while ((h = atomic_load_explicit(&half_done, memory_order_acquire)) == 0) {
                    /* thread 0 started with it: normally done long before */
                }
                if (h == 1) {
                    st = run_ops_rows(net, mid, end, M, 1, 0, ws, 1, 0, NULL);
                }
            }
            if (st != EENET_OK) {
#ifdef _OPENMP
#pragma omp critical(eenet_split_error)
#endif
                {
                    if (err == EENET_OK) {
                        err = st;
                        snprintf(msg, sizeof msg, "%s", eenet_last_error()); /* thread-local */
                    }
                }
            }
        }
    }
    if (err != EENET_OK) {
        return eenet_set_error(err, "%s", msg);
    }
    return EENET_OK;
}

/* Copy every exit's outputs (rows of act: net->act in training, net->eact in
 * eval) into probs (E1,B,K) and conf (E1,B). */
static void gather_outputs(const eenet_net *net, float *const *act, float *probs, float *conf,
                           int B) {
    int K = net->K;
    for (int e = 0; e < net->num_exits; e++) {
        memcpy(probs + (size_t)e * B * K, act[net->exit_prob[e]], sizeof(float) * B * K);
        if (net->exit_conf[e] >= 0) {
            memcpy(conf + (size_t)e * B, act[net->exit_conf[e]], sizeof(float) * B);
        } else {
            for (int n = 0; n < B; n++) {
                conf[(size_t)e * B + n] = 1.0f;
            }
        }
    }
}

static eenet_status check_batch(const eenet_net *net, int B) {
    if (B < 1 || B > net->max_batch) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "batch size %d outside [1, max_batch=%d] the network was built for",
                               B, net->max_batch);
    }
    return EENET_OK;
}

eenet_status eenet_net_forward(eenet_net *net, float *probs, float *conf, const float *x,
                               int B, int training) {
    eenet_status st = check_batch(net, B);
    if (st != EENET_OK) {
        return st;
    }
    float *const *act = training ? net->act : net->eact;
    prof_start(net);
    memcpy(act[0], x, sizeof(float) * (size_t)B * net->tsize[0]);
    prof_mark(net, EENET_PROF_OTHER);
    st = run_ops(net, 0, net->num_ops, B, training);
    if (st == EENET_OK) {
        gather_outputs(net, act, probs, conf, B);
    }
    return st;
}

/* ---- training step ---------------------------------------------------------- */

static int all_finite(const float *a, size_t n) {
    for (size_t j = 0; j < n; j++) {
        if (!isfinite(a[j])) {
            return 0;
        }
    }
    return 1;
}

/* Exit a sample takes under the inference rule: first early exit with conf > T. */
static int exit_of(const float *conf, int E1, int B, int n, float threshold) {
    for (int e = 0; e < E1 - 1; e++) {
        if (conf[(size_t)e * B + n] > threshold) {
            return e;
        }
    }
    return E1 - 1;
}

static int argmax_row(const float *p, int K) {
    int best = 0;
    for (int k = 1; k < K; k++) {
        if (p[k] > p[best]) {
            best = k;
        }
    }
    return best;
}

static eenet_status train_step_inner(eenet_net *net, eenet_step_stats *stats,
                                     int64_t *exit_counts, float *nll, const int64_t *labels,
                                     const int32_t *tags, int B, int version, float lambda_coef,
                                     float threshold, const eenet_opt_config *opt) {
    int E1 = net->num_exits, K = net->K;
    eenet_status st;
    memset(net->grads, 0, sizeof(float) * net->num_params);
    prof_mark(net, EENET_PROF_ZERO);
    st = run_ops(net, 0, net->num_ops, B, 1);
    if (st != EENET_OK) {
        return st;
    }
    gather_outputs(net, net->act, net->probs_all, net->conf_all, B);
    memset(net->dprobs_all, 0, sizeof(float) * (size_t)E1 * B * K);
    memset(net->dconf_all, 0, sizeof(float) * (size_t)E1 * B);
    st = eenet_ee_loss(stats->parts, net->dprobs_all, net->dconf_all, net->probs_all,
                       net->conf_all, net->costs, labels, tags, version, lambda_coef, E1, B, K);
    if (st == EENET_ERR_NONFINITE) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", eenet_last_error());
        return eenet_set_error(EENET_ERR_NONFINITE,
                               "non-finite loss at step %lld (%s); the step was not applied",
                               (long long)opt->step, msg);
    }
    if (st != EENET_OK) {
        return st;
    }
    if (!isfinite(stats->parts[0])) {
        return eenet_set_error(EENET_ERR_NONFINITE,
                               "non-finite loss (%g) at step %lld; the step was not applied",
                               (double)stats->parts[0], (long long)opt->step);
    }
    /* statistics under the inference rule */
    stats->correct = 0;
    stats->cost_sum = 0.0;
    for (int e = 0; e < E1; e++) {
        exit_counts[e] = 0;
    }
    for (int n = 0; n < B; n++) {
        int e = exit_of(net->conf_all, E1, B, n, threshold);
        const float *p = net->probs_all + ((size_t)e * B + n) * K;
        stats->correct += argmax_row(p, K) == labels[n];
        stats->cost_sum += net->costs[e];
        exit_counts[e] += 1;
        for (int i = 0; i < E1; i++) {
            float py = net->probs_all[((size_t)i * B + n) * K + labels[n]];
            nll[(size_t)i * B + n] = -logf(py > EENET_PROB_FLOOR ? py : EENET_PROB_FLOOR);
        }
    }
    /* backward: seed the exits' gradients, then ops in reverse */
    for (int e = 0; e < E1; e++) {
        memcpy(net->grad[net->exit_prob[e]], net->dprobs_all + (size_t)e * B * K,
               sizeof(float) * (size_t)B * K);
        if (net->exit_conf[e] >= 0) {
            memcpy(net->grad[net->exit_conf[e]], net->dconf_all + (size_t)e * B,
                   sizeof(float) * (size_t)B);
        }
    }
    prof_mark(net, EENET_PROF_LOSS);
    for (int i = net->num_ops - 1; i >= 0; i--) {
        const net_op *op = &net->ops[i];
        if (net->fused_relu[i] == -2) {
            continue; /* done inside the batch norm's backward */
        }
        /* an input whose last reader (in forward order) is this op gets a fresh
         * gradient: zeroed, or overwritten by a kernel that can */
        int ins[2] = {op->in0, op->kind == EENET_OP_ADD ? op->in1 : -1};
        int set = 0;
        for (int j = 0; j < 2; j++) {
            int t = ins[j];
            if (t > 0 && net->last_consumer[t] == i && net->grad[t] &&
                !(j == 1 && t == ins[0])) {
                if (set_capable(net, i, j)) {
                    set |= 1 << j;
                } else {
                    memset(net->grad[t], 0, sizeof(float) * (size_t)B * net->tsize[t]);
                }
            }
        }
        prof_mark(net, EENET_PROF_ZERO);
        st = op_backward(net, i, B, set);
        prof_mark(net, EENET_PROF_BWD + op->kind);
        if (st != EENET_OK) {
            return st;
        }
    }
    if (!all_finite(net->grads, net->num_params)) {
        return eenet_set_error(EENET_ERR_NONFINITE,
                               "non-finite gradient at step %lld (loss %g); the step was not "
                               "applied",
                               (long long)opt->step, (double)stats->parts[0]);
    }
    if (opt->kind == EENET_OPT_SGD) {
        st = eenet_sgd_step(net->params, net->opt_state, net->grads, net->num_params, opt->lr,
                            opt->momentum, opt->dampening, opt->weight_decay, opt->nesterov,
                            opt->first_step);
    } else if (opt->kind == EENET_OPT_ADAM) {
        st = eenet_adam_step(net->params, net->opt_state, net->opt_state + net->num_params,
                             net->grads, net->num_params, opt->lr, opt->beta1, opt->beta2,
                             opt->eps, opt->weight_decay, (int)opt->step);
    } else {
        st = eenet_set_error(EENET_ERR_VALUE, "unknown optimiser kind %d", opt->kind);
    }
    prof_mark(net, EENET_PROF_OPTIM);
    return st;
}

eenet_status eenet_net_train_step(eenet_net *net, eenet_step_stats *stats, int64_t *exit_counts,
                                  float *nll, const float *x, const int64_t *labels,
                                  const int32_t *tags, int B, int version, float lambda_coef,
                                  float threshold, const eenet_opt_config *opt) {
    eenet_status st = check_batch(net, B);
    if (st != EENET_OK) {
        return st;
    }
    if (version < 0 || version > 4 || (version == 4 && !tags)) {
        return eenet_set_error(EENET_ERR_VALUE, "loss version %d (v4 needs tags)", version);
    }
    if (opt->step < 1) {
        return eenet_set_error(EENET_ERR_VALUE, "optimiser step must be >= 1, got %lld",
                               (long long)opt->step);
    }
    /* BN running statistics change in forward: keep a copy so a failed step
     * leaves the whole state as it was */
    prof_start(net);
    memcpy(net->bufs_snapshot, net->bufs, sizeof(float) * net->num_bufs);
    memcpy(net->nbt_snapshot, net->nbt, sizeof(int64_t) * (size_t)net->num_bn);
    memcpy(net->act[0], x, sizeof(float) * (size_t)B * net->tsize[0]);
    prof_mark(net, EENET_PROF_OTHER);
    st = train_step_inner(net, stats, exit_counts, nll, labels, tags, B, version, lambda_coef,
                          threshold, opt);
    if (st == EENET_ERR_NONFINITE && strstr(eenet_last_error(), " at step ") == NULL) {
        /* a kernel met NaN/Inf (e.g. batch norm statistics of an overflowed
         * activation): say which step, as the loss check does */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", eenet_last_error());
        st = eenet_set_error(EENET_ERR_NONFINITE,
                             "non-finite values at step %lld (%s); the step was not applied",
                             (long long)opt->step, msg);
    }
    if (st != EENET_OK) {
        memcpy(net->bufs, net->bufs_snapshot, sizeof(float) * net->num_bufs);
        memcpy(net->nbt, net->nbt_snapshot, sizeof(int64_t) * (size_t)net->num_bn);
    }
    return st;
}

/* ---- batched early-exit inference -------------------------------------------- */

eenet_status eenet_net_predict(eenet_net *net, int64_t *labels, float *probs, int64_t *exit,
                               float *conf, const float *x, int B, float threshold) {
    eenet_status st = check_batch(net, B);
    if (st != EENET_OK) {
        return st;
    }
    int E1 = net->num_exits, K = net->K;
    prof_start(net);
    memcpy(net->eact[0], x, sizeof(float) * (size_t)B * net->tsize[0]);
    for (int n = 0; n < B; n++) {
        net->active[n] = n;
    }
    prof_mark(net, EENET_PROF_OTHER);
    int n_active = B;
    for (int s = 0; s < E1 && n_active > 0; s++) {
        st = run_ops(net, net->seg_begin[2 * s], net->seg_begin[2 * s + 2], n_active, 0);
        if (st != EENET_OK) {
            break;
        }
        const float *p = net->eact[net->exit_prob[s]];
        const float *c = net->exit_conf[s] >= 0 ? net->eact[net->exit_conf[s]] : NULL;
        float *boundary = net->eact[net->exit_input[s]];
        size_t row = net->tsize[net->exit_input[s]];
        int kept = 0;
        for (int j = 0; j < n_active; j++) {
            float cj = c ? c[j] : 1.0f;
            if (s == E1 - 1 || cj > threshold) {
                int o = net->active[j];
                memcpy(probs + (size_t)o * K, p + (size_t)j * K, sizeof(float) * K);
                labels[o] = argmax_row(p + (size_t)j * K, K);
                exit[o] = s;
                conf[o] = cj;
                net->active[j] = -1; /* left */
            } else {
                kept++;
            }
        }
        /* The rows that go on fill [0, kept): each one above it moves into a
         * row below it that left (as many of each), so no copy reads a row
         * another writes, and the copies run in parallel, each thread moving
         * the rows it will run next (run_ops' split of [0, kept)).  A row's
         * results do not depend on its position.  Measured against moving
         * every row down in order on one thread (EENet-20 batch 128, 2
         * threads, exits [77, 26, 25], medians of 40 calls, two runs each):
         * exits' share 0.46-2.8 -> 0.17-0.26 ms, predict 15.0-16.7 -> 13.5-14.2
         * ms; batch 32 unchanged. */
        int *holes = net->moves, *from = net->moves + B, nmove = 0, nholes = 0;
        for (int j = 0; j < kept; j++) {
            if (net->active[j] < 0) {
                holes[nholes++] = j; /* as many as the rows to move (kept counts both) */
            }
        }
        for (int j = kept; j < n_active; j++) {
            if (net->active[j] >= 0) {
                from[nmove++] = j;
            }
        }
        int nt = eenet_get_num_threads();
        if ((double)nmove * row < 65536.0) {
            nt = 1; /* under 256 KB: not worth a fork */
        }
        (void)nt;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
        {
            int t = eenet_thread_num(), team = eenet_team_size();
            const int lo = (int)((long)kept * t / team), hi = (int)((long)kept * (t + 1) / team);
            for (int i = 0; i < nmove; i++) {
                if (holes[i] >= lo && holes[i] < hi) {
                    memcpy(boundary + (size_t)holes[i] * row, boundary + (size_t)from[i] * row,
                           sizeof(float) * row);
                }
            }
        }
        for (int i = 0; i < nmove; i++) {
            net->active[holes[i]] = net->active[from[i]];
        }
        n_active = kept;
        prof_mark(net, EENET_PROF_EXIT);
    }
    return st;
}
