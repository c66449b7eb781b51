"""Datasets of the EENet paper, read from their canonical distribution files.

``load(name, split, data_dir)`` returns a :class:`Dataset`: uint8 images (N, C, H, W),
int64 labels (N,), class names, the split, and the per-channel normalisation constants
the authors use. Supported names:

========================  ==============================================  ===============
name                      files (under the data root)                      splits
========================  ==============================================  ===============
``mnist``                 ``mnist/{train,t10k}-{images-idx3,labels-idx1}   train, test
                          -ubyte[.gz]``
``fashion-mnist``         the same names under ``fashion-mnist/``; also    train, test
                          ``/usr/share/datasets/fashion-mnist`` (Debian)
``cifar10``               ``cifar-10-batches-py/`` or                      train, test
                          ``cifar-10-python.tar.gz``
``svhn``                  ``svhn/{train,test,extra}_32x32.mat``            train, test, extra
``tiny-imagenet``         ``tiny-imagenet-200/`` (wnids.txt, train/,       train, val (test
                          val/val_annotations.txt)                         is an alias of val)
``cifar10-jpeg``          ``cifar10/jpeg-lossy/<split>/<class>/*.jpg``     train, test
``imagefolder``           ``<data_dir>/<split>/<class>/*.jpg|png``         any folder name
========================  ==============================================  ===============

Data root: an explicit ``data_dir``, else ``$EENET_DATA``, else the per-user cache
(``$XDG_CACHE_HOME/eenet`` or ``~/.cache/eenet``), then system locations (Debian's
``/usr/share/datasets/fashion-mnist``). A ``data_dir`` may be the root or the dataset's
own folder. Missing files are downloaded from the official locations into the first root
(MD5 verified, resumable ``.part`` files, a tqdm progress bar); without a network the
error names the missing files, their MD5s and URLs.

Nothing in the user's data folders is modified, except that decoded JPEG datasets
(Tiny-ImageNet, image folders) are cached as one ``eenet-<split>.npz`` file beside the
data when that folder is writable (else under ``$EENET_CACHE`` or ``<user cache>/decoded``)
so the second load takes seconds.

Pillow, SciPy and tqdm are imported only when a loader needs them.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import pickle
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ._io import atomic_open

__all__ = [
    "Dataset", "DatasetInfo", "NAMES", "info", "DatasetError", "DatasetNotFoundError", "Resource", "RESOURCES",
    "load", "download", "download_file", "verify", "read_idx", "data_roots",
    "user_cache_dir", "decoded_cache_dir", "names",
]


class DatasetError(ValueError):
    """A dataset file is corrupt, truncated, inconsistent or fails its checksum."""


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not on disk and could not be downloaded."""


# --------------------------------------------------------------------------------------
# The Dataset object
# --------------------------------------------------------------------------------------

