/* module.c: the CPython/NumPy binding of eenet's C core, extension eenet._core.
 *
 * The only file of the core that includes Python.h.  Every wrapper:
 *   1. parses and validates its arguments with the converters below (float32,
 *      C-contiguous, aligned, expected rank/shape), raising TypeError or
 *      ValueError that names the argument, the expected and the actual value;
 *   2. allocates outputs as new NumPy arrays;
 *   3. releases the GIL around the C call, touching only C memory;
 *   4. turns a non-OK eenet_status into a Python exception (raise_status);
 *   5. has one cleanup label with Py_XDECREF.
 *
 * The file is split into sections, each with its own PyMethodDef table that
 * PyInit__core adds with PyModule_AddFunctions:
 *   - shared helpers (converters, errors)           -- this header part
 *   - section "threads"                              -- thread control
 *   - section "conv"  (conv2d forward/backward)      -- conv_methods
 *   - section "ops"   (all other kernels, optimisers)-- ops_methods
 *   - section "net"   (the Net extension type)       -- net_register()
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <math.h>
#include <string.h>

#include "eenet.h"
#include "kernels.h"

/* ======================================================================== */
/* shared helpers                                                            */
/* ======================================================================== */

/* Raise the Python exception matching a C status, with the core's message. */
static PyObject *raise_status(eenet_status status) {
    const char *msg = eenet_last_error();
    switch (status) {
    case EENET_ERR_VALUE:
        PyErr_SetString(PyExc_ValueError, msg);
        break;
    case EENET_ERR_NOMEM:
        PyErr_SetString(PyExc_MemoryError, msg);
        break;
    case EENET_ERR_NONFINITE:
        PyErr_SetString(PyExc_FloatingPointError, msg);
        break;
    default:
        PyErr_SetString(PyExc_RuntimeError, msg);
        break;
    }
    return NULL;
}

/* Format a shape as "(2, 3, 4)" into buf. */
static void shape_str(char *buf, size_t size, int ndim, const npy_intp *dims) {
    size_t pos = 0;
    pos += (size_t)snprintf(buf + pos, size - pos, "(");
    for (int i = 0; i < ndim && pos < size; i++) {
        pos += (size_t)snprintf(buf + pos, size - pos, i ? ", %ld" : "%ld", (long)dims[i]);
    }
    if (ndim == 1 && pos < size) {
        pos += (size_t)snprintf(buf + pos, size - pos, ",");
    }
    if (pos < size) {
        snprintf(buf + pos, size - pos, ")");
    }
}

/* Check that `obj` is a float32, C-contiguous, aligned ndarray of rank `ndim`
 * (ndim < 0: any rank).  Returns a borrowed PyArrayObject* or NULL with
 * TypeError/ValueError naming `name`.  No copy is ever made: wrong dtype or
 * layout is the caller's error, so inputs are never silently converted. */
static PyArrayObject *check_float_array(PyObject *obj, const char *name, int ndim) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a numpy.ndarray of float32, got %s",
                     name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *arr = (PyArrayObject *)obj;
    if (PyArray_TYPE(arr) != NPY_FLOAT32) {
        PyObject *dt = PyObject_Str((PyObject *)PyArray_DESCR(arr));
        PyErr_Format(PyExc_TypeError, "%s: expected dtype float32, got %s", name,
                     dt ? PyUnicode_AsUTF8(dt) : "?");
        Py_XDECREF(dt);
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM(arr) != ndim) {
        char buf[128];
        shape_str(buf, sizeof buf, PyArray_NDIM(arr), PyArray_DIMS(arr));
        PyErr_Format(PyExc_ValueError, "%s: expected a %d-d array, got shape %s", name, ndim,
                     buf);
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(arr) || !PyArray_ISALIGNED(arr)) {
        PyErr_Format(PyExc_ValueError,
                     "%s: expected a C-contiguous, aligned array (use numpy.ascontiguousarray)",
                     name);
        return NULL;
    }
    return arr;
}

/* Like check_float_array, and also check every dimension against `dims`
 * (a value < 0 in dims matches any size). */
static PyArrayObject *check_float_shape(PyObject *obj, const char *name, int ndim,
                                        const npy_intp *dims) {
    PyArrayObject *arr = check_float_array(obj, name, ndim);
    if (!arr) {
        return NULL;
    }
    for (int i = 0; i < ndim; i++) {
        if (dims[i] >= 0 && PyArray_DIM(arr, i) != dims[i]) {
            char want[128], got[128];
            shape_str(want, sizeof want, ndim, dims);
            shape_str(got, sizeof got, ndim, PyArray_DIMS(arr));
            PyErr_Format(PyExc_ValueError, "%s: expected shape %s, got %s", name, want, got);
            return NULL;
        }
    }
    return arr;
}

/* Check an integer label array: int64, C-contiguous, 1-d of length n, every
 * value in [0, num_classes).  Returns borrowed array or NULL with an error. */
static PyArrayObject *check_labels(PyObject *obj, const char *name, npy_intp n,
                                   int num_classes) {
    if (!PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) != NPY_INT64) {
        PyErr_Format(PyExc_TypeError, "%s: expected a numpy.ndarray of int64", name);
        return NULL;
    }
    PyArrayObject *arr = (PyArrayObject *)obj;
    if (PyArray_NDIM(arr) != 1 || PyArray_DIM(arr, 0) != n) {
        char got[128];
        shape_str(got, sizeof got, PyArray_NDIM(arr), PyArray_DIMS(arr));
        PyErr_Format(PyExc_ValueError, "%s: expected shape (%ld,), got %s", name, (long)n, got);
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(arr) || !PyArray_ISALIGNED(arr)) {
        PyErr_Format(PyExc_ValueError, "%s: expected a C-contiguous, aligned array", name);
        return NULL;
    }
    const int64_t *y = (const int64_t *)PyArray_DATA(arr);
    for (npy_intp i = 0; i < n; i++) {
        if (y[i] < 0 || y[i] >= num_classes) {
            PyErr_Format(PyExc_ValueError, "%s: label %lld at index %ld is outside [0, %d)", name,
                         (long long)y[i], (long)i, num_classes);
            return NULL;
        }
    }
    return arr;
}

/* True if every element of a float32 array is finite. */
static int all_finite(const float *x, npy_intp n) {
    for (npy_intp i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            return 0;
        }
    }
    return 1;
}

/* Raise ValueError if x holds a NaN/Inf, naming the argument. */
static int require_finite(PyArrayObject *arr, const char *name) {
    if (!all_finite((const float *)PyArray_DATA(arr), PyArray_SIZE(arr))) {
        PyErr_Format(PyExc_ValueError, "%s: contains NaN or infinity", name);
        return 0;
    }
    return 1;
}

/* Parse a non-negative (min_value=0) or positive (min_value=1) int argument
 * already converted by PyArg_Parse*, raising ValueError naming it. */
static int check_int_min(long value, const char *name, long min_value) {
    if (value < min_value) {
        PyErr_Format(PyExc_ValueError, "%s: expected an integer >= %ld, got %ld", name,
                     min_value, value);
        return 0;
    }
    return 1;
}

/* New float32 C-contiguous array of the given shape, zero-filled. */
static PyArrayObject *new_float_array(int ndim, const npy_intp *dims) {
    return (PyArrayObject *)PyArray_ZEROS(ndim, (npy_intp *)dims, NPY_FLOAT32, 0);
}

#define FDATA(arr) ((float *)PyArray_DATA(arr))
#define CFDATA(arr) ((const float *)PyArray_DATA(arr))

/* ======================================================================== */
/* section "threads"                                                         */
/* ======================================================================== */

static PyObject *py_set_num_threads(PyObject *self, PyObject *args) {
    int n;
    if (!PyArg_ParseTuple(args, "i:set_num_threads", &n)) {
        return NULL;
    }
    if (!check_int_min(n, "n", 1)) {
        return NULL;
    }
    eenet_set_num_threads(n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs) {
    return PyLong_FromLong(eenet_get_num_threads());
}

static PyObject *py_has_openmp(PyObject *self, PyObject *noargs) {
#ifdef _OPENMP
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

/* peak_gflops(seconds=0.5, threads=get_num_threads(), cpu_clock=False)
 *     -> (gflops, lanes) */
static PyObject *py_peak_gflops(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"seconds", "threads", "cpu_clock", NULL};
    double seconds = 0.5;
    int threads = eenet_get_num_threads();
    int cpu_clock = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|dip:peak_gflops", keywords, &seconds,
                                     &threads, &cpu_clock)) {
        return NULL;
    }
    if (!(seconds > 0.0 && seconds <= 60.0)) {
        PyErr_Format(PyExc_ValueError, "seconds: expected a number in (0, 60], got %g",
                     seconds);
        return NULL;
    }
    if (!check_int_min(threads, "threads", 1)) {
        return NULL;
    }
    double gflops = 0.0;
    int lanes = 0;
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    st = eenet_peak_gflops(&gflops, &lanes, seconds, threads, cpu_clock);
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        return raise_status(st);
    }
    return Py_BuildValue("(di)", gflops, lanes);
}

static PyMethodDef thread_methods[] = {
    {"peak_gflops", (PyCFunction)(void (*)(void))py_peak_gflops, METH_VARARGS | METH_KEYWORDS,
     "peak_gflops(seconds=0.5, threads=get_num_threads(), cpu_clock=False)\n--\n\n"
     "Measured FP32 FMA throughput: (GFLOP/s, vector lanes) of `threads` threads\n"
     "running independent fused multiply-add chains (no memory traffic), the best\n"
     "of rounds filling about `seconds`, timed by the wall clock or, with\n"
     "cpu_clock, by process CPU time per thread.  The ceiling for every kernel."},
    {"set_num_threads", py_set_num_threads, METH_VARARGS,
     "set_num_threads(n)\n--\n\nUse n threads in every kernel of the C core."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS,
     "get_num_threads()\n--\n\nThreads the C core uses."},
    {"has_openmp", py_has_openmp, METH_NOARGS,
     "has_openmp()\n--\n\nTrue if the core was built with OpenMP."},
    {NULL, NULL, 0, NULL}};

/* ======================================================================== */
/* section "conv": conv2d forward / backward                                 */
/* ======================================================================== */

/* Geometry of one conv2d call, validated from x (N,C,H,W) and w (K,C,kh,kw). */
typedef struct {
    int N, C, H, W, K, kh, kw, stride, pad, Ho, Wo;
} conv_geom;

/* Validate x and w (float32, C-contiguous, rank 4, sizes >= 1, matching C,
 * dims fitting in int), stride >= 1, padding >= 0 and the kernel not larger
 * than the padded input.  Fills g; returns 0 with an exception set on error. */
