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

static PyMethodDef thread_methods[] = {
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
    out = new_float_array(4, odims);
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
                             "naive", NULL};
    PyObject *dy_obj, *x_obj, *w_obj;
    long stride, padding;
    int with_bias, need_dx = 1, naive = 0;
    PyArrayObject *dx = NULL, *dw = NULL, *db = NULL;
    float *ws = NULL;
    PyObject *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOllp|pp:conv2d_backward", kwlist,
                                     &dy_obj, &x_obj, &w_obj, &stride, &padding, &with_bias,
                                     &need_dx, &naive)) {
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
    dw = new_float_array(4, PyArray_DIMS(w));
    if (!dw) {
        goto cleanup;
    }
    if (need_dx) {
        dx = new_float_array(4, PyArray_DIMS(x));
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
    eenet_status st;
    Py_BEGIN_ALLOW_THREADS;
    if (naive) {
        st = eenet_conv2d_backward_naive(pdx, FDATA(dw), pdb, CFDATA(dy), CFDATA(x), CFDATA(w),
                                         g.N, g.C, g.H, g.W, g.K, g.kh, g.kw, g.stride, g.pad);
    } else {
        st = eenet_conv2d_backward(pdx, FDATA(dw), pdb, CFDATA(dy), CFDATA(x), CFDATA(w), ws,
                                   g.N, g.C, g.H, g.W, g.K, g.kh, g.kw, g.stride, g.pad);
    }
    Py_END_ALLOW_THREADS;
    if (st != EENET_OK) {
        raise_status(st);
        goto cleanup;
    }
    result = Py_BuildValue("(OOO)", dx ? (PyObject *)dx : Py_None, (PyObject *)dw,
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
     "conv2d_backward(dy, x, w, stride, padding, with_bias, need_dx=True, naive=False)\n--\n\n"
     "Gradients of conv2d_forward: returns (dx (N,C,H,W) or None, dw (K,C,kh,kw),\n"
     "db (K,) or None) given dy (N,K,Ho,Wo).  The C kernels accumulate; this binding\n"
     "passes fresh zero-filled arrays, so the results are the gradients themselves."},
    /* END conv methods */
    {NULL, NULL, 0, NULL}};

/* ======================================================================== */
/* section "ops": every other kernel and the optimisers                      */
/* ======================================================================== */

static PyMethodDef ops_methods[] = {
    /* BEGIN ops methods */
    /* END ops methods */
    {NULL, NULL, 0, NULL}};

/* ======================================================================== */
/* section "net": the Net extension type                                     */
/* ======================================================================== */

/* Add the Net type (and anything else of this section) to the module. */
static int net_register(PyObject *module) {
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
