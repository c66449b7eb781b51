"""The core builds and runs without OpenMP (setup.py's EENET_NO_OPENMP=1).

A copy of the source tree is built in a temporary folder with OpenMP off, and
the thread-sensitive tests run there in a subprocess: the conv kernels with 1 and
2 requested threads, and the engine's eval runs, which split rows between threads
when OpenMP is present (a split that assumed real threads would leave rows
unwritten in this build).  Slow: one full build of the extension (about 1-2 min
on 2 cores)."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_builds_and_runs_without_openmp(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("*.so", "__pycache__", "build", "*.egg-info")
    for name in ("csrc", "eenet", "tests"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    env = dict(os.environ, EENET_NO_OPENMP="1")
    env.setdefault("EENET_SHARED", str(ROOT.parent / "shared"))
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"],
                           cwd=src, env=env, capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, build.stderr[-4000:]
    probe = subprocess.run([sys.executable, "-c",
                            "import eenet; assert not eenet._core.has_openmp(); "
                            "print(eenet.__file__)"],
                           cwd=src, env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-4000:]
    assert pathlib.Path(probe.stdout.strip()).is_relative_to(src)
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "tests/test_net.py", "tests/test_conv.py", "-k", "thread or predict"],
        cwd=src, env=env, capture_output=True, text=True, timeout=1200)
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert " passed" in tests.stdout