static int conv_check_geometry(PyArrayObject *x, PyArrayObject *w, long stride, long padding,
                               conv_geom *g) {
    if (!check_int_min(stride, "stride", 1) || !check_int_min(padding, "padding", 0)) {
        return 0;
    }
    if (stride > INT_MAX / 4 || padding > INT_MAX / 4) {
        PyErr_Format(PyExc_ValueError, "stride/padding: too large (stride %ld, padding %ld)",
                     stride, padding);
        return 0;
    }
    const char *names[2] = {"x", "w"};
    PyArrayObject *arrs[2] = {x, w};
    for (int a = 0; a < 2; a++) {
        for (int d = 0; d < 4; d++) {
            npy_intp v = PyArray_DIM(arrs[a], d);
            if (v < 1 || v > INT_MAX / 4) {
                char got[128];
                shape_str(got, sizeof got, 4, PyArray_DIMS(arrs[a]));
                PyErr_Format(PyExc_ValueError,
                             "%s: every dimension must be in [1, %d]%s, got shape %s", names[a],
                             INT_MAX / 4, (a == 0 && d == 0) ? " (empty batch)" : "", got);
                return 0;
            }
        }
    }
    g->N = (int)PyArray_DIM(x, 0);
    g->C = (int)PyArray_DIM(x, 1);
    g->H = (int)PyArray_DIM(x, 2);
    g->W = (int)PyArray_DIM(x, 3);
    g->K = (int)PyArray_DIM(w, 0);
    g->kh = (int)PyArray_DIM(w, 2);
    g->kw = (int)PyArray_DIM(w, 3);
    g->stride = (int)stride;
    g->pad = (int)padding;
    if (PyArray_DIM(w, 1) != g->C) {
        char got[128];
        shape_str(got, sizeof got, 4, PyArray_DIMS(w));
        PyErr_Format(PyExc_ValueError,
                     "w: expected shape (K, %d, kh, kw) to match x's %d input channels, got %s",
                     g->C, g->C, got);
        return 0;
    }
    if (g->kh > g->H + 2 * g->pad || g->kw > g->W + 2 * g->pad) {
        PyErr_Format(PyExc_ValueError,
                     "w: kernel %dx%d is larger than the padded input %dx%d (x %dx%d, "
                     "padding %d)",
                     g->kh, g->kw, g->H + 2 * g->pad, g->W + 2 * g->pad, g->H, g->W, g->pad);
        return 0;
    }
    g->Ho = eenet_conv_out_size(g->H, g->kh, g->stride, g->pad);
    g->Wo = eenet_conv_out_size(g->W, g->kw, g->stride, g->pad);
    return 1;
}

/* Workspace for the fast kernels at the current thread count (PyMem_Malloc;
 * NULL with MemoryError set on failure). */
static float *conv_alloc_workspace(const conv_geom *g) {
    size_t n = eenet_conv2d_workspace_floats(g->N, g->C, g->H, g->W, g->K, g->kh, g->kw,
                                             g->stride, g->pad, eenet_get_num_threads());
    if (n == 0) {
        n = 1;
    }
    if (n > PY_SSIZE_T_MAX / sizeof(float)) {
        PyErr_NoMemory();
        return NULL;
    }
    float *ws = (float *)PyMem_Malloc(n * sizeof(float));
    if (!ws) {
        PyErr_NoMemory();
    }
    return ws;
}

static PyObject *py_conv2d_forward(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"x", "w", "b", "stride", "padding", "naive", NULL};
    PyObject *x_obj, *w_obj, *b_obj;
    long stride, padding;
    int naive = 0;
    PyArrayObject *out = NULL;
    float *ws = NULL;
    PyObject *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOll|p:conv2d_forward", kwlist, &x_obj,
                                     &w_obj, &b_obj, &stride, &padding, &naive)) {
        return NULL;
    }
    PyArrayObject *x = check_float_array(x_obj, "x", 4);
    if (!x) {
        goto cleanup;
    }
    PyArrayObject *w = check_float_array(w_obj, "w", 4);
    if (!w) {
        goto cleanup;
    }
    conv_geom g;
    if (!conv_check_geometry(x, w, stride, padding, &g)) {
        goto cleanup;
    }
    const float *bias = NULL;
    if (b_obj != Py_None) {
        npy_intp bdims[1] = {g.K};
        PyArrayObject *b = check_float_shape(b_obj, "b", 1, bdims);
        if (!b) {
            goto cleanup;
        }
        bias = CFDATA(b);
    }
    npy_intp odims[4] = {g.N, g.K, g.Ho, g.Wo};
    /* not zero-filled: the forward kernels overwrite every element */
    out = (PyArrayObject *)PyArray_EMPTY(4, odims, NPY_FLOAT32, 0);
    if (!out) {
        goto cleanup;
    }
    if (!naive) {
        ws = conv_alloc_workspace(&g);
        if (!ws) {
            goto cleanup;
        }
    }
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS;
    if (naive) {
        st = eenet_conv2d_forward_naive(FDATA(out), CFDATA(x), CFDATA(w), bias, g.N, g.C, g.H,
                                        g.W, g.K, g.kh, g.kw, g.stride, g.pad);
    } else {
        st = eenet_conv2d_forward(FDATA(out), CFDATA(x), CFDATA(w), bias, ws, g.N, g.C, g.H,
                                  g.W, g.K, g.kh, g.kw, g.stride, g.pad);
    }
    Py_END_ALLOW_THREADS;
    if (st != EENET_OK) {
        raise_status(st);
        goto cleanup;
    }
    result = (PyObject *)out;
    out = NULL;
cleanup:
    PyMem_Free(ws);
    Py_XDECREF(out);
    return result;
}

static PyObject *py_conv2d_backward(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"dy", "x", "w", "stride", "padding", "with_bias", "need_dx",
                             "naive", "need_dw", NULL};
    PyObject *dy_obj, *x_obj, *w_obj;
    long stride, padding;
    int with_bias, need_dx = 1, naive = 0, need_dw = 1;
    PyArrayObject *dx = NULL, *dw = NULL, *db = NULL;
    float *ws = NULL;
    PyObject *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOllp|ppp:conv2d_backward", kwlist,
                                     &dy_obj, &x_obj, &w_obj, &stride, &padding, &with_bias,
                                     &need_dx, &naive, &need_dw)) {
        return NULL;
    }
    PyArrayObject *x = check_float_array(x_obj, "x", 4);
    if (!x) {
        goto cleanup;
    }
    PyArrayObject *w = check_float_array(w_obj, "w", 4);
    if (!w) {
        goto cleanup;
    }
    conv_geom g;
    if (!conv_check_geometry(x, w, stride, padding, &g)) {
        goto cleanup;
    }
    npy_intp odims[4] = {g.N, g.K, g.Ho, g.Wo};
    PyArrayObject *dy = check_float_shape(dy_obj, "dy", 4, odims);
    if (!dy) {
        goto cleanup;
    }
    if (need_dw) {
        dw = new_float_array(4, PyArray_DIMS(w));
        if (!dw) {
            goto cleanup;
        }
    }
    if (need_dx) {
        /* not zero-filled: eenet_conv2d_backward_set sets every element */
        dx = (PyArrayObject *)PyArray_EMPTY(4, PyArray_DIMS(x), NPY_FLOAT32, 0);
        if (!dx) {
            goto cleanup;
        }
    }
    if (with_bias) {
        npy_intp bdims[1] = {g.K};
        db = new_float_array(1, bdims);
        if (!db) {
            goto cleanup;
        }
    }
    if (!naive) {
        ws = conv_alloc_workspace(&g);
        if (!ws) {
            goto cleanup;
        }
    }
    float *pdx = dx ? FDATA(dx) : NULL;
    float *pdb = db ? FDATA(db) : NULL;
    float *pdw = dw ? FDATA(dw) : NULL;
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS;
    if (naive) { /* the reference accumulates */
        if (pdx) {
            memset(pdx, 0, sizeof(float) * (size_t)g.N * g.C * g.H * g.W);
        }
        st = eenet_conv2d_backward_naive(pdx, pdw, pdb, CFDATA(dy), CFDATA(x), CFDATA(w),
                                         g.N, g.C, g.H, g.W, g.K, g.kh, g.kw, g.stride, g.pad);
    } else { /* dx set by the kernels (not zeroed, then accumulated into) */
        st = eenet_conv2d_backward_set(pdx, pdw, pdb, CFDATA(dy), CFDATA(x), CFDATA(w), ws,
                                       g.N, g.C, g.H, g.W, g.K, g.kh, g.kw, g.stride, g.pad);
    }
    Py_END_ALLOW_THREADS;
    if (st != EENET_OK) {
        raise_status(st);
        goto cleanup;
    }
    result = Py_BuildValue("(OOO)", dx ? (PyObject *)dx : Py_None, dw ? (PyObject *)dw : Py_None,
                           db ? (PyObject *)db : Py_None);
cleanup:
    PyMem_Free(ws);
    Py_XDECREF(dx);
    Py_XDECREF(dw);
    Py_XDECREF(db);
    return result;
}

static PyMethodDef conv_methods[] = {
    /* BEGIN conv methods */
    {"conv2d_forward", (PyCFunction)(void (*)(void))py_conv2d_forward,
     METH_VARARGS | METH_KEYWORDS,
     "conv2d_forward(x, w, b, stride, padding, naive=False)\n--\n\n"
     "y (N,K,Ho,Wo) = conv2d of x (N,C,H,W) with w (K,C,kh,kw) and bias b (K,) or None;\n"
     "float32 C-contiguous arrays, symmetric padding.  naive=True runs the direct-loop\n"
     "reference (double accumulation).  Returns a new array."},
    {"conv2d_backward", (PyCFunction)(void (*)(void))py_conv2d_backward,
     METH_VARARGS | METH_KEYWORDS,
     "conv2d_backward(dy, x, w, stride, padding, with_bias, need_dx=True, naive=False,\n"
     "                need_dw=True)\n--\n\n"
     "Gradients of conv2d_forward: returns (dx (N,C,H,W) or None, dw (K,C,kh,kw) or None,\n"
     "db (K,) or None) given dy (N,K,Ho,Wo), each a new array holding the gradient itself\n"
     "(dx through eenet_conv2d_backward_set; dw and db zero-filled, then accumulated into)."},
    /* END conv methods */
    {NULL, NULL, 0, NULL}};

/* ======================================================================== */
/* section "ops": every other kernel and the optimisers                      */
/* ======================================================================== */

/* Helpers of this section (prefixed ops_). */

/* ValueError unless arr is writeable (arrays updated in place). */
static int ops_require_writeable(PyArrayObject *arr, const char *name) {
    if (!PyArray_ISWRITEABLE(arr)) {
        PyErr_Format(PyExc_ValueError, "%s: expected a writeable array (it is updated in place)",
                     name);
        return 0;
    }
    return 1;
}

/* ValueError unless arr has at least one element; `what` says which axis. */
static int ops_require_nonempty(PyArrayObject *arr, const char *name) {
    if (PyArray_SIZE(arr) == 0) {
        char got[128];
        shape_str(got, sizeof got, PyArray_NDIM(arr), PyArray_DIMS(arr));
        PyErr_Format(PyExc_ValueError, "%s: expected a non-empty array (batch >= 1), got shape %s",
                     name, got);
        return 0;
    }
    return 1;
}

/* ValueError unless a and b have the same shape. */
static int ops_same_shape(PyArrayObject *a, const char *aname, PyArrayObject *b,
                          const char *bname) {
    if (PyArray_NDIM(a) != PyArray_NDIM(b) ||
        !PyArray_CompareLists(PyArray_DIMS(a), PyArray_DIMS(b), PyArray_NDIM(a))) {
        char sa[128], sb[128];
        shape_str(sa, sizeof sa, PyArray_NDIM(a), PyArray_DIMS(a));
        shape_str(sb, sizeof sb, PyArray_NDIM(b), PyArray_DIMS(b));
        PyErr_Format(PyExc_ValueError, "%s: expected shape %s (the shape of %s), got %s", bname,
                     sa, aname, sb);
        return 0;
    }
    return 1;
}

