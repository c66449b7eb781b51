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

static PyMethodDef conv_methods[] = {
    /* BEGIN conv methods */
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