class Dataset:
    """An image-classification dataset held in memory as uint8.

    Attributes:
        images: uint8 (N, C, H, W), C-contiguous.
        labels: int64 (N,), values in [0, len(classes)).
        classes: class names, index = label.
        name, split: what was loaded (``"cifar10"``, ``"train"``).
        mean, std: per-channel normalisation constants (length C), applied to x/255.
        augmentation: the authors' training augmentation for this dataset:
            ``"crop-flip"`` (random crop with 4-pixel zero padding + horizontal flip),
            ``"flip"`` (horizontal flip) or ``"none"``.
        source: the file or folder the data came from (None for arrays).

    A dataset made by :meth:`subset` (or ``eenet.data.train_val_split``) is a *view*: it
    shares the parent's arrays and keeps an index into them. Its ``images``/``labels``
    properties then return a gathered copy; the batch iterator gathers per batch instead.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str] | None = None,
                 *, name: str = "custom", split: str = "train",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 augmentation: str = "none", source: str | os.PathLike | None = None,
                 index: np.ndarray | None = None) -> None:
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise TypeError(f"images: expected uint8 (N, C, H, W), got {images.dtype} "
                            f"shape {images.shape}")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels: expected integer (N,), got {labels.dtype} shape {labels.shape}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels: {labels.shape[0]} labels for {images.shape[0]} images")
        self._images = np.ascontiguousarray(images)
        self._labels = np.ascontiguousarray(labels, dtype=np.int64)
        if classes is None:
            k = int(self._labels.max()) + 1 if self._labels.size else 0
            classes = [str(i) for i in range(k)]
        self.classes: list[str] = [str(c) for c in classes]
        if self._labels.size and (self._labels.min() < 0 or self._labels.max() >= len(self.classes)):
            raise ValueError(f"labels: expected values in [0, {len(self.classes)}), got "
                             f"[{self._labels.min()}, {self._labels.max()}]")
        c = images.shape[1]
        self.mean: tuple[float, ...] = tuple(float(m) for m in (mean if mean is not None else [0.5] * c))
        self.std: tuple[float, ...] = tuple(float(s) for s in (std if std is not None else [0.5] * c))
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"mean/std: expected {c} values (one per channel), got "
                             f"{len(self.mean)}/{len(self.std)}")
        if augmentation not in ("none", "flip", "crop-flip"):
            raise ValueError(f"augmentation: expected 'none', 'flip' or 'crop-flip', got {augmentation!r}")
        self.augmentation = augmentation
        self.name = name
        self.split = split
        self.source = None if source is None else str(source)
        if index is not None:
            index = np.ascontiguousarray(index, dtype=np.int64)
            if index.ndim != 1:
                raise ValueError(f"index: expected 1-D, got shape {index.shape}")
            if index.size and (index.min() < 0 or index.max() >= images.shape[0]):
                raise ValueError(f"index: values must lie in [0, {images.shape[0]})")
        self._index = index

    # -- array access ---------------------------------------------------------------
    @property
    def images(self) -> np.ndarray:
        """uint8 (N, C, H, W). For a view this is a gathered copy."""
        return self._images if self._index is None else self._images[self._index]

    @property
    def labels(self) -> np.ndarray:
        """int64 (N,). For a view this is a gathered copy."""
        return self._labels if self._index is None else self._labels[self._index]

    @property
    def base_index(self) -> np.ndarray | None:
        """Positions of this view's samples in the parent arrays (None: not a view)."""
        return self._index

    def gather(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (B, C, H, W) images and int64 (B,) labels of samples ``idx`` (B,)."""
        idx = np.asarray(idx, dtype=np.int64)
        if self._index is not None:
            idx = self._index[idx]
        return self._images[idx], self._labels[idx]

    def subset(self, indices: Iterable[int] | np.ndarray, split: str | None = None) -> "Dataset":
        """A view on samples ``indices`` (positions in this dataset) sharing the arrays."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"indices: values must lie in [0, {len(self)})")
        idx = idx % max(len(self), 1)
        base = idx if self._index is None else self._index[idx]
        return Dataset(self._images, self._labels, self.classes, name=self.name,
                       split=self.split if split is None else split, mean=self.mean, std=self.std,
                       augmentation=self.augmentation, source=self.source, index=base)

    # -- metadata ---------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._images.shape[0] if self._index is None else self._index.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(int(s) for s in self._images.shape[1:])  # type: ignore[return-value]

    input_shape = image_shape  # the name models use for (C, H, W)

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        view = "" if self._index is None else ", view"
        return (f"Dataset({self.name!r}, split={self.split!r}, n={len(self)}, "
                f"shape=({c}, {h}, {w}), classes={self.num_classes}{view})")


# --------------------------------------------------------------------------------------
# Data roots, official files, downloads
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resource:
    """One official file: its name, MD5, size in bytes (if known) and URLs to try in order."""
    filename: str
    md5: str
    urls: tuple[str, ...]
    size: int | None = None


_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_FMNIST_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"


def _idx_resources(mirrors: tuple[str, ...], md5s: dict[str, str]) -> dict[str, Resource]:
    return {f: Resource(f, m, tuple(u + f for u in mirrors)) for f, m in md5s.items()}


#: Official files per dataset, keyed by file name. Tests may point ``urls`` elsewhere.
RESOURCES: dict[str, dict[str, Resource]] = {
    "mnist": _idx_resources(_MNIST_MIRRORS, {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }),
    "fashion-mnist": _idx_resources(_FMNIST_MIRRORS, {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }),
    "cifar10": {
        "cifar-10-python.tar.gz": Resource(
            "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
            ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",), 170_498_071),
    },
    "svhn": {
        f: Resource(f, m, (_SVHN_URL + f,)) for f, m in {
            "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
            "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
            "extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7",
        }.items()
    },
    "tiny-imagenet": {
        "tiny-imagenet-200.zip": Resource(
            "tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de",
            ("http://cs231n.stanford.edu/tiny-imagenet-200.zip",)),
    },
}

#: Read-only system locations searched when no ``data_dir`` is given.
SYSTEM_LOCATIONS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}


def user_cache_dir() -> Path:
    """The per-user cache: ``$XDG_CACHE_HOME/eenet`` or ``~/.cache/eenet``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "eenet"


def decoded_cache_dir() -> Path:
    """Where decoded JPEG datasets are cached when their own folder is read-only:
    ``$EENET_CACHE`` or ``<user cache>/decoded``."""
    env = os.environ.get("EENET_CACHE")
    return Path(env).expanduser() if env else user_cache_dir() / "decoded"


def data_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Data roots in search order: ``[data_dir]`` if given, else ``$EENET_DATA`` (if
    set) and the per-user cache. The first one is where downloads go."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    roots = []
    env = os.environ.get("EENET_DATA")
    if env:
        roots.append(Path(env).expanduser())
    roots.append(user_cache_dir())
    return roots


def _md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _urlopen(request: urllib.request.Request, timeout: float):
    """The opener used by downloads (a seam for tests)."""
    return urllib.request.urlopen(request, timeout=timeout)


def _fetch(url: str, part: Path, size: int | None, progress: bool, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (resuming from its size via an HTTP Range
    request; restarting if the server ignores the range)."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset == size:
        return
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    request = urllib.request.Request(url, headers={"User-Agent": "eenet"})
    if offset and url.startswith(("http://", "https://")):
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = _urlopen(request, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # range not satisfiable: the part is complete already
            return
        raise
    with response:
        status = getattr(response, "status", None) or response.getcode()
        if offset and status != 206:
            offset = 0  # server sent the whole file
        length = response.headers.get("Content-Length") if response.headers else None
        total = offset + int(length) if length is not None else size
        part.parent.mkdir(parents=True, exist_ok=True)
        bar = None
        if progress:
            try:
                from tqdm.auto import tqdm
                bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                           unit_divisor=1024, desc=part.name[:-5], leave=False)
            except ImportError:  # progress bar is optional
                bar = None
        try:
            with open(part, "ab" if offset else "wb") as f:
                while True:
                    block = response.read(1 << 16)
                    if not block:
                        break
                    f.write(block)
                    if bar is not None:
                        bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()


def download_file(resource: Resource, folder: str | os.PathLike, *, progress: bool = True,
                  timeout: float = 30.0) -> Path:
    """Download ``resource`` into ``folder`` and return its path.

    Data go to ``<file>.part`` first (resumed if present), are checked against the MD5 and
    renamed into place. A checksum mismatch deletes the part file and tries the next
    URL, raising :class:`DatasetError` if none serves the right file; a network failure raises :class:`DatasetNotFoundError` naming
    the file, its MD5 and URLs (the part file is kept for resuming).
    """
    folder = Path(folder)
    dest = folder / resource.filename
    if dest.exists():
        return dest
    part = folder / (resource.filename + ".part")
    failures: list[str] = []
    mismatches: list[str] = []
    for url in resource.urls:
        try:
            _fetch(url, part, resource.size, progress, timeout)
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
            # The part file stays for the next attempt to resume.
            failures.append(f"{url}: {getattr(e, 'reason', None) or e}")
            continue
        digest = _md5(part)
        if digest != resource.md5:
            got = part.stat().st_size
            part.unlink()
            mismatches.append(
                f"{dest}: downloaded from {url}: MD5 {digest} ({got} bytes), expected "
                f"{resource.md5}" + (f" ({resource.size} bytes)" if resource.size else ""))
            continue  # another mirror may serve the right file
        os.replace(part, dest)
        return dest
    if mismatches:
        raise DatasetError("; ".join(mismatches) + "; the partial file was deleted, try again")
    raise DatasetNotFoundError(
        f"could not download {resource.filename} (MD5 {resource.md5}) into {folder}:\n  "
        + "\n  ".join(failures))


def _missing_error(name: str, split: str, searched: list[Path], files: list[Resource],
                   extra: str = "", cause: str = "") -> DatasetNotFoundError:
    lines = [f"{name} ({split}) not found. Looked in:"]
    lines += [f"  {p}" for p in searched]
    if files:
        lines.append("Missing files (name, MD5, where to get them):")
        for r in files:
            lines.append(f"  {r.filename}  MD5 {r.md5}  " + "  or  ".join(r.urls))
    if extra:
        lines.append(extra)
    if cause:
        lines.append(f"Download failed: {cause}")
    lines.append("Put the files in one of these folders, pass data_dir=/--data-dir, or set EENET_DATA.")
    return DatasetNotFoundError("\n".join(lines))


# --------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_maybe_gz(path: Path) -> bytes:
    """File contents, gunzipped when the file starts with the gzip magic bytes."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DatasetError(f"{path}: corrupt or truncated gzip file ({e})") from None
    if path.suffix == ".gz":
        raise DatasetError(f"{path}: not a gzip file (first bytes {raw[:2].hex()}, expected 1f8b)")
    return raw


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or .gz) into an array of its declared shape and type.

    ``ndim`` checks the magic number (0x00000803 for images, 0x00000801 for labels).
    Raises :class:`DatasetError` naming the file for a wrong magic number, a truncated
    file or trailing bytes.
    """
    path = Path(path)
    data = _read_maybe_gz(path)
    if len(data) < 4:
        raise DatasetError(f"{path}: truncated IDX file: {len(data)} bytes, shorter than the "
                           f"4-byte magic number")
    magic = int.from_bytes(data[:4], "big")
    code, nd = data[2], data[3]
    want = f"0x{0x0800 + ndim:08x}" if ndim is not None else "0x000008NN"
    if data[0] != 0 or data[1] != 0 or code not in _IDX_DTYPES or nd == 0 or (
            ndim is not None and (nd != ndim or code != 0x08)):
        raise DatasetError(f"{path}: wrong magic number 0x{magic:08x}, expected {want} "
                           f"(IDX unsigned bytes, {ndim if ndim is not None else 'N'} dimensions)")
    header = 4 + 4 * nd
    if len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header: {len(data)} bytes, expected {header}")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd))
    dtype = _IDX_DTYPES[code]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "trailing data in"
        raise DatasetError(f"{path}: {what} IDX file: {len(data)} bytes, expected {expected} "
                           f"for shape {dims}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _idx_candidates(folder: Path, stem: str) -> list[Path]:
    dotted = stem.replace("-idx", ".idx")
    return [folder / (stem + ".gz"), folder / stem, folder / (dotted + ".gz"), folder / dotted]


def _find_first(cands: list[Path]) -> Path | None:
    for p in cands:
        if p.is_file():
            return p
    return None


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
# Fashion-MNIST is not in the paper; its own training-set statistics (checked in tests).
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
HALF3 = (0.5, 0.5, 0.5)


def _load_idx_dataset(name: str, split: str, data_dir, download: bool, progress: bool) -> Dataset:
    if split not in _IDX_FILES:
        raise ValueError(f"split: {name} has splits 'train' and 'test', got {split!r}")
    img_stem, lab_stem = _IDX_FILES[split]
    sub = {"mnist": ("mnist", "MNIST/raw", "MNIST"),
           "fashion-mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST")}[name]
    roots = data_roots(data_dir)
    folders = [r / s for r in roots for s in sub] + roots
    if data_dir is None:
        folders += list(SYSTEM_LOCATIONS.get(name, ()))
    found = None
    for folder in folders:
        img, lab = _find_first(_idx_candidates(folder, img_stem)), _find_first(_idx_candidates(folder, lab_stem))
        if img is not None and lab is not None:
            found = (img, lab)
            break
    if found is None:
        res = [RESOURCES[name][img_stem + ".gz"], RESOURCES[name][lab_stem + ".gz"]]
        target = roots[0] / sub[0]
        if not download:
            raise _missing_error(name, split, folders, res)
        try:
            found = tuple(download_file(r, target, progress=progress) for r in res)
        except DatasetNotFoundError as e:
            raise _missing_error(name, split, folders, res, cause=str(e)) from None
    img_path, lab_path = found
    images = read_idx(img_path, 3)
    labels = read_idx(lab_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{img_path}: {images.shape[0]} images but {lab_path} has "
                           f"{labels.shape[0]} labels; expected equal counts")
    if labels.size and labels.max() > 9:
        raise DatasetError(f"{lab_path}: label {int(labels.max())} out of range, expected 0..9")
    classes = FASHION_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
    mean, std = (FASHION_MEAN, FASHION_STD) if name == "fashion-mnist" else (MNIST_MEAN, MNIST_STD)
    n, h, w = images.shape
    return Dataset(images.reshape(n, 1, h, w), labels.astype(np.int64), classes, name=name,
                   split=split, mean=mean, std=std, augmentation="none", source=img_path.parent)


# --------------------------------------------------------------------------------------
# CIFAR-10 python batches
# --------------------------------------------------------------------------------------

class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches allowing only the globals a NumPy array needs (a batch
    file must not be able to run code)."""
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
        ("__builtin__", "object"), ("builtins", "object"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR batch")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # any unpickling failure means a corrupt batch
        raise DatasetError(f"{where}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(data, where)
    if "data" not in d or "labels" not in d:
        raise DatasetError(f"{where}: expected keys b'data' and b'labels', got {sorted(d)}")
    x = np.asarray(d["data"])
    y = np.asarray(d["labels"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise DatasetError(f"{where}: b'data' must be uint8 (N, 3072), got {x.dtype} {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DatasetError(f"{where}: {x.shape[0]} images but {y.size} labels; expected equal counts")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DatasetError(f"{where}: labels out of range [{y.min()}, {y.max()}], expected 0..9")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


_CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _load_cifar10(split: str, data_dir, download: bool, progress: bool) -> Dataset:
    if split not in _CIFAR_BATCHES:
        raise ValueError(f"split: cifar10 has splits 'train' and 'test', got {split!r}")
    wanted = _CIFAR_BATCHES[split]
    roots = data_roots(data_dir)
    folders = [d for r in roots for d in (r / "cifar-10-batches-py", r / "cifar10" / "cifar-10-batches-py",
                                          r / "cifar10", r)]
    res = RESOURCES["cifar10"]["cifar-10-python.tar.gz"]
    blobs: dict[str, tuple[bytes, str]] | None = None
    for folder in folders:
        if all((folder / b).is_file() for b in wanted):
            blobs = {b: ((folder / b).read_bytes(), str(folder / b)) for b in wanted}
            meta = folder / "batches.meta"
            if meta.is_file():
                blobs["batches.meta"] = (meta.read_bytes(), str(meta))
            source = folder
            break
    if blobs is None:
        tar_path = _find_first([d / res.filename for d in folders])
        if tar_path is None:
            if not download:
                raise _missing_error("cifar10", split, folders, [res])
            try:
                tar_path = download_file(res, roots[0], progress=progress)
            except DatasetNotFoundError as e:
                raise _missing_error("cifar10", split, folders, [res], cause=str(e)) from None
        blobs = _read_cifar_tar(tar_path, wanted)
        source = tar_path
    parts = [_cifar_batch(*blobs[b]) for b in wanted]
    classes = CIFAR10_CLASSES
    if "batches.meta" in blobs:
        meta = _unpickle(*blobs["batches.meta"])
        names = meta.get("label_names")
        if not isinstance(names, list) or len(names) != 10:
            raise DatasetError(f"{blobs['batches.meta'][1]}: expected 10 label_names, got {names!r}")
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else np.ascontiguousarray(parts[0][0])
    labels = np.concatenate([p[1] for p in parts])
    return Dataset(images, labels, classes, name="cifar10", split=split, mean=CIFAR10_MEAN,
                   std=CIFAR10_STD, augmentation="crop-flip", source=source)


def _read_cifar_tar(path: Path, wanted: list[str]) -> dict[str, tuple[bytes, str]]:
    out: dict[str, tuple[bytes, str]] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and (base in wanted or base == "batches.meta"):
                    f = tar.extractfile(member)
                    out[base] = (f.read(), f"{path}:{member.name}")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: corrupt or truncated tar.gz ({e})") from None
    missing = [b for b in wanted if b not in out]
    if missing:
        raise DatasetError(f"{path}: missing {', '.join(missing)}; expected "
                           f"cifar-10-batches-py/{{data_batch_1..5, test_batch, batches.meta}}")
    return out


# --------------------------------------------------------------------------------------
# SVHN cropped digits (.mat)
# --------------------------------------------------------------------------------------

def _load_svhn(split: str, data_dir, download: bool, progress: bool) -> Dataset:
    if split not in ("train", "test", "extra"):
        raise ValueError(f"split: svhn has splits 'train', 'test' and 'extra', got {split!r}")
    fname = f"{split}_32x32.mat"
    roots = data_roots(data_dir)
    folders = [d for r in roots for d in (r / "svhn", r / "SVHN", r)]
    res = RESOURCES["svhn"][fname]
    path = _find_first([d / fname for d in folders])
    if path is None:
        if not download:
            raise _missing_error("svhn", split, folders, [res])
        try:
            path = download_file(res, roots[0] / "svhn", progress=progress)
        except DatasetNotFoundError as e:
            raise _missing_error("svhn", split, folders, [res], cause=str(e)) from None
    import scipy.io
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises many types for bad files
        raise DatasetError(f"{path}: not a readable MATLAB v5 file ({type(e).__name__}: {e})") from None
    if "X" not in mat or "y" not in mat:
        raise DatasetError(f"{path}: expected variables 'X' and 'y', got "
                           f"{sorted(k for k in mat if not k.startswith('__'))}")
    x, y = mat["X"], np.asarray(mat["y"])
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DatasetError(f"{path}: 'X' must be uint8 of shape (32, 32, 3, N), got {x.dtype} {x.shape}")
    y = y.reshape(-1)
    if y.shape[0] != x.shape[3]:
        raise DatasetError(f"{path}: {x.shape[3]} images but {y.shape[0]} labels; expected equal counts")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() > 10):
        raise DatasetError(f"{path}: labels out of range [{y.min()}, {y.max()}], expected 1..10")
    y[y == 10] = 0  # SVHN writes digit 0 as label 10
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    return Dataset(images, y, [str(i) for i in range(10)], name="svhn", split=split, mean=HALF3,
                   std=HALF3, augmentation="none", source=path)


# --------------------------------------------------------------------------------------
# Decoded JPEG/PNG folders (Tiny-ImageNet, image folders) with an .npz cache
# --------------------------------------------------------------------------------------

_CACHE_VERSION = 1


def _fingerprint(files: list[Path], labels: np.ndarray, extra: str) -> str:
    h = hashlib.sha1()
    h.update(f"v{_CACHE_VERSION}|{extra}|".encode())
    for p in files:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(labels.tobytes())
    return h.hexdigest()


def _cache_paths(folder: Path, kind: str, split: str) -> list[Path]:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", split)
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    return [folder / f"eenet-{safe}.npz", decoded_cache_dir() / f"{kind}-{key}-{safe}.npz"]


def _read_cache(paths: list[Path], fingerprint: str) -> np.ndarray | None:
    for p in paths:
        if p.is_file():
            try:
                with np.load(p, allow_pickle=False) as z:
                    if str(z["fingerprint"]) == fingerprint:
                        return z["images"]
            except Exception:  # a stale or damaged cache is rebuilt, never fatal
                continue
    return None


def _writable(folder: Path) -> bool:
    """Whether eenet may add a file to ``folder``: the OS allows it *and* the folder's
    owner-write bit is set (root may write anywhere, but a folder made read-only, such as
    a shared data copy, must stay untouched)."""
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & stat.S_IWUSR)
    except OSError:
        return False


def _write_cache(paths: list[Path], fingerprint: str, images: np.ndarray) -> Path | None:
    for p in paths:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            if not _writable(p.parent):
                continue
            with atomic_open(p, "wb") as f:
                np.savez(f, images=images, fingerprint=np.array(fingerprint))
            return p
        except OSError:
            continue
    return None


def _decode_images(files: list[Path], size: tuple[int, int] | None, progress: bool,
                   desc: str) -> np.ndarray:
    """Decode image files into uint8 (N, C, H, W); C = 3 unless every image is grayscale.
    All images must have the same size (``size`` = (H, W) if given, else the first's)."""
    from PIL import Image
    n = len(files)
    out: np.ndarray | None = None
    gray = np.zeros(n, dtype=bool)
    it: Iterable = enumerate(files)
    bar = None
    if progress and n > 2000:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=n, desc=desc, unit="img", leave=False)
        except ImportError:
            bar = None
    try:
        for i, f in it:
            try:
                with Image.open(f) as im:
                    mode = im.mode
                    if mode in ("L", "1", "LA", "I;16", "I", "F"):
                        im = im.convert("L")
                        gray[i] = True
                    elif mode != "RGB":
                        im = im.convert("RGB")
                    a = np.asarray(im)
            except DatasetError:
                raise
            except Exception as e:  # PIL raises OSError, UnidentifiedImageError, SyntaxError...
                raise DatasetError(f"{f}: cannot decode image ({type(e).__name__}: {e})") from None
            if out is None:
                h, w = size if size is not None else a.shape[:2]
                out = np.empty((n, 3, h, w), dtype=np.uint8)
            if a.shape[:2] != out.shape[2:]:
                raise DatasetError(f"{f}: image is {a.shape[1]}x{a.shape[0]} (WxH), expected "
                                   f"{out.shape[3]}x{out.shape[2]} like the other images")
            if a.ndim == 2:
                out[i] = a[None]
            else:
                out[i] = a.transpose(2, 0, 1)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if out is None:
        h, w = size if size is not None else (0, 0)
        return np.empty((0, 3, h, w), dtype=np.uint8)
    if gray.all():
        return np.ascontiguousarray(out[:, :1])
    return out


def _decode_cached(folder: Path, kind: str, split: str, files: list[Path], labels: np.ndarray,
                   size: tuple[int, int] | None, cache: bool, progress: bool) -> tuple[np.ndarray, bool]:
    """Decoded images of ``files`` and whether they came from the cache."""
    if cache:
        fp = _fingerprint(files, labels, f"{kind}|{split}|{size}")
        paths = _cache_paths(folder, kind, split)
        images = _read_cache(paths, fp)
        if images is not None and images.shape[0] == len(files):
            return images, True
    images = _decode_images(files, size, progress, f"decoding {kind} {split}")
    if cache:
        _write_cache(paths, fp, images)
    return images, False


_IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _load_tiny_imagenet(split: str, data_dir, download: bool, progress: bool, cache: bool) -> Dataset:
    if split == "test":
        split = "val"  # the test set's labels were never released; the paper tests on val
    if split not in ("train", "val"):
        raise ValueError(f"split: tiny-imagenet has splits 'train' and 'val' ('test' = 'val'), got {split!r}")
    roots = data_roots(data_dir)
    folders = [d for r in roots for d in (r / "tiny-imagenet-200", r)]
    root = next((d for d in folders if (d / "wnids.txt").is_file()), None)
    res = RESOURCES["tiny-imagenet"]["tiny-imagenet-200.zip"]
    if root is None:
        if not download:
            raise _missing_error("tiny-imagenet", split, folders, [res],
                                 extra="(expected tiny-imagenet-200/wnids.txt, train/, val/)")
        try:
            zpath = download_file(res, roots[0], progress=progress)
        except DatasetNotFoundError as e:
            raise _missing_error("tiny-imagenet", split, folders, [res], cause=str(e)) from None
        root = _extract_zip(zpath, roots[0], "tiny-imagenet-200")
    wnids_path = root / "wnids.txt"
    wnids = [w.strip() for w in wnids_path.read_text().split() if w.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DatasetError(f"{wnids_path}: {len(wnids)} class ids ({len(set(wnids))} distinct), expected "
                           f"200 distinct WordNet ids, one per line")
    index = {w: i for i, w in enumerate(wnids)}
    files: list[Path] = []
    labels: list[int] = []
    if split == "train":
        for w in wnids:
            d = root / "train" / w / "images"
            if not d.is_dir():
                raise DatasetError(f"{d}: missing class folder for {w} (listed in {wnids_path})")
            imgs = sorted((p for p in d.iterdir() if p.suffix.lower() in _IMAGE_EXTS), key=_natural_key)
            if not imgs:
                raise DatasetError(f"{d}: no images for class {w}")
            files += imgs
            labels += [index[w]] * len(imgs)
    else:
        ann = root / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise DatasetError(f"{ann}: missing; expected '<file>\\t<wnid>\\t<box>' lines for val/images")
        img_dir = root / "val" / "images"
        for lineno, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            if len(parts) < 2 or parts[1] not in index:
                raise DatasetError(f"{ann}:{lineno}: expected '<file> <wnid> ...' with a wnid from "
                                   f"wnids.txt, got {line!r}")
            p = img_dir / parts[0]
            if not p.is_file():
                raise DatasetError(f"{ann}:{lineno}: image {p} does not exist")
            files.append(p)
            labels.append(index[parts[1]])
    y = np.asarray(labels, dtype=np.int64)
    images, _ = _decode_cached(root, "tiny-imagenet", split, files, y, (64, 64), cache, progress)
    if images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    return Dataset(images, y, wnids, name="tiny-imagenet", split=split, mean=HALF3, std=HALF3,
                   augmentation="flip", source=root)


def _extract_zip(zpath: Path, dest: Path, top: str) -> Path:
    """Extract ``zpath`` (which holds ``top/``) into ``dest`` through a temporary folder
    so a half-extracted tree never looks complete."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        try:
            with zipfile.ZipFile(zpath) as z:
                z.extractall(tmp)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise DatasetError(f"{zpath}: corrupt zip file ({e})") from None
        if not (tmp / top).is_dir():
            raise DatasetError(f"{zpath}: expected a top-level folder {top}/")
        os.replace(tmp / top, dest / top)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / top


def _load_imagefolder(split: str, data_dir, cache: bool, progress: bool, *, name: str = "imagefolder",
                      mean=None, std=None, augmentation: str = "none",
                      subdirs: tuple[str, ...] = ()) -> Dataset:
    if data_dir is None and not subdirs:
        raise ValueError("imagefolder: pass data_dir=<root> holding <split>/<class>/*.jpg|png")
    roots = data_roots(data_dir)
    cands = [r / s for r in roots for s in subdirs] + roots
    root = next((c for c in cands if (c / split).is_dir()), None)
    if root is None:
        raise DatasetNotFoundError(
            f"{name} ({split}): no folder '{split}/<class>/' under any of: "
            + ", ".join(str(c) for c in cands)
            + ". Expected <root>/<split>/<class>/*.jpg|png.")
    split_dir = root / split
    # Classes are the union over all splits so labels mean the same in train and test.
    all_classes: set[str] = set()
    for sd in root.iterdir():
        if sd.is_dir() and not sd.name.startswith("."):
            sub = [c.name for c in sd.iterdir() if c.is_dir() and not c.name.startswith(".")]
            if sub:
                all_classes.update(sub)
    classes = sorted(all_classes)
    if not classes:
        raise DatasetError(f"{split_dir}: no class folders; expected {split_dir}/<class>/*.jpg|png")
    files: list[Path] = []
    labels: list[int] = []
    for k, c in enumerate(classes):
        d = split_dir / c
        if not d.is_dir():
            raise DatasetError(f"{d}: missing class folder '{c}' (present in another split of {root}); "
                               f"expected one folder per class in every split")
        imgs = sorted((p for p in d.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_EXTS),
                      key=_natural_key)
        if not imgs:
            raise DatasetError(f"{d}: class folder '{c}' holds no .jpg/.png images")
        files += imgs
        labels += [k] * len(imgs)
    y = np.asarray(labels, dtype=np.int64)
    images, _ = _decode_cached(root, name, split, files, y, None, cache, progress)
    c = images.shape[1]
    return Dataset(images, y, classes, name=name, split=split,
                   mean=mean if mean is not None else (0.5,) * c,
                   std=std if std is not None else (0.5,) * c,
                   augmentation=augmentation, source=split_dir)


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------

_ALIASES = {
    "mnist": "mnist", "fashion-mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist", "cifar10": "cifar10", "cifar-10": "cifar10", "svhn": "svhn",
    "tiny-imagenet": "tiny-imagenet", "tinyimagenet": "tiny-imagenet",
    "tiny-imagenet-200": "tiny-imagenet", "imagefolder": "imagefolder",
    "image-folder": "imagefolder", "cifar10-jpeg": "cifar10-jpeg", "cifar-10-jpeg": "cifar10-jpeg",
}


#: Canonical dataset names accepted by :func:`load`.
NAMES = ("mnist", "fashion-mnist", "cifar10", "svhn", "tiny-imagenet", "cifar10-jpeg", "imagefolder")


def names() -> list[str]:
    """Canonical dataset names accepted by :func:`load`."""
    return list(NAMES)


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a dataset without reading its files."""
    name: str
    input_shape: tuple[int, int, int]   # (C, H, W)
    num_classes: int
    splits: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: str


_INFO = {
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, ("train", "test"), MNIST_MEAN, MNIST_STD, "none"),
    "fashion-mnist": DatasetInfo("fashion-mnist", (1, 28, 28), 10, ("train", "test"), FASHION_MEAN,
                                 FASHION_STD, "none"),
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), 10, ("train", "test"), CIFAR10_MEAN, CIFAR10_STD,
                           "crop-flip"),
    "svhn": DatasetInfo("svhn", (3, 32, 32), 10, ("train", "test", "extra"), HALF3, HALF3, "none"),
    "tiny-imagenet": DatasetInfo("tiny-imagenet", (3, 64, 64), 200, ("train", "val", "test"), HALF3,
                                 HALF3, "flip"),
    "cifar10-jpeg": DatasetInfo("cifar10-jpeg", (3, 32, 32), 10, ("train", "test"), CIFAR10_MEAN,
                                CIFAR10_STD, "crop-flip"),
}