/* ValueError unless a size fits a C int. */
static int ops_fits_int(npy_intp v, const char *name) {
    if (v > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "%s: dimension %ld is too large (max %d)", name, (long)v,
                     INT_MAX);
        return 0;
    }
    return 1;
}

/* Parse a (N, C, H, W) float32 activation and check it is non-empty. */
static PyArrayObject *ops_check_nchw(PyObject *obj, const char *name) {
    PyArrayObject *arr = check_float_array(obj, name, 4);
    if (!arr || !ops_require_nonempty(arr, name)) {
        return NULL;
    }
    for (int i = 0; i < 4; i++) {
        if (!ops_fits_int(PyArray_DIM(arr, i), name)) {
            return NULL;
        }
    }
    if (!ops_fits_int(PyArray_DIM(arr, 2) * PyArray_DIM(arr, 3), name)) {
        return NULL;
    }
    return arr;
}

/* ---- batch norm ---------------------------------------------------------- */

static PyObject *py_bn2d_forward_train(PyObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "gamma", "beta", "running_mean", "running_var", "momentum",
                             "eps", "relu", NULL};
    PyObject *ox, *og, *ob, *orm, *orv;
    double momentum = 0.1, eps = 1e-5;
    int relu = 0;
    PyArrayObject *y = NULL, *smean = NULL, *sinv = NULL;
    PyObject *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO|ddp:bn2d_forward_train", kwlist, &ox,
                                     &og, &ob, &orm, &orv, &momentum, &eps, &relu)) {
        return NULL;
    }
    PyArrayObject *x = ops_check_nchw(ox, "x");
    if (!x) {
        return NULL;
    }
    const npy_intp cdim[1] = {PyArray_DIM(x, 1)};
    PyArrayObject *g = check_float_shape(og, "gamma", 1, cdim);
    PyArrayObject *b = g ? check_float_shape(ob, "beta", 1, cdim) : NULL;
    PyArrayObject *rm = b ? check_float_shape(orm, "running_mean", 1, cdim) : NULL;
    PyArrayObject *rv = rm ? check_float_shape(orv, "running_var", 1, cdim) : NULL;
    if (!rv || !ops_require_writeable(rm, "running_mean") ||
        !ops_require_writeable(rv, "running_var") || !require_finite(x, "x")) {
        return NULL;
    }
    const int N = (int)PyArray_DIM(x, 0), C = (int)PyArray_DIM(x, 1);
    const int HW = (int)(PyArray_DIM(x, 2) * PyArray_DIM(x, 3));
    if ((npy_intp)N * HW < 2) {
        PyErr_Format(PyExc_ValueError,
                     "x: expected more than 1 value per channel when training, got shape "
                     "(%d, %d, %ld, %ld)",
                     N, C, (long)PyArray_DIM(x, 2), (long)PyArray_DIM(x, 3));
        return NULL;
    }
    if (!(eps > 0.0) || !isfinite(momentum)) {
        PyErr_Format(PyExc_ValueError, "eps, momentum: expected eps > 0 and a finite momentum, "
                     "got eps=%g momentum=%g", eps, momentum);
        return NULL;
    }
    y = new_float_array(4, PyArray_DIMS(x));
    smean = new_float_array(1, cdim);
    sinv = new_float_array(1, cdim);
    if (!y || !smean || !sinv) {
        goto cleanup;
    }
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    st = (relu ? eenet_bn2d_relu_forward_train : eenet_bn2d_forward_train)(
        FDATA(y), FDATA(smean), FDATA(sinv), FDATA(rm), FDATA(rv), CFDATA(x), CFDATA(g),
        CFDATA(b), (float)momentum, (float)eps, N, C, HW);
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        raise_status(st);
        goto cleanup;
    }
    result = Py_BuildValue("(OOO)", y, smean, sinv);
cleanup:
    Py_XDECREF(y);
    Py_XDECREF(smean);
    Py_XDECREF(sinv);
    return result;
}

static PyObject *py_bn2d_forward_eval(PyObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "gamma", "beta", "running_mean", "running_var", "eps", "relu",
                             NULL};
    PyObject *ox, *og, *ob, *orm, *orv;
    double eps = 1e-5;
    int relu = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO|dp:bn2d_forward_eval", kwlist, &ox, &og,
                                     &ob, &orm, &orv, &eps, &relu)) {
        return NULL;
    }
    PyArrayObject *x = ops_check_nchw(ox, "x");
    if (!x) {
        return NULL;
    }
    const npy_intp cdim[1] = {PyArray_DIM(x, 1)};
    PyArrayObject *g = check_float_shape(og, "gamma", 1, cdim);
    PyArrayObject *b = g ? check_float_shape(ob, "beta", 1, cdim) : NULL;
    PyArrayObject *rm = b ? check_float_shape(orm, "running_mean", 1, cdim) : NULL;
    PyArrayObject *rv = rm ? check_float_shape(orv, "running_var", 1, cdim) : NULL;
    if (!rv) {
        return NULL;
    }
    if (!(eps > 0.0)) {
        PyErr_Format(PyExc_ValueError, "eps: expected eps > 0, got %g", eps);
        return NULL;
    }
    const int N = (int)PyArray_DIM(x, 0), C = (int)PyArray_DIM(x, 1);
    const int HW = (int)(PyArray_DIM(x, 2) * PyArray_DIM(x, 3));
    PyArrayObject *y = new_float_array(4, PyArray_DIMS(x));
    if (!y) {
        return NULL;
    }
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    st = (relu ? eenet_bn2d_relu_forward_eval : eenet_bn2d_forward_eval)(
        FDATA(y), CFDATA(x), CFDATA(g), CFDATA(b), CFDATA(rm), CFDATA(rv), (float)eps, N, C, HW);
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        Py_DECREF(y);
        return raise_status(st);
    }
    return (PyObject *)y;
}

static PyObject *py_bn2d_backward(PyObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"dy", "x", "gamma", "save_mean", "save_invstd", "relu_out",
                             "overwrite", NULL};
    PyObject *ody, *ox, *og, *om, *os, *oyr = Py_None;
    int overwrite = 0;
    PyArrayObject *dx = NULL, *dg = NULL, *db = NULL, *dmask = NULL;
    PyObject *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO|Op:bn2d_backward", kwlist, &ody, &ox,
                                     &og, &om, &os, &oyr, &overwrite)) {
        return NULL;
    }
    PyArrayObject *x = ops_check_nchw(ox, "x");
    PyArrayObject *dy = x ? check_float_array(ody, "dy", 4) : NULL;
    if (!dy || !ops_same_shape(x, "x", dy, "dy")) {
        return NULL;
    }
    /* relu_out: backward of relu(bn(x)) with y = relu_out (the fused kernel) */
    PyArrayObject *yr = NULL;
    if (oyr != Py_None) {
        yr = check_float_array(oyr, "relu_out", 4);
        if (!yr || !ops_same_shape(x, "x", yr, "relu_out")) {
            return NULL;
        }
    }
    const npy_intp cdim[1] = {PyArray_DIM(x, 1)};
    PyArrayObject *g = check_float_shape(og, "gamma", 1, cdim);
    PyArrayObject *m = g ? check_float_shape(om, "save_mean", 1, cdim) : NULL;
    PyArrayObject *s = m ? check_float_shape(os, "save_invstd", 1, cdim) : NULL;
    if (!s) {
        return NULL;
    }
    const int N = (int)PyArray_DIM(x, 0), C = (int)PyArray_DIM(x, 1);
    const int HW = (int)(PyArray_DIM(x, 2) * PyArray_DIM(x, 3));
    dx = new_float_array(4, PyArray_DIMS(x));
    dg = new_float_array(1, cdim);
    db = new_float_array(1, cdim);
    /* the kernels given relu_out overwrite dy with the masked gradient: a copy */
    dmask = yr ? (PyArrayObject *)PyArray_NewCopy(dy, NPY_CORDER) : NULL;
    if (!dx || !dg || !db || (yr && !dmask)) {
        goto cleanup;
    }
    if (overwrite) {
        /* dx is written, not accumulated: start from NaN so a skipped element shows */
        float *p = FDATA(dx);
        for (npy_intp i = 0; i < PyArray_SIZE(dx); i++) {
            p[i] = NAN;
        }
    }
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    if (overwrite) {
        st = eenet_bn2d_backward_set(FDATA(dx), FDATA(dg), FDATA(db),
                                     yr ? FDATA(dmask) : (float *)CFDATA(dy),
                                     yr ? CFDATA(yr) : NULL, CFDATA(x), CFDATA(g), CFDATA(m),
                                     CFDATA(s), N, C, HW);
    } else if (yr) {
        st = eenet_bn2d_relu_backward(FDATA(dx), FDATA(dg), FDATA(db), FDATA(dmask), CFDATA(yr),
                                      CFDATA(x), CFDATA(g), CFDATA(m), CFDATA(s), N, C, HW);
    } else {
        st = eenet_bn2d_backward(FDATA(dx), FDATA(dg), FDATA(db), CFDATA(dy), CFDATA(x),
                                 CFDATA(g), CFDATA(m), CFDATA(s), N, C, HW);
    }
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        raise_status(st);
        goto cleanup;
    }
    result = Py_BuildValue("(OOO)", dx, dg, db);
cleanup:
    Py_XDECREF(dmask);
    Py_XDECREF(dx);
    Py_XDECREF(dg);
    Py_XDECREF(db);
    return result;
}

/* ---- elementwise ---------------------------------------------------------- */

typedef eenet_status (*ops_unary_fn)(float *, const float *, size_t);
typedef eenet_status (*ops_unary_bwd_fn)(float *, const float *, const float *, size_t);

/* y = f(x) for an elementwise kernel f; any rank, non-empty. */
static PyObject *ops_unary(PyObject *args, const char *fmt, ops_unary_fn fn) {
    PyObject *ox;
    if (!PyArg_ParseTuple(args, fmt, &ox)) {
        return NULL;
    }
    PyArrayObject *x = check_float_array(ox, "x", -1);
    if (!x || !ops_require_nonempty(x, "x")) {
        return NULL;
    }
    PyArrayObject *y = new_float_array(PyArray_NDIM(x), PyArray_DIMS(x));
    if (!y) {
        return NULL;
    }
    const size_t n = (size_t)PyArray_SIZE(x);
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fn(FDATA(y), CFDATA(x), n);
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        Py_DECREF(y);
        return raise_status(st);
    }
    return (PyObject *)y;
}

/* dx = f'(dy, y) for an elementwise kernel whose backward needs its output y. */
static PyObject *ops_unary_backward(PyObject *args, const char *fmt, ops_unary_bwd_fn fn) {
    PyObject *ody, *oy;
    if (!PyArg_ParseTuple(args, fmt, &ody, &oy)) {
        return NULL;
    }
    PyArrayObject *dy = check_float_array(ody, "dy", -1);
    PyArrayObject *y = dy ? check_float_array(oy, "y", -1) : NULL;
    if (!y || !ops_require_nonempty(dy, "dy") || !ops_same_shape(dy, "dy", y, "y")) {
        return NULL;
    }
    PyArrayObject *dx = new_float_array(PyArray_NDIM(y), PyArray_DIMS(y));
    if (!dx) {
        return NULL;
    }
    const size_t n = (size_t)PyArray_SIZE(y);
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fn(FDATA(dx), CFDATA(dy), CFDATA(y), n);
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        Py_DECREF(dx);
        return raise_status(st);
    }
    return (PyObject *)dx;
}

