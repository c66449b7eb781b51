/* net.h: the network engine.  A network is a flat program of op records that
 * eenet/net.py derives from a ModelSpec (eenet/spec.py); this file runs it:
 * forward (train or eval mode), the early-exit loss, backward, the optimiser
 * step, and batched early-exit inference.
 *
 * Memory (allocated once in eenet_net_create, never reallocated):
 *   params    (num_params)      every trainable parameter, one buffer
 *   grads     (num_params)      same layout
 *   opt_state (2 * num_params)  SGD momentum (first half) or Adam m | v
 *   bufs      (num_bufs)        BN running_mean / running_var
 *   nbt       (num_bn)          BN num_batches_tracked (int64)
 *   arena                       one activation per tensor id, max_batch rows
 *   grad arena                  tensor gradients, slots shared between tensors
 *                               whose backward lifetimes do not overlap
 *   workspace                   conv scratch for the largest layer
 *
 * Encoding of the description (all int32, row-major):
 *   tensors (T, 3): per-sample C, H, W of each tensor id (vectors: F, 1, 1);
 *                   tensor 0 is the input image.
 *   ops (num_ops, EENET_OP_FIELDS): one record per op, see EENET_F_* below;
 *                   ordered stage 0, exit 0, stage 1, exit 1, ..., stage E, exit E
 *                   (field EENET_F_SEGMENT = 2*s for stage s, 2*s+1 for exit s).
 *   opf (num_ops, 2): float attributes: eps, momentum (batch norm).
 *   exits (E1, 3): input tensor (the stage-boundary feature map), probability
 *                  tensor (softmax output, (K,1,1)), confidence tensor
 *                  (sigmoid output, (1,1,1)) or -1 when the exit has none.
 */
#ifndef EENET_NET_H
#define EENET_NET_H

#include <stddef.h>
#include <stdint.h>

#include "eenet.h"

typedef enum {
    EENET_OP_CONV2D = 0,
    EENET_OP_BATCHNORM2D = 1,
    EENET_OP_RELU = 2,
    EENET_OP_ADD = 3,
    EENET_OP_MAXPOOL2D = 4,
    EENET_OP_GLOBAL_AVGPOOL = 5,
    EENET_OP_LINEAR = 6,
    EENET_OP_SIGMOID = 7,
    EENET_OP_SOFTMAX = 8,
    EENET_OP_NUM_KINDS = 9
} eenet_op_kind;

/* Fields of one op record. */
enum {
    EENET_F_KIND = 0,
    EENET_F_IN0 = 1,
    EENET_F_IN1 = 2,      /* second input of add, else -1 */
    EENET_F_OUT = 3,
    EENET_F_KERNEL = 4,   /* conv / maxpool */
    EENET_F_STRIDE = 5,
    EENET_F_PAD = 6,
    EENET_F_WEIGHT = 7,   /* offset in params of weight (conv, linear) or gamma (bn) */
    EENET_F_BIAS = 8,     /* offset of bias / beta, -1 if none */
    EENET_F_RMEAN = 9,    /* offset in bufs of running_mean (bn) */
    EENET_F_RVAR = 10,    /* offset in bufs of running_var (bn) */
    EENET_F_NBT = 11,     /* index in nbt (bn) */
    EENET_F_SEGMENT = 12,
    EENET_OP_FIELDS = 16
};

/* Optimiser configuration for one training step (PyTorch's formulas, kernels.h). */
typedef enum { EENET_OPT_SGD = 0, EENET_OPT_ADAM = 1 } eenet_opt_kind;

typedef struct {
    int kind;
    double lr;
    double momentum, dampening; /* SGD */
    int nesterov;               /* SGD */
    double beta1, beta2, eps;   /* Adam */
    double weight_decay;        /* both; applied to every parameter, as PyTorch does */
    int64_t step;              /* 1-based number of this step (Adam bias correction, errors) */
    int first_step;            /* SGD: momentum buffer not yet initialised */
} eenet_opt_config;

/* Statistics of one training step (all over the batch). */
typedef struct {
    float parts[4];     /* loss total, classification, cost, confidence */
    int64_t correct;    /* early-exit predictions equal to the label */
    double cost_sum;    /* sum of the cost of the exit each sample would take */
} eenet_step_stats;

typedef struct eenet_net eenet_net;

