"""File helpers shared by the modules that write results: atomic writes and JSON-able values.

Standard library and NumPy only, so that any module may import it without making
``import eenet`` heavier.
"""
from __future__ import annotations

import contextlib
import math
import os
import secrets
from collections.abc import Mapping
from typing import IO, Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_open(path: "str | os.PathLike", mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing (``mode`` "wb" or "w").

    On a clean exit the file is flushed, fsync'ed and renamed onto ``path``
    (``os.replace``: readers see the old file or the new one, never a partial one);
    on an exception it is removed and ``path`` is left as it was.  The temporary
    file is created with ``open`` (so it honours the umask, unlike ``mkstemp``)
    under a name no other process or thread can pick.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode: expected 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    f = open(tmp, mode.replace("w", "x"))
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: "str | os.PathLike", data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_open`)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: "str | os.PathLike", text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_open`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(obj: Any) -> Any:
    """A value ``json.dumps`` accepts with ``allow_nan=False``: mappings and sequences
    recursively (keys become str), NumPy arrays and scalars as Python values,
    non-finite floats as None, DataFrames/Series dropped to None, path-likes as str,
    any other object as its ``str``."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if type(obj).__name__ in ("DataFrame", "Series"):
        return None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)