static PyObject *py_relu_forward(PyObject *self, PyObject *args) {
    return ops_unary(args, "O:relu_forward", eenet_relu_forward);
}

static PyObject *py_relu_backward(PyObject *self, PyObject *args) {
    return ops_unary_backward(args, "OO:relu_backward", eenet_relu_backward);
}

static PyObject *py_sigmoid_forward(PyObject *self, PyObject *args) {
    return ops_unary(args, "O:sigmoid_forward", eenet_sigmoid_forward);
}

static PyObject *py_sigmoid_backward(PyObject *self, PyObject *args) {
    return ops_unary_backward(args, "OO:sigmoid_backward", eenet_sigmoid_backward);
}

static PyObject *py_add_forward(PyObject *self, PyObject *args) {
    PyObject *oa, *ob;
    int relu = 0;
    if (!PyArg_ParseTuple(args, "OO|p:add_forward", &oa, &ob, &relu)) {
        return NULL;
    }
    PyArrayObject *a = check_float_array(oa, "a", -1);
    PyArrayObject *b = a ? check_float_array(ob, "b", -1) : NULL;
    if (!b || !ops_require_nonempty(a, "a") || !ops_same_shape(a, "a", b, "b")) {
        return NULL;
    }
    PyArrayObject *y = new_float_array(PyArray_NDIM(a), PyArray_DIMS(a));
    if (!y) {
        return NULL;
    }
    const size_t n = (size_t)PyArray_SIZE(a);
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    st = (relu ? eenet_add_relu_forward : eenet_add_forward)(FDATA(y), CFDATA(a), CFDATA(b), n);
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        Py_DECREF(y);
        return raise_status(st);
    }
    return (PyObject *)y;
}

static PyObject *py_add_backward(PyObject *self, PyObject *args) {
    PyObject *ody, *oyr = Py_None;
    int set = 0;
    PyArrayObject *da = NULL, *db = NULL;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "O|Oi:add_backward", &ody, &oyr, &set)) {
        return NULL;
    }
    PyArrayObject *dy = check_float_array(ody, "dy", -1);
    if (!dy || !ops_require_nonempty(dy, "dy")) {
        return NULL;
    }
    /* relu_out: backward of relu(a + b) with y = relu_out (the fused kernel);
     * set: bit 1 / bit 2 overwrite da / db instead of accumulating */
    PyArrayObject *yr = NULL;
    if (oyr != Py_None) {
        yr = check_float_array(oyr, "relu_out", -1);
        if (!yr || !ops_same_shape(dy, "dy", yr, "relu_out")) {
            return NULL;
        }
    }
    if (set < 0 || set > 3) {
        PyErr_Format(PyExc_ValueError, "set: expected 0..3 (bit 1 da, bit 2 db), got %d", set);
        return NULL;
    }
    da = new_float_array(PyArray_NDIM(dy), PyArray_DIMS(dy));
    db = new_float_array(PyArray_NDIM(dy), PyArray_DIMS(dy));
    if (!da || !db) {
        goto cleanup;
    }
    const size_t n = (size_t)PyArray_SIZE(dy);
    for (int side = 0; side < 2; side++) {
        if (set & (1 << side)) {
            /* overwritten, not accumulated: start from NaN so a skipped element shows */
            float *p = FDATA(side ? db : da);
            for (size_t i = 0; i < n; i++) {
                p[i] = NAN;
            }
        }
    }
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    if (yr || set) {
        st = eenet_add_relu_backward(FDATA(da), FDATA(db), CFDATA(dy), yr ? CFDATA(yr) : NULL,
                                     n, set);
    } else {
        st = eenet_add_backward(FDATA(da), FDATA(db), CFDATA(dy), n);
    }
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        raise_status(st);
        goto cleanup;
    }
    result = Py_BuildValue("(OO)", da, db);
cleanup:
    Py_XDECREF(da);
    Py_XDECREF(db);
    return result;
}

/* ---- softmax --------------------------------------------------------------- */

static PyObject *py_softmax_forward(PyObject *self, PyObject *args) {
    PyObject *ox;
    if (!PyArg_ParseTuple(args, "O:softmax_forward", &ox)) {
        return NULL;
    }
    PyArrayObject *x = check_float_array(ox, "logits", 2);
    if (!x || !ops_require_nonempty(x, "logits") || !ops_fits_int(PyArray_DIM(x, 0), "logits") ||
        !ops_fits_int(PyArray_DIM(x, 1), "logits")) {
        return NULL;
    }
    PyArrayObject *y = new_float_array(2, PyArray_DIMS(x));
    if (!y) {
        return NULL;
    }
    const int N = (int)PyArray_DIM(x, 0), K = (int)PyArray_DIM(x, 1);
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    st = eenet_softmax_forward(FDATA(y), CFDATA(x), N, K);
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        Py_DECREF(y);
        return raise_status(st);
    }
    return (PyObject *)y;
}

static PyObject *py_softmax_backward(PyObject *self, PyObject *args) {
    PyObject *ody, *oy;
    if (!PyArg_ParseTuple(args, "OO:softmax_backward", &ody, &oy)) {
        return NULL;
    }
    PyArrayObject *dy = check_float_array(ody, "dprob", 2);
    PyArrayObject *y = dy ? check_float_array(oy, "prob", 2) : NULL;
    if (!y || !ops_require_nonempty(y, "prob") || !ops_same_shape(y, "prob", dy, "dprob") ||
        !ops_fits_int(PyArray_DIM(y, 0), "prob") || !ops_fits_int(PyArray_DIM(y, 1), "prob")) {
        return NULL;
    }
    PyArrayObject *dx = new_float_array(2, PyArray_DIMS(y));
    if (!dx) {
        return NULL;
    }
    const int N = (int)PyArray_DIM(y, 0), K = (int)PyArray_DIM(y, 1);
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    st = eenet_softmax_backward(FDATA(dx), CFDATA(dy), CFDATA(y), N, K);
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        Py_DECREF(dx);
        return raise_status(st);
    }
    return (PyObject *)dx;
}

/* ---- pooling --------------------------------------------------------------- */

static PyObject *py_maxpool2d_forward(PyObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "kernel", "stride", "padding", NULL};
    PyObject *ox;
    long k = 3, stride = 2, pad = 1;
    PyArrayObject *y = NULL, *am = NULL;
    PyObject *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|lll:maxpool2d_forward", kwlist, &ox, &k,
                                     &stride, &pad)) {
        return NULL;
    }
    PyArrayObject *x = ops_check_nchw(ox, "x");
    if (!x || !check_int_min(k, "kernel", 1) || !check_int_min(stride, "stride", 1) ||
        !check_int_min(pad, "padding", 0)) {
        return NULL;
    }
    if (k > 4096 || stride > 4096 || 2 * pad > k) {
        PyErr_Format(PyExc_ValueError,
                     "padding: expected padding <= kernel/2 = %ld (and kernel, stride <= 4096), "
                     "got padding=%ld kernel=%ld stride=%ld",
                     k / 2, pad, k, stride);
        return NULL;
    }
    const int N = (int)PyArray_DIM(x, 0), C = (int)PyArray_DIM(x, 1);
    const int H = (int)PyArray_DIM(x, 2), W = (int)PyArray_DIM(x, 3);
    if (H + 2 * pad < k || W + 2 * pad < k) {
        PyErr_Format(PyExc_ValueError,
                     "x: spatial size (%d, %d) plus padding %ld is smaller than the kernel %ld",
                     H, W, pad, k);
        return NULL;
    }
    const npy_intp odims[4] = {N, C, (H + 2 * pad - k) / stride + 1,
                               (W + 2 * pad - k) / stride + 1};
    y = new_float_array(4, odims);
    am = (PyArrayObject *)PyArray_ZEROS(4, (npy_intp *)odims, NPY_INT32, 0);
    if (!y || !am) {
        goto cleanup;
    }
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    st = eenet_maxpool2d_forward(FDATA(y), (int32_t *)PyArray_DATA(am), CFDATA(x), N, C, H, W,
                                 (int)k, (int)stride, (int)pad);
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        raise_status(st);
        goto cleanup;
    }
    result = Py_BuildValue("(OO)", y, am);
cleanup:
    Py_XDECREF(y);
    Py_XDECREF(am);
    return result;
}

static PyObject *py_maxpool2d_backward(PyObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"dy", "argmax", "H", "W", NULL};
    PyObject *ody, *oam;
    long H, W;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOll:maxpool2d_backward", kwlist, &ody, &oam,
                                     &H, &W)) {
        return NULL;
    }
    PyArrayObject *dy = ops_check_nchw(ody, "dy");
    if (!dy || !check_int_min(H, "H", 1) || !check_int_min(W, "W", 1) ||
        !ops_fits_int(H, "H") || !ops_fits_int(W, "W") || !ops_fits_int(H * W, "H*W")) {
        return NULL;
    }
    if (!PyArray_Check(oam) || PyArray_TYPE((PyArrayObject *)oam) != NPY_INT32) {
        PyErr_SetString(PyExc_TypeError, "argmax: expected a numpy.ndarray of int32");
        return NULL;
    }
    PyArrayObject *am = (PyArrayObject *)oam;
    if (!ops_same_shape(dy, "dy", am, "argmax")) {
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(am) || !PyArray_ISALIGNED(am)) {
        PyErr_SetString(PyExc_ValueError, "argmax: expected a C-contiguous, aligned array");
        return NULL;
    }
    const int32_t *a = (const int32_t *)PyArray_DATA(am);
    const npy_intp na = PyArray_SIZE(am);
    for (npy_intp i = 0; i < na; i++) {
        if (a[i] < 0 || a[i] >= H * W) {
            PyErr_Format(PyExc_ValueError,
                         "argmax: index %d at flat position %ld is outside [0, H*W = %ld)",
                         (int)a[i], (long)i, H * W);
            return NULL;
        }
    }
    const int N = (int)PyArray_DIM(dy, 0), C = (int)PyArray_DIM(dy, 1);
    const int Ho = (int)PyArray_DIM(dy, 2), Wo = (int)PyArray_DIM(dy, 3);
    const npy_intp idims[4] = {N, C, H, W};
    PyArrayObject *dx = new_float_array(4, idims);
    if (!dx) {
        return NULL;
    }
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    st = eenet_maxpool2d_backward(FDATA(dx), CFDATA(dy), a, N, C, (int)H, (int)W, Ho, Wo);
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        Py_DECREF(dx);
        return raise_status(st);
    }
    return (PyObject *)dx;
}