def info(name: str) -> DatasetInfo:
    """Shape, classes, splits and preprocessing of dataset ``name`` without reading files.
    Raises KeyError for ``imagefolder`` (known only once read) and unknown names."""
    key = _ALIASES.get(name.strip().lower().replace("_", "-"))
    if key not in _INFO:
        raise KeyError(f"dataset {name!r}: shape unknown before loading; known: {', '.join(_INFO)}")
    return _INFO[key]


def canonical_name(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    if key not in _ALIASES:
        raise ValueError(f"dataset: unknown name {name!r}; expected one of {', '.join(names())}")
    return _ALIASES[key]


def load(name: str, split: str = "train", data_dir: str | os.PathLike | None = None, *,
         download: bool = True, cache: bool = True, progress: bool = True) -> Dataset:
    """Load dataset ``name``'s ``split`` as a :class:`Dataset` (uint8 images in memory).

    Args:
        name: ``mnist``, ``fashion-mnist``, ``cifar10``, ``svhn``, ``tiny-imagenet``,
            ``cifar10-jpeg`` or ``imagefolder`` (case and ``_``/``-`` insensitive).
        split: ``train``/``test`` (SVHN also ``extra``; Tiny-ImageNet ``val``, with
            ``test`` an alias; image folders: any sub-folder name).
        data_dir: the data root (or the dataset's own folder); default ``$EENET_DATA``,
            then the per-user cache, then system locations.
        download: fetch missing official files (MD5-checked) into the first data root.
        cache: use/write the decoded-array cache of JPEG datasets.
        progress: show tqdm progress bars for downloads and long decodes.

    Raises:
        DatasetNotFoundError: files absent and not downloadable (names files, MD5s, URLs).
        DatasetError: a corrupt, truncated or inconsistent file (names the file).
    """
    key = canonical_name(name)
    if key in ("mnist", "fashion-mnist"):
        return _load_idx_dataset(key, split, data_dir, download, progress)
    if key == "cifar10":
        return _load_cifar10(split, data_dir, download, progress)
    if key == "svhn":
        return _load_svhn(split, data_dir, download, progress)
    if key == "tiny-imagenet":
        return _load_tiny_imagenet(split, data_dir, download, progress, cache)
    if key == "cifar10-jpeg":
        return _load_imagefolder(split, data_dir, cache, progress, name="cifar10-jpeg",
                                 mean=CIFAR10_MEAN, std=CIFAR10_STD, augmentation="crop-flip",
                                 subdirs=("cifar10/jpeg-lossy", "cifar10-jpeg", "jpeg-lossy"))
    return _load_imagefolder(split, data_dir, cache, progress)


def download(name: str, data_dir: str | os.PathLike | None = None, *, progress: bool = True) -> list[Path]:
    """Download every official file of dataset ``name`` into the first data root
    (skipping files already there) and return their paths."""
    key = canonical_name(name)
    if key not in RESOURCES:
        raise ValueError(f"dataset: {name!r} has no official download")
    sub = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "svhn": "svhn"}.get(key, "")
    folder = data_roots(data_dir)[0] / sub
    return [download_file(r, folder, progress=progress) for r in RESOURCES[key].values()]


def verify(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Check the official files of ``name`` found under the data roots against their
    MD5s. Returns {path: md5} of the files checked; raises :class:`DatasetError` on a
    mismatch and :class:`DatasetNotFoundError` when none is present."""
    key = canonical_name(name)
    if key not in RESOURCES:
        raise ValueError(f"dataset: {name!r} has no official checksums")
    sub = {"mnist": ("mnist", "MNIST/raw"), "fashion-mnist": ("fashion-mnist", "FashionMNIST/raw"),
           "cifar10": ("cifar10",), "svhn": ("svhn",), "tiny-imagenet": ()}[key]
    roots = data_roots(data_dir)
    folders = [r / s for r in roots for s in sub] + roots
    checked: dict[str, str] = {}
    for r in RESOURCES[key].values():
        path = _find_first([f / r.filename for f in folders])
        if path is None:
            continue
        digest = _md5(path)
        if digest != r.md5:
            raise DatasetError(f"{path}: MD5 {digest}, expected {r.md5} (official {r.filename})")
        checked[str(path)] = digest
    if not checked:
        raise _missing_error(key, "all", folders, list(RESOURCES[key].values()))
    return checked
