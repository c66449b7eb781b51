/* kernels.h: every compute kernel of the core.  Plain C11, no Python.
 *
 * Conventions (STYLE.md):
 *   - signature order: outputs, inputs, parameters, sizes; gradients carry a
 *     `d` prefix; inputs are const; shapes in a comment above each function;
 *   - float32, NCHW, C-contiguous;
 *   - forward overwrites its outputs; backward ACCUMULATES (+=) into d*
 *     buffers unless the comment says otherwise;
 *   - every function returns eenet_status (eenet.h) and sets the message on
 *     error;  no malloc inside kernels: scratch comes from the caller, sized
 *     by the matching *_workspace_size function;
 *   - OpenMP regions use num_threads(eenet_get_num_threads());
 *   - each fast kernel has a *_naive twin used by the tests.
 */
#ifndef EENET_KERNELS_H
#define EENET_KERNELS_H

#include "eenet.h"

/* ---- conv (conv.c, gemm.c) --------------------------------------------- */
/* BEGIN conv declarations */
/* END conv declarations */

/* ---- other kernels (bn.c, act.c, pool.c, linear.c, loss.c, optim.c) ---- */
/* BEGIN ops declarations */
/* END ops declarations */

#endif /* EENET_KERNELS_H */