static PyObject *py_global_avgpool_forward(PyObject *self, PyObject *args) {
    PyObject *ox;
    if (!PyArg_ParseTuple(args, "O:global_avgpool_forward", &ox)) {
        return NULL;
    }
    PyArrayObject *x = ops_check_nchw(ox, "x");
    if (!x) {
        return NULL;
    }
    const int N = (int)PyArray_DIM(x, 0), C = (int)PyArray_DIM(x, 1);
    const int HW = (int)(PyArray_DIM(x, 2) * PyArray_DIM(x, 3));
    const npy_intp odims[2] = {N, C};
    PyArrayObject *y = new_float_array(2, odims);
    if (!y) {
        return NULL;
    }
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    st = eenet_global_avgpool_forward(FDATA(y), CFDATA(x), N, C, HW);
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        Py_DECREF(y);
        return raise_status(st);
    }
    return (PyObject *)y;
}

static PyObject *py_global_avgpool_backward(PyObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"dy", "H", "W", NULL};
    PyObject *ody;
    long H, W;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oll:global_avgpool_backward", kwlist, &ody, &H,
                                     &W)) {
        return NULL;
    }
    PyArrayObject *dy = check_float_array(ody, "dy", 2);
    if (!dy || !ops_require_nonempty(dy, "dy") || !check_int_min(H, "H", 1) ||
        !check_int_min(W, "W", 1) || !ops_fits_int(H, "H") || !ops_fits_int(W, "W") ||
        !ops_fits_int(H * W, "H*W") ||
        !ops_fits_int(PyArray_DIM(dy, 0), "dy") || !ops_fits_int(PyArray_DIM(dy, 1), "dy")) {
        return NULL;
    }
    const int N = (int)PyArray_DIM(dy, 0), C = (int)PyArray_DIM(dy, 1);
    const npy_intp idims[4] = {N, C, H, W};
    PyArrayObject *dx = new_float_array(4, idims);
    if (!dx) {
        return NULL;
    }
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    st = eenet_global_avgpool_backward(FDATA(dx), CFDATA(dy), N, C, (int)(H * W));
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        Py_DECREF(dx);
        return raise_status(st);
    }
    return (PyObject *)dx;
}

/* ---- linear ---------------------------------------------------------------- */

/* Parse x (N,Fi), w (Fo,Fi) and bias (Fo) or None. */
static int ops_linear_args(PyObject *ox, PyObject *ow, PyObject *ob, PyArrayObject **x,
                           PyArrayObject **w, PyArrayObject **b) {
    *x = check_float_array(ox, "x", 2);
    if (!*x || !ops_require_nonempty(*x, "x")) {
        return 0;
    }
    const npy_intp wdims[2] = {-1, PyArray_DIM(*x, 1)};
    *w = check_float_shape(ow, "w", 2, wdims);
    if (!*w || !ops_require_nonempty(*w, "w") || !ops_fits_int(PyArray_DIM(*x, 0), "x") ||
        !ops_fits_int(PyArray_DIM(*x, 1), "x") || !ops_fits_int(PyArray_DIM(*w, 0), "w")) {
        return 0;
    }
    *b = NULL;
    if (ob && ob != Py_None) {
        const npy_intp bdims[1] = {PyArray_DIM(*w, 0)};
        *b = check_float_shape(ob, "b", 1, bdims);
        if (!*b) {
            return 0;
        }
    }
    return 1;
}

static PyObject *ops_linear_forward(PyObject *args, PyObject *kwds, int naive) {
    static char *kwlist[] = {"x", "w", "b", NULL};
    PyObject *ox, *ow, *ob = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|O:linear_forward", kwlist, &ox, &ow, &ob)) {
        return NULL;
    }
    PyArrayObject *x, *w, *b;
    if (!ops_linear_args(ox, ow, ob, &x, &w, &b)) {
        return NULL;
    }
    const int N = (int)PyArray_DIM(x, 0), Fi = (int)PyArray_DIM(x, 1);
    const int Fo = (int)PyArray_DIM(w, 0);
    const npy_intp odims[2] = {N, Fo};
    PyArrayObject *y = new_float_array(2, odims);
    if (!y) {
        return NULL;
    }
    const float *bp = b ? CFDATA(b) : NULL;
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    st = naive ? eenet_linear_forward_naive(FDATA(y), CFDATA(x), CFDATA(w), bp, N, Fi, Fo)
               : eenet_linear_forward(FDATA(y), CFDATA(x), CFDATA(w), bp, N, Fi, Fo);
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        Py_DECREF(y);
        return raise_status(st);
    }
    return (PyObject *)y;
}

static PyObject *py_linear_forward(PyObject *self, PyObject *args, PyObject *kwds) {
    return ops_linear_forward(args, kwds, 0);
}

static PyObject *py_linear_forward_naive(PyObject *self, PyObject *args, PyObject *kwds) {
    return ops_linear_forward(args, kwds, 1);
}

static PyObject *ops_linear_backward(PyObject *args, PyObject *kwds, int naive) {
    static char *kwlist[] = {"dy", "x", "w", "with_bias", NULL};
    PyObject *ody, *ox, *ow;
    int with_bias = 1;
    PyArrayObject *dx = NULL, *dw = NULL, *db = NULL;
    PyObject *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|p:linear_backward", kwlist, &ody, &ox, &ow,
                                     &with_bias)) {
        return NULL;
    }
    PyArrayObject *x, *w, *b;
    if (!ops_linear_args(ox, ow, NULL, &x, &w, &b)) {
        return NULL;
    }
    const int N = (int)PyArray_DIM(x, 0), Fi = (int)PyArray_DIM(x, 1);
    const int Fo = (int)PyArray_DIM(w, 0);
    const npy_intp ydims[2] = {N, Fo};
    PyArrayObject *dy = check_float_shape(ody, "dy", 2, ydims);
    if (!dy) {
        return NULL;
    }
    const npy_intp bdims[1] = {Fo};
    dx = new_float_array(2, PyArray_DIMS(x));
    dw = new_float_array(2, PyArray_DIMS(w));
    db = with_bias ? new_float_array(1, bdims) : NULL;
    if (!dx || !dw || (with_bias && !db)) {
        goto cleanup;
    }
    float *dbp = db ? FDATA(db) : NULL;
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    st = naive ? eenet_linear_backward_naive(FDATA(dx), FDATA(dw), dbp, CFDATA(dy), CFDATA(x),
                                             CFDATA(w), N, Fi, Fo)
               : eenet_linear_backward(FDATA(dx), FDATA(dw), dbp, CFDATA(dy), CFDATA(x),
                                       CFDATA(w), N, Fi, Fo);
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        raise_status(st);
        goto cleanup;
    }
    result = Py_BuildValue("(OOO)", dx, dw, db ? (PyObject *)db : Py_None);
cleanup:
    Py_XDECREF(dx);
    Py_XDECREF(dw);
    Py_XDECREF(db);
    return result;
}

static PyObject *py_linear_backward(PyObject *self, PyObject *args, PyObject *kwds) {
    return ops_linear_backward(args, kwds, 0);
}

static PyObject *py_linear_backward_naive(PyObject *self, PyObject *args, PyObject *kwds) {
    return ops_linear_backward(args, kwds, 1);
}

/* ---- losses ------------------------------------------------------------------ */

/* Parse prob (N,K) (finite, non-empty) and labels (N,) int64 in [0, K). */
static int ops_prob_labels(PyObject *op, PyObject *oy, PyArrayObject **p, PyArrayObject **y) {
    *p = check_float_array(op, "prob", 2);
    if (!*p || !ops_require_nonempty(*p, "prob") || !ops_fits_int(PyArray_DIM(*p, 0), "prob") ||
        !ops_fits_int(PyArray_DIM(*p, 1), "prob") || !require_finite(*p, "prob")) {
        return 0;
    }
    *y = check_labels(oy, "labels", PyArray_DIM(*p, 0), (int)PyArray_DIM(*p, 1));
    return *y != NULL;
}

static PyObject *py_nll_prob_forward(PyObject *self, PyObject *args) {
    PyObject *op, *oy;
    if (!PyArg_ParseTuple(args, "OO:nll_prob_forward", &op, &oy)) {
        return NULL;
    }
    PyArrayObject *p, *y;
    if (!ops_prob_labels(op, oy, &p, &y)) {
        return NULL;
    }
    const int N = (int)PyArray_DIM(p, 0), K = (int)PyArray_DIM(p, 1);
    float loss = 0.0f;
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    st = eenet_nll_prob_forward(&loss, CFDATA(p), (const int64_t *)PyArray_DATA(y), N, K);
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        return raise_status(st);
    }
    return PyFloat_FromDouble(loss);
}

static PyObject *py_nll_prob_backward(PyObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"prob", "labels", "dloss", NULL};
    PyObject *op, *oy;
    double dloss = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|d:nll_prob_backward", kwlist, &op, &oy,
                                     &dloss)) {
        return NULL;
    }
    PyArrayObject *p, *y;
    if (!ops_prob_labels(op, oy, &p, &y)) {
        return NULL;
    }
    const int N = (int)PyArray_DIM(p, 0), K = (int)PyArray_DIM(p, 1);
    PyArrayObject *dp = new_float_array(2, PyArray_DIMS(p));
    if (!dp) {
        return NULL;
    }
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    st = eenet_nll_prob_backward(FDATA(dp), CFDATA(p), (const int64_t *)PyArray_DATA(y),
                                 (float)dloss, N, K);
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        Py_DECREF(dp);
        return raise_status(st);
    }
    return (PyObject *)dp;
}