/* Build a network; *out is NULL on error.  costs (E1): c_i, the last 1. */
eenet_status eenet_net_create(eenet_net **out, const int32_t *tensors, int num_tensors,
                              const int32_t *ops, const float *opf, int num_ops,
                              const int32_t *exits, int num_exits, const float *costs,
                              size_t num_params, size_t num_bufs, int num_bn, int max_batch);
void eenet_net_free(eenet_net *net);

float *eenet_net_params(eenet_net *net);
float *eenet_net_grads(eenet_net *net);
float *eenet_net_opt_state(eenet_net *net);
float *eenet_net_bufs(eenet_net *net);
int64_t *eenet_net_nbt(eenet_net *net);
size_t eenet_net_num_params(const eenet_net *net);
size_t eenet_net_num_bufs(const eenet_net *net);
int eenet_net_num_bn(const eenet_net *net);
int eenet_net_num_exits(const eenet_net *net);
int eenet_net_num_classes(const eenet_net *net);
int eenet_net_max_batch(const eenet_net *net);
/* Per-sample size (floats) of the input image. */
size_t eenet_net_input_size(const eenet_net *net);
/* Bytes the network allocated (arena, grads, workspace, buffers). */
size_t eenet_net_bytes(const eenet_net *net);

/* Forward every exit.  probs (E1,B,K), conf (E1,B) (1.0 for an exit without a
 * confidence head); x (B,C,H,W).  training != 0: batch statistics in BN and
 * running statistics updated (PyTorch train mode); else eval mode. */
eenet_status eenet_net_forward(eenet_net *net, float *probs, float *conf, const float *x,
                               int B, int training);

/* One training step: zero grads, forward (train mode), early-exit loss
 * `version` (0..4; tags (B) for v4), backward, check the loss and gradients
 * are finite, optimiser update over the one parameter buffer.  On a
 * non-finite loss returns EENET_ERR_NONFINITE naming opt->step and leaves
 * params, optimiser state and BN running statistics as they were.
 * exit_counts (E1) int64, nll (E1,B): -log p_i[y] per exit; threshold: the
 * early-exit rule for the statistics. */
eenet_status eenet_net_train_step(eenet_net *net, eenet_step_stats *stats, int64_t *exit_counts,
                                  float *nll, const float *x, const int64_t *labels,
                                  const int32_t *tags, int B, int version, float lambda_coef,
                                  float threshold, const eenet_opt_config *opt);

/* Batched early-exit inference (eval mode): stage s runs on the samples still
 * active; those with conf > threshold at exit s (or all at the final exit)
 * are written out, the rest are compacted to the front and continue.
 * labels (B), probs (B,K), exit (B), conf (B); x (B,C,H,W). */
eenet_status eenet_net_predict(eenet_net *net, int64_t *labels, float *probs, int64_t *exit,
                               float *conf, const float *x, int B, float threshold);

/* Per-part timing (wall-clock seconds, summed since the last reset), for
 * benchmarks/engine_profile.py.  Off by default; when on, each op and each part of the
 * step around the ops is timed (a clock read per op: negligible next to the ops).
 * Slots: forward of each op kind (EENET_OP_* order), backward of each kind,
 * then the EENET_PROF_* parts below. */
enum {
    EENET_PROF_FWD = 0,
    EENET_PROF_BWD = EENET_OP_NUM_KINDS,
    EENET_PROF_ZERO = 2 * EENET_OP_NUM_KINDS, /* zeroing gradients (params and tensors) */
    EENET_PROF_LOSS,                          /* gather, early-exit loss, statistics, seeds */
    EENET_PROF_OPTIM,                         /* finiteness check and optimiser update */
    EENET_PROF_EXIT,                          /* predict: writing out exited rows, compaction */
    EENET_PROF_OTHER,                         /* input copy, state snapshot */
    EENET_PROF_SLOTS
};
/* on != 0: start timing (and reset the sums); 0: stop. */
void eenet_net_set_profiling(eenet_net *net, int on);
/* Copies the EENET_PROF_SLOTS sums into out. */
void eenet_net_profile(const eenet_net *net, double *out);
/* Name of slot i ("conv2d.forward", ..., "zero_grad", ...) or NULL if out of range. */
const char *eenet_net_profile_name(int i);

#endif /* EENET_NET_H */
