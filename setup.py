"""Build the C extension ``eenet._core``.

Sources: every ``.c`` file under ``csrc/`` (kernels, the network engine and
``module.c``, the only file that includes ``Python.h``).  GEMM comes from
OpenBLAS as shipped on PyPI by ``scipy-openblas32`` (symbols prefixed
``scipy_``); ``eenet/__init__.py`` loads that shared library before importing
``_core`` so no rpath games are needed.

Environment knobs:
  EENET_NO_OPENMP=1   build without OpenMP (the code runs single-threaded)
  EENET_DEBUG=1       -O0 -g with AddressSanitizer/UBSan
"""
import glob
import os
import subprocess
import sys
import tempfile

import numpy
from setuptools import Extension, setup


def _compiler_supports_openmp() -> bool:
    """True if the C compiler accepts -fopenmp (tested on a tiny program)."""
    cc = os.environ.get("CC", "cc")
    src = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.c")
        with open(path, "w") as f:
            f.write(src)
        try:
            res = subprocess.run([cc, "-fopenmp", path, "-o", os.path.join(tmp, "t")],
                                 capture_output=True)
        except OSError:
            return False
        return res.returncode == 0


def _openblas():
    import scipy_openblas32
    return (scipy_openblas32.get_include_dir(), scipy_openblas32.get_lib_dir(),
            scipy_openblas32.get_library())


sources = sorted(glob.glob("csrc/**/*.c", recursive=True))
include_dirs = [numpy.get_include(), "csrc", "csrc/kernels"]
compile_args = ["-std=c11", "-O3", "-Wall", "-Wextra", "-Wno-unused-parameter",
                "-fno-strict-aliasing"]
link_args = []
define_macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]

if os.environ.get("EENET_DEBUG"):
    compile_args = [a for a in compile_args if a != "-O3"] + [
        "-O0", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    link_args += ["-fsanitize=address,undefined"]

if not os.environ.get("EENET_NO_OPENMP") and _compiler_supports_openmp():
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")

blas_inc, blas_lib_dir, blas_lib = _openblas()
include_dirs.append(blas_inc)
define_macros.append(("EENET_HAVE_OPENBLAS", "1"))

ext = Extension(
    "eenet._core",
    sources=sources,
    include_dirs=include_dirs,
    define_macros=define_macros,
    extra_compile_args=compile_args,
    extra_link_args=link_args,
    library_dirs=[blas_lib_dir],
    libraries=[blas_lib],
    runtime_library_dirs=[blas_lib_dir],
)

setup(ext_modules=[ext])