static PyObject *py_ee_loss(PyObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"probs", "conf", "costs", "labels", "version", "lambda_coef",
                             "tags", NULL};
    PyObject *op, *oc, *ocost, *oy, *otags = Py_None;
    int version;
    double lambda_coef;
    PyArrayObject *parts = NULL, *dp = NULL, *dc = NULL;
    PyObject *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOid|O:ee_loss", kwlist, &op, &oc, &ocost,
                                     &oy, &version, &lambda_coef, &otags)) {
        return NULL;
    }
    if (version < 0 || version > 4) {
        PyErr_Format(PyExc_ValueError, "version: expected 0..4, got %d", version);
        return NULL;
    }
    if (!isfinite(lambda_coef)) {
        PyErr_Format(PyExc_ValueError, "lambda_coef: expected a finite number, got %g",
                     lambda_coef);
        return NULL;
    }
    PyArrayObject *p = check_float_array(op, "probs", 3);
    if (!p || !ops_require_nonempty(p, "probs") || !require_finite(p, "probs")) {
        return NULL;
    }
    const npy_intp E1 = PyArray_DIM(p, 0), Nn = PyArray_DIM(p, 1), Kk = PyArray_DIM(p, 2);
    if (E1 > 64) { /* eeloss.c keeps per-sample state for up to 64 exits on the stack */
        PyErr_Format(PyExc_ValueError, "probs: expected at most 64 exits (axis 0), got %ld",
                     (long)E1);
        return NULL;
    }
    if (!ops_fits_int(Nn, "probs") || !ops_fits_int(Kk, "probs")) {
        return NULL;
    }
    const npy_intp cdims[2] = {E1, Nn};
    PyArrayObject *c = check_float_shape(oc, "conf", 2, cdims);
    if (!c) {
        return NULL;
    }
    /* the final exit's row is ignored: check the early exits' rows only */
    if (!all_finite(CFDATA(c), (E1 - 1) * Nn)) {
        PyErr_SetString(PyExc_ValueError, "conf: contains NaN or infinity");
        return NULL;
    }
    for (npy_intp j = 0; j < (E1 - 1) * Nn; j++) {
        const float h = CFDATA(c)[j];
        if (h < 0.0f || h > 1.0f) {
            PyErr_Format(PyExc_ValueError, "conf: expected values in [0, 1], got %g at exit %ld, "
                         "sample %ld", (double)h, (long)(j / Nn), (long)(j % Nn));
            return NULL;
        }
    }
    const npy_intp kdims[1] = {E1};
    PyArrayObject *cost = check_float_shape(ocost, "costs", 1, kdims);
    if (!cost || !require_finite(cost, "costs")) {
        return NULL;
    }
    PyArrayObject *y = check_labels(oy, "labels", Nn, (int)Kk);
    if (!y) {
        return NULL;
    }
    const int32_t *tags = NULL;
    if (version == 4) {
        if (otags == Py_None) {
            PyErr_SetString(PyExc_ValueError, "tags: version 4 needs exit tags, an int32 array "
                            "of shape (N,)");
            return NULL;
        }
        if (!PyArray_Check(otags) || PyArray_TYPE((PyArrayObject *)otags) != NPY_INT32) {
            PyErr_SetString(PyExc_TypeError, "tags: expected a numpy.ndarray of int32");
            return NULL;
        }
        PyArrayObject *t = (PyArrayObject *)otags;
        if (PyArray_NDIM(t) != 1 || PyArray_DIM(t, 0) != Nn) {
            char got[128];
            shape_str(got, sizeof got, PyArray_NDIM(t), PyArray_DIMS(t));
            PyErr_Format(PyExc_ValueError, "tags: expected shape (%ld,), got %s", (long)Nn, got);
            return NULL;
        }
        if (!PyArray_IS_C_CONTIGUOUS(t) || !PyArray_ISALIGNED(t)) {
            PyErr_SetString(PyExc_ValueError, "tags: expected a C-contiguous, aligned array");
            return NULL;
        }
        tags = (const int32_t *)PyArray_DATA(t);
        for (npy_intp n = 0; n < Nn; n++) {
            if (tags[n] < 0 || tags[n] >= E1) {
                PyErr_Format(PyExc_ValueError, "tags: tag %d at index %ld is outside [0, %ld)",
                             (int)tags[n], (long)n, (long)E1);
                return NULL;
            }
        }
    }
    const npy_intp pdims[1] = {4};
    parts = new_float_array(1, pdims);
    dp = new_float_array(3, PyArray_DIMS(p));
    dc = new_float_array(2, cdims);
    if (!parts || !dp || !dc) {
        goto cleanup;
    }
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    st = eenet_ee_loss(FDATA(parts), FDATA(dp), FDATA(dc), CFDATA(p), CFDATA(c), CFDATA(cost),
                       (const int64_t *)PyArray_DATA(y), tags, version, (float)lambda_coef,
                       (int)E1, (int)Nn, (int)Kk);
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        raise_status(st);
        goto cleanup;
    }
    result = Py_BuildValue("(OOO)", parts, dp, dc);
cleanup:
    Py_XDECREF(parts);
    Py_XDECREF(dp);
    Py_XDECREF(dc);
    return result;
}

/* ---- optimisers ------------------------------------------------------------ */

/* Check a float32, contiguous, writeable (if `writeable`) 1-d-or-any array of n
 * elements.  n < 0: take the size from this array. */
static PyArrayObject *ops_flat_state(PyObject *obj, const char *name, npy_intp n, int writeable) {
    PyArrayObject *arr = check_float_array(obj, name, -1);
    if (!arr) {
        return NULL;
    }
    if (n >= 0 && PyArray_SIZE(arr) != n) {
        PyErr_Format(PyExc_ValueError, "%s: expected %ld elements (the size of params), got %ld",
                     name, (long)n, (long)PyArray_SIZE(arr));
        return NULL;
    }
    if (writeable && !ops_require_writeable(arr, name)) {
        return NULL;
    }
    return arr;
}

static PyObject *py_sgd_step(PyObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"params", "momentum_buf", "grads", "lr", "momentum", "dampening",
                             "weight_decay", "nesterov", "first_step", NULL};
    PyObject *op, *ob, *og;
    double lr, momentum = 0.0, dampening = 0.0, wd = 0.0;
    int nesterov = 0, first_step = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOd|dddpp:sgd_step", kwlist, &op, &ob, &og,
                                     &lr, &momentum, &dampening, &wd, &nesterov, &first_step)) {
        return NULL;
    }
    PyArrayObject *p = ops_flat_state(op, "params", -1, 1);
    if (!p) {
        return NULL;
    }
    const npy_intp n = PyArray_SIZE(p);
    PyArrayObject *b = NULL;
    if (ob != Py_None) {
        b = ops_flat_state(ob, "momentum_buf", n, 1);
        if (!b) {
            return NULL;
        }
    } else if (momentum != 0.0) {
        PyErr_SetString(PyExc_ValueError, "momentum_buf: needed when momentum != 0, got None");
        return NULL;
    }
    PyArrayObject *g = ops_flat_state(og, "grads", n, 0);
    if (!g || !require_finite(g, "grads")) {
        return NULL;
    }
    if (!(lr >= 0.0) || !isfinite(lr) || !(momentum >= 0.0) || !isfinite(momentum) ||
        !isfinite(dampening) || !(wd >= 0.0) || !isfinite(wd)) {
        PyErr_Format(PyExc_ValueError,
                     "lr, momentum, weight_decay: expected finite values >= 0, got lr=%g "
                     "momentum=%g dampening=%g weight_decay=%g",
                     lr, momentum, dampening, wd);
        return NULL;
    }
    if (nesterov && (momentum <= 0.0 || dampening != 0.0)) {
        PyErr_SetString(PyExc_ValueError,
                        "nesterov: Nesterov momentum requires a momentum and zero dampening");
        return NULL;
    }
    if (n == 0) {
        Py_RETURN_NONE;
    }
    float *bp = b ? FDATA(b) : NULL;
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    st = eenet_sgd_step(FDATA(p), bp, CFDATA(g), (size_t)n, lr, momentum, dampening, wd,
                        nesterov, first_step);
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        return raise_status(st);
    }
    Py_RETURN_NONE;
}

static PyObject *py_adam_step(PyObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"params", "exp_avg", "exp_avg_sq", "grads", "lr", "beta1", "beta2",
                             "eps", "weight_decay", "step", NULL};
    PyObject *op, *om, *ov, *og;
    double lr, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, wd = 0.0;
    long step = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOd|ddddl:adam_step", kwlist, &op, &om, &ov,
                                     &og, &lr, &beta1, &beta2, &eps, &wd, &step)) {
        return NULL;
    }
    PyArrayObject *p = ops_flat_state(op, "params", -1, 1);
    if (!p) {
        return NULL;
    }
    const npy_intp n = PyArray_SIZE(p);
    PyArrayObject *m = ops_flat_state(om, "exp_avg", n, 1);
    PyArrayObject *v = m ? ops_flat_state(ov, "exp_avg_sq", n, 1) : NULL;
    PyArrayObject *g = v ? ops_flat_state(og, "grads", n, 0) : NULL;
    if (!g || !require_finite(g, "grads") || !check_int_min(step, "step", 1)) {
        return NULL;
    }
    if (step > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "step: expected at most %d, got %ld", INT_MAX, step);
        return NULL;
    }
    if (!(lr >= 0.0) || !isfinite(lr) || !(beta1 >= 0.0 && beta1 < 1.0) ||
        !(beta2 >= 0.0 && beta2 < 1.0) || !(eps >= 0.0) || !isfinite(eps) || !(wd >= 0.0) ||
        !isfinite(wd)) {
        PyErr_Format(PyExc_ValueError,
                     "lr, beta1, beta2, eps, weight_decay: expected lr, eps, weight_decay >= 0 "
                     "and betas in [0, 1), got lr=%g beta1=%g beta2=%g eps=%g weight_decay=%g",
                     lr, beta1, beta2, eps, wd);
        return NULL;
    }
    if (n == 0) {
        Py_RETURN_NONE;
    }
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    st = eenet_adam_step(FDATA(p), FDATA(m), FDATA(v), CFDATA(g), (size_t)n, lr, beta1, beta2,
                         eps, wd, (int)step);
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        return raise_status(st);
    }
    Py_RETURN_NONE;
}

static PyMethodDef ops_methods[] = {
    /* BEGIN ops methods */
    {"bn2d_forward_train", (PyCFunction)(void (*)(void))py_bn2d_forward_train,
     METH_VARARGS | METH_KEYWORDS,
     "bn2d_forward_train(x, gamma, beta, running_mean, running_var, momentum=0.1, eps=1e-5,"
     " relu=False) -> (y, save_mean, save_invstd); running stats updated in place; relu:"
     " y = relu(bn(x)) (the fused kernel)."},
    {"bn2d_forward_eval", (PyCFunction)(void (*)(void))py_bn2d_forward_eval,
     METH_VARARGS | METH_KEYWORDS,
     "bn2d_forward_eval(x, gamma, beta, running_mean, running_var, eps=1e-5, relu=False) -> y"
     " (relu: relu(bn(x)), fused)"},
    {"bn2d_backward", (PyCFunction)(void (*)(void))py_bn2d_backward,
     METH_VARARGS | METH_KEYWORDS,
     "bn2d_backward(dy, x, gamma, save_mean, save_invstd, relu_out=None, overwrite=False) ->"
     " (dx, dgamma, dbeta); relu_out: backward of relu(bn(x)) whose output it is (fused);"
     " overwrite: the kernel that writes dx instead of accumulating."},
    {"relu_forward", py_relu_forward, METH_VARARGS, "relu_forward(x) -> max(x, 0)"},
    {"relu_backward", py_relu_backward, METH_VARARGS,
     "relu_backward(dy, y) -> dx = dy * (y > 0)"},
    {"sigmoid_forward", py_sigmoid_forward, METH_VARARGS, "sigmoid_forward(x) -> 1/(1+e^-x)"},
    {"sigmoid_backward", py_sigmoid_backward, METH_VARARGS,
     "sigmoid_backward(dy, y) -> dx = dy * y * (1 - y)"},
    {"add_forward", py_add_forward, METH_VARARGS,
     "add_forward(a, b, relu=False) -> a + b, or relu(a + b) (fused)"},
    {"add_backward", py_add_backward, METH_VARARGS,
     "add_backward(dy, relu_out=None, set=0) -> (da, db); relu_out: backward of relu(a + b)"
     " whose output it is (fused); set bit 1 / 2: da / db overwritten, not accumulated."},
    {"softmax_forward", py_softmax_forward, METH_VARARGS,
     "softmax_forward(logits (N,K)) -> prob (N,K)"},
    {"softmax_backward", py_softmax_backward, METH_VARARGS,
     "softmax_backward(dprob, prob) -> dlogits"},
    {"maxpool2d_forward", (PyCFunction)(void (*)(void))py_maxpool2d_forward,
     METH_VARARGS | METH_KEYWORDS,
     "maxpool2d_forward(x, kernel=3, stride=2, padding=1) -> (y, argmax int32)"},
    {"maxpool2d_backward", (PyCFunction)(void (*)(void))py_maxpool2d_backward,
     METH_VARARGS | METH_KEYWORDS, "maxpool2d_backward(dy, argmax, H, W) -> dx"},
    {"global_avgpool_forward", py_global_avgpool_forward, METH_VARARGS,
     "global_avgpool_forward(x (N,C,H,W)) -> (N,C)"},
    {"global_avgpool_backward", (PyCFunction)(void (*)(void))py_global_avgpool_backward,
     METH_VARARGS | METH_KEYWORDS, "global_avgpool_backward(dy (N,C), H, W) -> dx"},
    {"linear_forward", (PyCFunction)(void (*)(void))py_linear_forward,
     METH_VARARGS | METH_KEYWORDS, "linear_forward(x (N,Fi), w (Fo,Fi), b=None) -> (N,Fo)"},
    {"linear_backward", (PyCFunction)(void (*)(void))py_linear_backward,
     METH_VARARGS | METH_KEYWORDS,
     "linear_backward(dy, x, w, with_bias=True) -> (dx, dw, db or None)"},
    {"linear_forward_naive", (PyCFunction)(void (*)(void))py_linear_forward_naive,
     METH_VARARGS | METH_KEYWORDS, "Naive twin of linear_forward (double accumulation)."},
    {"linear_backward_naive", (PyCFunction)(void (*)(void))py_linear_backward_naive,
     METH_VARARGS | METH_KEYWORDS, "Naive twin of linear_backward (double accumulation)."},
    {"nll_prob_forward", py_nll_prob_forward, METH_VARARGS,
     "nll_prob_forward(prob (N,K), labels (N,) int64) -> float"},
    {"nll_prob_backward", (PyCFunction)(void (*)(void))py_nll_prob_backward,
     METH_VARARGS | METH_KEYWORDS, "nll_prob_backward(prob, labels, dloss=1.0) -> dprob"},
    {"ee_loss", (PyCFunction)(void (*)(void))py_ee_loss, METH_VARARGS | METH_KEYWORDS,
     "ee_loss(probs, conf, costs, labels, version, lambda_coef, tags=None)"
     " -> (parts (4,), dprobs, dconf)"},
    {"sgd_step", (PyCFunction)(void (*)(void))py_sgd_step, METH_VARARGS | METH_KEYWORDS,
     "sgd_step(params, momentum_buf, grads, lr, momentum=0, dampening=0, weight_decay=0,"
     " nesterov=False, first_step=False); updates in place."},
    {"adam_step", (PyCFunction)(void (*)(void))py_adam_step, METH_VARARGS | METH_KEYWORDS,
     "adam_step(params, exp_avg, exp_avg_sq, grads, lr, beta1=0.9, beta2=0.999, eps=1e-8,"
     " weight_decay=0, step=1); updates in place."},
    /* END ops methods */
    {NULL, NULL, 0, NULL}};

