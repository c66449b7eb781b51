"""Dataset loaders (eenet.datasets): real files, canonical formats written here, corrupt
variants, data roots and downloads."""
import gzip
import hashlib
import http.server
import io
import os
import pickle
import struct
import tarfile
import threading
import urllib.error

import numpy as np
import pytest

from conftest import FASHION_MNIST, SHARED_DATA
from eenet import datasets as D

MNIST_MD5 = {  # official, from ../shared/data/README.md
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]

requires_mnist = pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(),
                                    reason=f"{SHARED_DATA / 'mnist'} is absent")
requires_fashion = pytest.mark.skipif(
    not FASHION_MNIST.is_dir(),
    reason=f"{FASHION_MNIST} is absent (apt-get install dataset-fashion-mnist)")


@pytest.fixture(autouse=True)
def isolated_roots(tmp_path_factory, monkeypatch):
    """Keep every test away from the real user cache and $EENET_DATA."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.delenv("EENET_DATA", raising=False)
    monkeypatch.delenv("EENET_CACHE", raising=False)


# ---- writers of the canonical formats ------------------------------------------------

def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) \
        + arr.tobytes()


def write_idx_set(folder, n_train=12, n_test=7, gz=True, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        for stem, a in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)):
            raw = idx_bytes(a)
            if gz:
                (folder / (stem + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (folder / stem).write_bytes(raw)
        out[prefix] = (x, y)
    return out


# ---- real files ----------------------------------------------------------------------

@requires_mnist
def test_mnist_real_files_official_checksums():
    checked = D.verify("mnist", SHARED_DATA)
    assert {os.path.basename(p): m for p, m in checked.items()} == MNIST_MD5
    # Independent MD5 (hashlib on the raw bytes) agrees.
    for name, md5 in MNIST_MD5.items():
        assert hashlib.md5((SHARED_DATA / "mnist" / name).read_bytes()).hexdigest() == md5


@requires_mnist
def test_mnist_real_counts_shapes_labels():
    tr = D.load("mnist", "train", data_dir=SHARED_DATA)
    te = D.load("mnist", "test", data_dir=SHARED_DATA / "mnist")  # the dataset folder works too
    assert tr.images.shape == (60000, 1, 28, 28) and te.images.shape == (10000, 1, 28, 28)
    assert tr.images.dtype == np.uint8 and tr.labels.dtype == np.int64
    assert tr.images.flags.c_contiguous
    assert tr.classes == [str(i) for i in range(10)] and tr.split == "train" and te.split == "test"
    for d in (tr, te):
        np.testing.assert_array_equal(np.unique(d.labels), np.arange(10))
    # The first training labels of MNIST are 5 0 4 1 9 2 1 3 1 4.
    np.testing.assert_array_equal(tr.labels[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    # The normalisation constants are the training set's statistics.
    x = tr.images.astype(np.float64) / 255
    assert tr.mean == (0.1307,) and tr.std == (0.3081,)
    assert abs(x.mean() - 0.1307) < 5e-4 and abs(x.std() - 0.3081) < 5e-4


@requires_fashion
def test_fashion_mnist_system_location():
    tr = D.load("fashion-mnist", "train")  # found without configuration
    te = D.load("Fashion_MNIST", "test")
    assert tr.source == str(FASHION_MNIST)
    assert len(tr) == 60000 and len(te) == 10000 and tr.image_shape == (1, 28, 28)
    assert tr.classes[0] == "T-shirt/top" and tr.classes[9] == "Ankle boot"
    # Fashion-MNIST is balanced: 6,000 and 1,000 per class.
    np.testing.assert_array_equal(np.bincount(tr.labels), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(te.labels), np.full(10, 1000))
    x = tr.images.astype(np.float64) / 255
    assert abs(x.mean() - tr.mean[0]) < 5e-4 and abs(x.std() - tr.std[0]) < 5e-4


# ---- IDX written here ------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_idx_canonical_files(tmp_path, gz):
    ref = write_idx_set(tmp_path / "mnist", gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        d = D.load("mnist", split, data_dir=tmp_path, download=False)
        x, y = ref[prefix]
        np.testing.assert_array_equal(d.images[:, 0], x)
        np.testing.assert_array_equal(d.labels, y)
    # The same files under fashion-mnist/ load as Fashion-MNIST.
    os.rename(tmp_path / "mnist", tmp_path / "fashion-mnist")
    f = D.load("fashion-mnist", "train", data_dir=tmp_path, download=False)
    assert f.name == "fashion-mnist" and f.classes[1] == "Trouser"


def test_read_idx_other_types(tmp_path):
    a = np.arange(12, dtype=">i4").reshape(3, 4)
    p = tmp_path / "a.idx"
    p.write_bytes(struct.pack(">BBBB", 0, 0, 0x0C, 2) + struct.pack(">2I", 3, 4) + a.tobytes())
    got = D.read_idx(p)
    np.testing.assert_array_equal(got, a)
    assert got.dtype.isnative


@pytest.mark.parametrize("case", ["magic", "truncated", "trailing", "count", "label", "badgz",
                                  "truncgz"])
def test_idx_corrupt(tmp_path, case):
    folder = tmp_path / "mnist"
    write_idx_set(folder, gz=case in ("badgz", "truncgz"))
    img = folder / "train-images-idx3-ubyte"
    lab = folder / "train-labels-idx1-ubyte"
    if case == "magic":
        raw = bytearray(img.read_bytes())
        raw[3] = 1  # a labels header on the images file
        img.write_bytes(bytes(raw))
        match = r"train-images-idx3-ubyte: wrong magic number 0x00000801, expected 0x00000803"
    elif case == "truncated":
        img.write_bytes(img.read_bytes()[:-100])
        match = r"train-images-idx3-ubyte: truncated IDX file: 9324 bytes, expected 9424"
    elif case == "trailing":
        img.write_bytes(img.read_bytes() + b"\0")
        match = r"trailing data .* 9425 bytes, expected 9424"
    elif case == "count":
        lab.write_bytes(idx_bytes(np.zeros(11, np.uint8)))
        match = r"12 images but .*train-labels-idx1-ubyte has 11 labels"
    elif case == "label":
        lab.write_bytes(idx_bytes(np.full(12, 10, np.uint8)))
        match = r"train-labels-idx1-ubyte: label 10 out of range, expected 0..9"
    elif case == "badgz":
        (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
        match = r"train-images-idx3-ubyte.gz: corrupt or truncated gzip"
    else:
        p = folder / "train-images-idx3-ubyte.gz"
        p.write_bytes(p.read_bytes()[:200])
        match = r"train-images-idx3-ubyte.gz: corrupt or truncated gzip"
    with pytest.raises(D.DatasetError, match=match):
        D.load("mnist", "train", data_dir=tmp_path, download=False)


def test_missing_files_error_names_files_checksums_urls(tmp_path):
    with pytest.raises(D.DatasetNotFoundError) as e:
        D.load("mnist", "train", data_dir=tmp_path, download=False)
    msg = str(e.value)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        assert name in msg and MNIST_MD5[name] in msg
        assert "https://ossci-datasets.s3.amazonaws.com/mnist/" + name in msg
    assert str(tmp_path / "mnist") in msg
    assert not any(tmp_path.iterdir())  # nothing written into the user's folder


def test_unknown_name_and_split(tmp_path):
    with pytest.raises(ValueError, match="unknown name 'cifar100'"):
        D.load("cifar100")
    with pytest.raises(ValueError, match="split: mnist has splits"):
        D.load("mnist", "val", data_dir=tmp_path)


def test_data_root_resolution(tmp_path, monkeypatch):
    ref = write_idx_set(tmp_path / "env" / "mnist")
    monkeypatch.setenv("EENET_DATA", str(tmp_path / "env"))
    d = D.load("mnist", "test", download=False)
    np.testing.assert_array_equal(d.labels, ref["t10k"][1])
    assert D.data_roots() == [tmp_path / "env", D.user_cache_dir()]
    # An explicit data_dir wins over EENET_DATA.
    other = write_idx_set(tmp_path / "explicit" / "mnist", n_test=5, seed=1)
    d = D.load("mnist", "test", data_dir=tmp_path / "explicit", download=False)
    np.testing.assert_array_equal(d.labels, other["t10k"][1])
    # The per-user cache is searched after EENET_DATA.
    monkeypatch.delenv("EENET_DATA")
    cached = write_idx_set(D.user_cache_dir() / "mnist", n_test=3, seed=2)
    d = D.load("mnist", "test", download=False)
    np.testing.assert_array_equal(d.labels, cached["t10k"][1])


def test_dataset_object_validation():
    x = np.zeros((3, 1, 2, 2), np.uint8)
    with pytest.raises(TypeError, match="uint8"):
        D.Dataset(x.astype(np.float32), np.zeros(3, int))
    with pytest.raises(ValueError, match="2 labels for 3 images"):
        D.Dataset(x, np.zeros(2, int))
    with pytest.raises(ValueError, match=r"values in \[0, 2\)"):
        D.Dataset(x, np.array([0, 1, 2]), ["a", "b"])
    d = D.Dataset(x, np.array([0, 1, 1]))
    assert d.classes == ["0", "1"] and d.mean == (0.5,) and len(d.subset([2, 0])) == 2