/* ======================================================================== */
/* section "net": the Net extension type                                     */
/* ======================================================================== */

#include "net.h"

/* Net: the extension type owning one eenet_net.  Python (eenet/net.py) builds
 * the op program from a ModelSpec and wraps this type; the buffers are exposed
 * as 1-d zero-copy NumPy views whose base is the Net object, and net.py slices
 * them into named parameters. */
typedef struct {
    PyObject_HEAD
    eenet_net *net;
    int C, H, W;  /* input image per sample */
    int busy;     /* a call with the GIL released is running on this net */
} NetObject;

static void Net_dealloc(NetObject *self) {
    eenet_net_free(self->net);
    self->net = NULL;
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Check an int32 array of shape (rows, cols) (rows < 0: any). */
static PyArrayObject *check_int32_2d(PyObject *obj, const char *name, npy_intp rows,
                                     npy_intp cols) {
    if (!PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) != NPY_INT32) {
        PyErr_Format(PyExc_TypeError, "%s: expected a numpy.ndarray of int32", name);
        return NULL;
    }
    PyArrayObject *arr = (PyArrayObject *)obj;
    if (PyArray_NDIM(arr) != 2 || (rows >= 0 && PyArray_DIM(arr, 0) != rows) ||
        PyArray_DIM(arr, 1) != cols) {
        char got[128];
        shape_str(got, sizeof got, PyArray_NDIM(arr), PyArray_DIMS(arr));
        PyErr_Format(PyExc_ValueError, "%s: expected shape (%ld, %ld), got %s", name,
                     (long)rows, (long)cols, got);
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(arr) || !PyArray_ISALIGNED(arr)) {
        PyErr_Format(PyExc_ValueError, "%s: expected a C-contiguous, aligned array", name);
        return NULL;
    }
    return arr;
}

static int Net_init(NetObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"tensors", "ops", "opf", "exits", "costs", "num_params",
                             "num_bufs", "num_bn", "max_batch", NULL};
    PyObject *o_tensors, *o_ops, *o_opf, *o_exits, *o_costs;
    Py_ssize_t num_params, num_bufs;
    int num_bn, max_batch;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOnnii:Net", kwlist, &o_tensors, &o_ops,
                                     &o_opf, &o_exits, &o_costs, &num_params, &num_bufs,
                                     &num_bn, &max_batch)) {
        return -1;
    }
    if (self->net) {
        PyErr_SetString(PyExc_RuntimeError, "Net is already initialised");
        return -1;
    }
    PyArrayObject *tensors = check_int32_2d(o_tensors, "tensors", -1, 3);
    PyArrayObject *ops = tensors ? check_int32_2d(o_ops, "ops", -1, EENET_OP_FIELDS) : NULL;
    if (!ops) {
        return -1;
    }
    npy_intp nops = PyArray_DIM(ops, 0);
    npy_intp opf_dims[2] = {nops, 2};
    PyArrayObject *opf = check_float_shape(o_opf, "opf", 2, opf_dims);
    PyArrayObject *exits = opf ? check_int32_2d(o_exits, "exits", -1, 3) : NULL;
    if (!exits) {
        return -1;
    }
    npy_intp cdims[1] = {PyArray_DIM(exits, 0)};
    PyArrayObject *costs = check_float_shape(o_costs, "costs", 1, cdims);
    if (!costs || !check_int_min(num_params, "num_params", 0) ||
        !check_int_min(num_bufs, "num_bufs", 0) || !check_int_min(num_bn, "num_bn", 0) ||
        !check_int_min(max_batch, "max_batch", 1)) {
        return -1;
    }
    if (PyArray_DIM(tensors, 0) < 2) {
        PyErr_SetString(PyExc_ValueError, "tensors: expected at least 2 tensors");
        return -1;
    }
    eenet_net *net = NULL;
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS
    st = eenet_net_create(&net, (const int32_t *)PyArray_DATA(tensors),
                          (int)PyArray_DIM(tensors, 0), (const int32_t *)PyArray_DATA(ops),
                          CFDATA(opf), (int)nops, (const int32_t *)PyArray_DATA(exits),
                          (int)PyArray_DIM(exits, 0), CFDATA(costs), (size_t)num_params,
                          (size_t)num_bufs, num_bn, max_batch);
    Py_END_ALLOW_THREADS
    if (st != EENET_OK) {
        raise_status(st);
        return -1;
    }
    const int32_t *t0 = (const int32_t *)PyArray_DATA(tensors);
    self->net = net;
    self->C = t0[0];
    self->H = t0[1];
    self->W = t0[2];
    return 0;
}

static int net_ready(NetObject *self) {
    if (!self->net) {
        PyErr_SetString(PyExc_RuntimeError, "Net is not initialised");
        return 0;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError,
                        "Net is in use by another thread (calls on one net must not overlap)");
        return 0;
    }
    return 1;
}

/* 1-d zero-copy view of `n` elements at `data`, base = self. */
static PyObject *net_view(NetObject *self, void *data, npy_intp n, int typenum) {
    npy_intp dims[1] = {n};
    PyObject *arr = PyArray_SimpleNewFromData(1, dims, typenum, data);
    if (!arr) {
        return NULL;
    }
    Py_INCREF(self);
    if (PyArray_SetBaseObject((PyArrayObject *)arr, (PyObject *)self) < 0) {
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

static PyObject *Net_views(NetObject *self, PyObject *noargs) {
    if (!self->net) {
        PyErr_SetString(PyExc_RuntimeError, "Net is not initialised");
        return NULL;
    }
    eenet_net *net = self->net;
    npy_intp np_ = (npy_intp)eenet_net_num_params(net);
    PyObject *p = net_view(self, eenet_net_params(net), np_, NPY_FLOAT32);
    PyObject *g = p ? net_view(self, eenet_net_grads(net), np_, NPY_FLOAT32) : NULL;
    PyObject *s = g ? net_view(self, eenet_net_opt_state(net), 2 * np_, NPY_FLOAT32) : NULL;
    PyObject *b = s ? net_view(self, eenet_net_bufs(net), (npy_intp)eenet_net_num_bufs(net),
                               NPY_FLOAT32)
                    : NULL;
    PyObject *t = b ? net_view(self, eenet_net_nbt(net), eenet_net_num_bn(net), NPY_INT64)
                    : NULL;
    PyObject *res = t ? PyTuple_Pack(5, p, g, s, b, t) : NULL;
    Py_XDECREF(p);
    Py_XDECREF(g);
    Py_XDECREF(s);
    Py_XDECREF(b);
    Py_XDECREF(t);
    return res;
}

/* Validate an input batch x (B, C, H, W) float32, finite, 1 <= B <= max_batch. */
static PyArrayObject *net_check_x(NetObject *self, PyObject *obj) {
    npy_intp dims[4] = {-1, self->C, self->H, self->W};
    PyArrayObject *x = check_float_shape(obj, "x", 4, dims);
    if (!x) {
        return NULL;
    }
    npy_intp B = PyArray_DIM(x, 0);
    int max_batch = eenet_net_max_batch(self->net);
    if (B < 1 || B > max_batch) {
        PyErr_Format(PyExc_ValueError,
                     "x: batch size %ld outside [1, max_batch=%d]; build the net with a larger "
                     "max_batch or split the batch",
                     (long)B, max_batch);
        return NULL;
    }
    if (!require_finite(x, "x")) {
        return NULL;
    }
    return x;
}

static PyObject *Net_forward(NetObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "training", NULL};
    PyObject *o_x;
    int training = 0;
    PyArrayObject *probs = NULL, *conf = NULL;
    PyObject *res = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|p:forward", kwlist, &o_x, &training) ||
        !net_ready(self)) {
        return NULL;
    }
    PyArrayObject *x = net_check_x(self, o_x);
    if (!x) {
        return NULL;
    }
    int B = (int)PyArray_DIM(x, 0);
    int E1 = eenet_net_num_exits(self->net), K = eenet_net_num_classes(self->net);
    npy_intp pd[3] = {E1, B, K}, cd[2] = {E1, B};
    probs = new_float_array(3, pd);
    conf = probs ? new_float_array(2, cd) : NULL;
    if (!conf) {
        goto cleanup;
    }
    eenet_status st;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    st = eenet_net_forward(self->net, FDATA(probs), FDATA(conf), CFDATA(x), B, training);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (st != EENET_OK) {
        raise_status(st);
        goto cleanup;
    }
    res = PyTuple_Pack(2, probs, conf);
cleanup:
    Py_XDECREF(probs);
    Py_XDECREF(conf);
    return res;
}

static PyObject *Net_train_step(NetObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "y", "tags", "version", "lambda_coef", "threshold",
                             "opt_kind", "lr", "momentum", "dampening", "nesterov", "beta1",
                             "beta2", "eps", "weight_decay", "step", "first_step", NULL};
    PyObject *o_x, *o_y, *o_tags;
    int version, opt_kind, nesterov, first_step;
    float lambda_coef, threshold;
    double lr, momentum, dampening, beta1, beta2, eps, wd;
    long long step;
    PyArrayObject *counts = NULL, *nll = NULL;
    PyObject *res = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOiffidddpddddLp:train_step", kwlist, &o_x,
                                     &o_y, &o_tags, &version, &lambda_coef, &threshold,
                                     &opt_kind, &lr, &momentum, &dampening, &nesterov, &beta1,
                                     &beta2, &eps, &wd, &step, &first_step) ||
        !net_ready(self)) {
        return NULL;
    }
    PyArrayObject *x = net_check_x(self, o_x);
    if (!x) {
        return NULL;
    }
    npy_intp B = PyArray_DIM(x, 0);
    int E1 = eenet_net_num_exits(self->net), K = eenet_net_num_classes(self->net);
    PyArrayObject *y = check_labels(o_y, "y", B, K);
    if (!y) {
        return NULL;
    }
    if (version < 0 || version > 4) {
        PyErr_Format(PyExc_ValueError, "loss: expected v0..v4, got v%d", version);
        return NULL;
    }
    const int32_t *tags = NULL;
    if (version == 4) {
        if (o_tags == Py_None) {
            PyErr_SetString(PyExc_ValueError, "tags: loss v4 needs an int32 array (B,) of exit tags");
            return NULL;
        }
        if (!PyArray_Check(o_tags) || PyArray_TYPE((PyArrayObject *)o_tags) != NPY_INT32) {
            PyErr_SetString(PyExc_TypeError, "tags: expected a numpy.ndarray of int32");
            return NULL;
        }
        PyArrayObject *t = (PyArrayObject *)o_tags;
        if (PyArray_NDIM(t) != 1 || PyArray_DIM(t, 0) != B || !PyArray_IS_C_CONTIGUOUS(t) ||
            !PyArray_ISALIGNED(t)) {
            char got[128];
            shape_str(got, sizeof got, PyArray_NDIM(t), PyArray_DIMS(t));
            PyErr_Format(PyExc_ValueError, "tags: expected a C-contiguous array of shape (%ld,), got %s",
                         (long)B, got);
            return NULL;
        }
        tags = (const int32_t *)PyArray_DATA(t);
        for (npy_intp i = 0; i < B; i++) {
            if (tags[i] < 0 || tags[i] >= E1) {
                PyErr_Format(PyExc_ValueError, "tags: tag %d at index %ld is outside [0, %d)",
                             (int)tags[i], (long)i, E1);
                return NULL;
            }
        }
    }
    if (opt_kind != EENET_OPT_SGD && opt_kind != EENET_OPT_ADAM) {
        PyErr_Format(PyExc_ValueError, "opt_kind: expected 0 (SGD) or 1 (Adam), got %d", opt_kind);
        return NULL;
    }
    if (step < 1) {
        PyErr_Format(PyExc_ValueError, "step: expected >= 1, got %lld", step);
        return NULL;
    }
    if (!isfinite(lr) || !isfinite(lambda_coef) || !isfinite(wd) || !isfinite(momentum)) {
        PyErr_SetString(PyExc_ValueError, "lr, lambda_coef, momentum, weight_decay: must be finite");
        return NULL;
    }
    npy_intp cd[1] = {E1}, nd[2] = {E1, B};
    counts = (PyArrayObject *)PyArray_ZEROS(1, cd, NPY_INT64, 0);
    nll = counts ? new_float_array(2, nd) : NULL;
    if (!nll) {
        goto cleanup;
    }
    eenet_opt_config opt = {0};
    opt.kind = opt_kind;
    opt.lr = lr;
    opt.momentum = momentum;
    opt.dampening = dampening;
    opt.nesterov = nesterov;
    opt.beta1 = beta1;
    opt.beta2 = beta2;
    opt.eps = eps;
    opt.weight_decay = wd;
    opt.step = step;
    opt.first_step = first_step;
    eenet_step_stats stats;
    memset(&stats, 0, sizeof stats);
    eenet_status st;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    st = eenet_net_train_step(self->net, &stats, (int64_t *)PyArray_DATA(counts), FDATA(nll),
                              CFDATA(x), (const int64_t *)PyArray_DATA(y), tags, (int)B,
                              version, lambda_coef, threshold, &opt);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (st != EENET_OK) {
        raise_status(st);
        goto cleanup;
    }
    res = Py_BuildValue("{s:d,s:d,s:d,s:d,s:L,s:d,s:O,s:O}", "loss", (double)stats.parts[0],
                        "loss_cls", (double)stats.parts[1], "loss_cost",
                        (double)stats.parts[2], "loss_conf", (double)stats.parts[3], "correct",
                        (long long)stats.correct, "cost_sum", stats.cost_sum, "exit_counts",
                        counts, "nll", nll);
cleanup:
    Py_XDECREF(counts);
    Py_XDECREF(nll);
    return res;
}

static PyObject *Net_predict(NetObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "threshold", NULL};
    PyObject *o_x;
    float threshold = 0.5f;
    PyArrayObject *labels = NULL, *probs = NULL, *exits = NULL, *conf = NULL;
    PyObject *res = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|f:predict", kwlist, &o_x, &threshold) ||
        !net_ready(self)) {
        return NULL;
    }
    if (isnan(threshold)) {
        PyErr_SetString(PyExc_ValueError, "threshold: must not be NaN");
        return NULL;
    }
    PyArrayObject *x = net_check_x(self, o_x);
    if (!x) {
        return NULL;
    }
    npy_intp B = PyArray_DIM(x, 0);
    int K = eenet_net_num_classes(self->net);
    npy_intp bd[1] = {B}, pd[2] = {B, K};
    labels = (PyArrayObject *)PyArray_ZEROS(1, bd, NPY_INT64, 0);
    exits = labels ? (PyArrayObject *)PyArray_ZEROS(1, bd, NPY_INT64, 0) : NULL;
    probs = exits ? new_float_array(2, pd) : NULL;
    conf = probs ? new_float_array(1, bd) : NULL;
    if (!conf) {
        goto cleanup;
    }
    eenet_status st;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    st = eenet_net_predict(self->net, (int64_t *)PyArray_DATA(labels), FDATA(probs),
                           (int64_t *)PyArray_DATA(exits), FDATA(conf), CFDATA(x), (int)B,
                           threshold);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (st != EENET_OK) {
        raise_status(st);
        goto cleanup;
    }
    res = PyTuple_Pack(4, labels, probs, exits, conf);
cleanup:
    Py_XDECREF(labels);
    Py_XDECREF(probs);
    Py_XDECREF(exits);
    Py_XDECREF(conf);
    return res;
}

static PyObject *Net_set_profiling(NetObject *self, PyObject *args) {
    int on;
    if (!PyArg_ParseTuple(args, "p:set_profiling", &on) || !net_ready(self)) {
        return NULL;
    }
    eenet_net_set_profiling(self->net, on);
    Py_RETURN_NONE;
}

static PyObject *Net_profile(NetObject *self, PyObject *noargs) {
    if (!net_ready(self)) {
        return NULL;
    }
    double t[EENET_PROF_SLOTS];
    eenet_net_profile(self->net, t);
    PyObject *d = PyDict_New();
    if (!d) {
        return NULL;
    }
    for (int i = 0; i < EENET_PROF_SLOTS; i++) {
        PyObject *v = PyFloat_FromDouble(t[i]);
        if (!v || PyDict_SetItemString(d, eenet_net_profile_name(i), v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

static PyObject *Net_get_max_batch(NetObject *self, void *closure) {
    return self->net ? PyLong_FromLong(eenet_net_max_batch(self->net)) : PyLong_FromLong(0);
}

static PyObject *Net_get_nbytes(NetObject *self, void *closure) {
    return PyLong_FromSize_t(self->net ? eenet_net_bytes(self->net) : 0);
}

static PyMethodDef Net_methods[] = {
    {"views", (PyCFunction)Net_views, METH_NOARGS,
     "views()\n--\n\n(params, grads, opt_state, bufs, num_batches_tracked): 1-d zero-copy "
     "views of the network's buffers (base: this Net)."},
    {"forward", (PyCFunction)(void (*)(void))Net_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(x, training=False)\n--\n\nx float32 (B,C,H,W) -> (probs (E1,B,K), conf (E1,B))."},
    {"train_step", (PyCFunction)(void (*)(void))Net_train_step, METH_VARARGS | METH_KEYWORDS,
     "train_step(x, y, tags, version, lambda_coef, threshold, opt_kind, lr, momentum, "
     "dampening, nesterov, beta1, beta2, eps, weight_decay, step, first_step)\n--\n\n"
     "One training step; returns the statistics dict (see eenet.net.Net.train_step)."},
    {"predict", (PyCFunction)(void (*)(void))Net_predict, METH_VARARGS | METH_KEYWORDS,
     "predict(x, threshold=0.5)\n--\n\nBatched early exit: (labels (B,), probs (B,K), "
     "exit (B,), conf (B,))."},
    {"set_profiling", (PyCFunction)Net_set_profiling, METH_VARARGS,
     "set_profiling(on)\n--\n\nStart (and reset) or stop per-part timing of forward, "
     "train_step and predict."},
    {"profile", (PyCFunction)Net_profile, METH_NOARGS,
     "profile()\n--\n\n{part: wall-clock seconds} summed since set_profiling(True): "
     "'<op kind>.forward', '<op kind>.backward', 'zero_grad', 'loss', 'optimizer', "
     "'exit_output', 'other'."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Net_getset[] = {
    {"max_batch", (getter)Net_get_max_batch, NULL, "largest batch the arena holds", NULL},
    {"nbytes", (getter)Net_get_nbytes, NULL, "bytes allocated by the network", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject NetType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "eenet._core.Net",
    .tp_basicsize = sizeof(NetObject),
    .tp_itemsize = 0,
    .tp_dealloc = (destructor)Net_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Net(tensors, ops, opf, exits, costs, num_params, num_bufs, num_bn, max_batch)\n"
              "--\n\nThe C network engine; use eenet.build() rather than this type.",
    .tp_methods = Net_methods,
    .tp_getset = Net_getset,
    .tp_init = (initproc)Net_init,
    .tp_new = PyType_GenericNew,
};

/* Add the Net type (and anything else of this section) to the module. */
static int net_register(PyObject *module) {
    if (PyType_Ready(&NetType) < 0) {
        return -1;
    }
    Py_INCREF(&NetType);
    if (PyModule_AddObject(module, "Net", (PyObject *)&NetType) < 0) {
        Py_DECREF(&NetType);
        return -1;
    }
    return 0;
}

/* ======================================================================== */
/* module                                                                    */
/* ======================================================================== */

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "_core",
    "eenet's C core: kernels (float32, NCHW) and the network engine.", -1, NULL,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__core(void) {
    import_array();
    eenet_core_init();
    PyObject *module = PyModule_Create(&core_module);
    if (!module) {
        return NULL;
    }
    if (PyModule_AddFunctions(module, thread_methods) < 0 ||
        PyModule_AddFunctions(module, conv_methods) < 0 ||
        PyModule_AddFunctions(module, ops_methods) < 0 || net_register(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
