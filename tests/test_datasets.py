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

from conftest import FASHION_MNIST, SHARED_DATA, requires_fashion
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


def pixel_stats(images):
    """Mean and standard deviation of images / 255 (float64, via a histogram)."""
    hist = np.bincount(images.reshape(-1), minlength=256).astype(np.float64)
    v = np.arange(256) / 255.0
    mean = (hist * v).sum() / hist.sum()
    return mean, np.sqrt((hist * (v - mean) ** 2).sum() / hist.sum())


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
    mean, std = pixel_stats(tr.images)
    assert tr.mean == (0.1307,) and tr.std == (0.3081,)
    assert abs(mean - 0.1307) < 5e-4 and abs(std - 0.3081) < 5e-4


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
    mean, std = pixel_stats(tr.images)
    assert abs(mean - tr.mean[0]) < 5e-4 and abs(std - tr.std[0]) < 5e-4


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


# ---- CIFAR-10 python batches -------------------------------------------------------------

def cifar_batch(n, seed, protocol=2, override=None):
    rng = np.random.default_rng(seed)
    d = {b"batch_label": b"training batch", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
         b"labels": [int(v) for v in rng.integers(0, 10, n)], b"filenames": [b"x.png"] * n}
    d.update(override or {})
    return pickle.dumps(d, protocol=protocol), d


def write_cifar(folder, n=4, protocol=2):
    folder.mkdir(parents=True, exist_ok=True)
    ref = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        raw, d = cifar_batch(n + i, seed=i, protocol=protocol)
        (folder / name).write_bytes(raw)
        ref[name] = d
    meta = {b"label_names": [c.encode() for c in CIFAR_NAMES], b"num_cases_per_batch": 10000}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return ref


def check_cifar(d_train, d_test, ref):
    want_x = np.concatenate([ref[f"data_batch_{k}"][b"data"] for k in range(1, 6)])
    want_y = np.concatenate([ref[f"data_batch_{k}"][b"labels"] for k in range(1, 6)])
    assert d_train.images.shape == (want_x.shape[0], 3, 32, 32)
    np.testing.assert_array_equal(d_train.images.reshape(-1, 3072), want_x)
    np.testing.assert_array_equal(d_train.labels, want_y)
    # Channel planes: the first 1024 bytes of a row are the red 32x32 plane.
    np.testing.assert_array_equal(d_test.images[0, 0], ref["test_batch"][b"data"][0, :1024].reshape(32, 32))
    np.testing.assert_array_equal(d_test.labels, ref["test_batch"][b"labels"])
    assert d_train.classes == CIFAR_NAMES and d_train.augmentation == "crop-flip"
    assert d_train.mean == (0.4914, 0.4822, 0.4465) and d_train.std == (0.2023, 0.1994, 0.2010)


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar10_folder(tmp_path, protocol):
    ref = write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    check_cifar(D.load("cifar10", "train", tmp_path, download=False),
                D.load("cifar10", "test", tmp_path, download=False), ref)


def test_cifar10_tar_gz(tmp_path):
    ref = write_cifar(tmp_path / "src" / "cifar-10-batches-py")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    (tmp_path / "src" / "cifar-10-batches-py").rename(tmp_path / "elsewhere")
    tr = D.load("cifar10", "train", tmp_path, download=False)
    te = D.load("cifar10", "test", tmp_path, download=False)
    check_cifar(tr, te, ref)
    assert tr.source == str(tmp_path / "cifar-10-python.tar.gz")


@pytest.mark.parametrize("case", ["count", "shape", "keys", "range", "evil", "garbage", "tar",
                                  "tarmissing"])
def test_cifar10_corrupt(tmp_path, case):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    target = folder / "data_batch_3"
    if case == "count":
        raw, _ = cifar_batch(6, 0, override={b"labels": [0] * 5})
        match = r"data_batch_3: 6 images but 5 labels"
    elif case == "shape":
        raw, _ = cifar_batch(6, 0, override={b"data": np.zeros((6, 3000), np.uint8)})
        match = r"data_batch_3: b'data' must be uint8 \(N, 3072\), got uint8 \(6, 3000\)"
    elif case == "keys":
        raw = pickle.dumps({b"pixels": 1}, protocol=2)
        match = r"data_batch_3: expected keys b'data' and b'labels'"
    elif case == "range":
        raw, _ = cifar_batch(6, 0, override={b"labels": [0, 1, 2, 3, 4, 10]})
        match = r"data_batch_3: labels out of range \[0, 10\], expected 0..9"
    elif case == "evil":
        raw = pickle.dumps({b"data": os.getcwd}, protocol=2)  # a pickle naming a function
        match = r"data_batch_3: not a CIFAR-10 python batch .*posix.getcwd' is not allowed"
    elif case == "garbage":
        raw = b"this is not a pickle"
        match = r"data_batch_3: not a CIFAR-10 python batch"
    if case in ("tar", "tarmissing"):
        with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
            for f in sorted(folder.iterdir()):
                if case == "tar" or f.name != "test_batch":
                    tar.add(f, arcname="cifar-10-batches-py/" + f.name)
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
        p = tmp_path / "cifar-10-python.tar.gz"
        if case == "tar":
            p.write_bytes(p.read_bytes()[:5000])
            match = r"cifar-10-python.tar.gz: corrupt or truncated tar.gz"
            split = "train"
        else:
            match = r"cifar-10-python.tar.gz: missing test_batch"
            split = "test"
    else:
        target.write_bytes(raw)
        split = "train"
    with pytest.raises(D.DatasetError, match=match):
        D.load("cifar10", split, tmp_path, download=False)


# ---- SVHN .mat -------------------------------------------------------------------------

def write_svhn(folder, split="train", n=9, seed=0, **override):
    scipy_io = pytest.importorskip("scipy.io")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
    y[0, 0] = 10
    y[1, 0] = 3
    mat = {"X": x, "y": y}
    mat.update(override)
    scipy_io.savemat(folder / f"{split}_32x32.mat", mat, format="5")
    return x, y


@pytest.mark.parametrize("split", ["train", "test", "extra"])
def test_svhn_mat(tmp_path, split):
    x, y = write_svhn(tmp_path / "svhn", split)
    d = D.load("svhn", split, tmp_path, download=False)
    assert d.images.shape == (9, 3, 32, 32) and d.images.flags.c_contiguous
    # Sample n is X[:, :, :, n]; channel c of it is X[:, :, c, n] (rows, columns).
    for n in range(9):
        for c in range(3):
            np.testing.assert_array_equal(d.images[n, c], x[:, :, c, n])
    want = y[:, 0].astype(np.int64) % 10
    np.testing.assert_array_equal(d.labels, want)
    assert d.labels[0] == 0 and d.labels[1] == 3 and d.classes == [str(i) for i in range(10)]
    assert d.mean == (0.5, 0.5, 0.5) and d.std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("case", ["count", "nox", "shape", "range", "garbage", "truncated"])
def test_svhn_corrupt(tmp_path, case):
    folder = tmp_path / "svhn"
    p = folder / "train_32x32.mat"
    if case == "count":
        write_svhn(folder, y=np.ones((8, 1), np.uint8))
        match = r"train_32x32.mat: 9 images but 8 labels"
    elif case == "nox":
        scipy_io = pytest.importorskip("scipy.io")
        folder.mkdir(parents=True)
        scipy_io.savemat(p, {"y": np.ones((3, 1))})
        match = r"train_32x32.mat: expected variables 'X' and 'y'"
    elif case == "shape":
        write_svhn(folder, X=np.zeros((28, 28, 1, 9), np.uint8))
        match = r"'X' must be uint8 of shape \(32, 32, 3, N\), got uint8 \(28, 28, 1, 9\)"
    elif case == "range":
        write_svhn(folder, y=np.full((9, 1), 11, np.uint8))
        match = r"labels out of range \[11, 11\], expected 1..10"
    elif case == "garbage":
        folder.mkdir(parents=True)
        p.write_bytes(b"MATLAB? no" * 20)
        match = r"train_32x32.mat: not a readable MATLAB v5 file"
    else:
        write_svhn(folder)
        p.write_bytes(p.read_bytes()[:2000])
        match = r"train_32x32.mat: not a readable MATLAB v5 file"
    with pytest.raises(D.DatasetError, match=match):
        D.load("svhn", "train", tmp_path, download=False)


# ---- image files: Tiny-ImageNet layout and image folders -----------------------------------

def save_image(path, arr, fmt=None):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt, quality=95)


def write_tiny(root, wnids=("n01", "n02", "n03"), per_class=2, seed=0):
    """A small Tiny-ImageNet-200 tree; returns {path: (label, uint8 HWC or HW)}."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in wnids))
    written = {}
    for k, w in enumerate(wnids):
        (root / "train" / w / "images").mkdir(parents=True)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(per_class):
            arr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            if k == 1 and i == 0:
                arr = arr[:, :, 0]  # a grayscale JPEG, as in the real data
            p = root / "train" / w / "images" / f"{w}_{i}.JPEG"
            save_image(p, arr, "JPEG")
            written[p] = (k, arr)
    lines = []
    for i, k in enumerate([2, 0, 1, 2]):
        p = root / "val" / "images" / f"val_{i}.JPEG"
        arr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        save_image(p, arr, "JPEG")
        written[p] = (k, arr)
        lines.append(f"val_{i}.JPEG\t{wnids[k]}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return written


def decoded_reference(path):
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).transpose(2, 0, 1)


def snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in folder.rglob("*"))


def test_tiny_imagenet_layout(tmp_path, monkeypatch):
    root = tmp_path / "tiny-imagenet-200"
    write_tiny(root)
    os.chmod(root, 0o555)  # read-only like a shared copy: the cache must go elsewhere
    monkeypatch.setenv("EENET_CACHE", str(tmp_path / "cache"))
    before = snapshot(root)
    try:
        tr = D.load("tiny-imagenet", "train", tmp_path, download=False, progress=False)
        va = D.load("tiny-imagenet", "test", tmp_path, download=False, progress=False)
    finally:
        os.chmod(root, 0o755)
    assert snapshot(root) == before  # the user's folder is untouched
    assert tr.images.shape == (6, 3, 64, 64) and va.split == "val" and va.images.shape == (4, 3, 64, 64)
    assert tr.classes == ["n01", "n02", "n03"] and tr.augmentation == "flip"
    np.testing.assert_array_equal(tr.labels, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(va.labels, [2, 0, 1, 2])
    np.testing.assert_array_equal(va.images[1], decoded_reference(root / "val/images/val_1.JPEG"))
    gray = tr.images[2]  # n02_0 is grayscale: three equal channels
    np.testing.assert_array_equal(gray[0], gray[1])
    np.testing.assert_array_equal(gray[0], gray[2])
    assert len(list((tmp_path / "cache").glob("tiny-imagenet-*-train.npz"))) == 1


def test_decoded_cache_beside_data_and_invalidation(tmp_path, monkeypatch):
    root = tmp_path / "tiny-imagenet-200"
    write_tiny(root)
    first = D.load("tiny-imagenet", "val", root, download=False, progress=False)
    assert (root / "eenet-val.npz").is_file()  # writable folder: cached beside the data
    assert not list(root.glob("*.tmp"))

    def no_decode(*a, **k):
        raise AssertionError("decoded again although the cache is valid")

    real = D._decode_images
    monkeypatch.setattr(D, "_decode_images", no_decode)
    second = D.load("tiny-imagenet", "val", root, download=False, progress=False)
    np.testing.assert_array_equal(first.images, second.images)
    # Changing an image invalidates the cache.
    save_image(root / "val/images/val_0.JPEG", np.zeros((64, 64, 3), np.uint8), "JPEG")
    with pytest.raises(AssertionError, match="decoded again"):
        D.load("tiny-imagenet", "val", root, download=False, progress=False)
    monkeypatch.setattr(D, "_decode_images", real)
    third = D.load("tiny-imagenet", "val", root, download=False, progress=False)
    assert third.images[0].max() < 8 and not np.array_equal(third.images[0], first.images[0])
    # cache=False neither reads nor writes the cache.
    (root / "eenet-val.npz").unlink()
    D.load("tiny-imagenet", "val", root, download=False, progress=False, cache=False)
    assert not (root / "eenet-val.npz").exists()


@pytest.mark.parametrize("case", ["classdir", "wnid", "valimage", "truncated", "size", "annotations"])
def test_tiny_imagenet_corrupt(tmp_path, case):
    root = tmp_path / "tiny-imagenet-200"
    write_tiny(root)
    split = "train"
    if case == "classdir":
        for f in (root / "train" / "n02" / "images").iterdir():
            f.unlink()
        (root / "train" / "n02" / "images").rmdir()
        match = r"train/n02/images: missing class folder for n02 \(listed in .*wnids.txt\)"
    elif case == "wnid":
        with open(root / "val" / "val_annotations.txt", "a") as f:
            f.write("val_9.JPEG\tn99\t0\t0\t1\t1\n")
        match, split = r"val_annotations.txt:5: expected '<file> <wnid> ...' with a wnid", "val"
    elif case == "valimage":
        (root / "val" / "images" / "val_2.JPEG").unlink()
        match, split = r"val_annotations.txt:3: image .*val_2.JPEG does not exist", "val"
    elif case == "truncated":
        p = root / "train" / "n03" / "images" / "n03_1.JPEG"
        p.write_bytes(p.read_bytes()[:300])
        match = r"n03_1.JPEG: cannot decode image"
    elif case == "size":
        save_image(root / "train" / "n01" / "images" / "n01_1.JPEG", np.zeros((32, 64, 3), np.uint8))
        match = r"n01_1.JPEG: image is 64x32 \(WxH\), expected 64x64"
    else:
        (root / "val" / "val_annotations.txt").unlink()
        match, split = r"val_annotations.txt: missing", "val"
    with pytest.raises(D.DatasetError, match=match):
        D.load("tiny-imagenet", split, tmp_path, download=False, progress=False)


def write_imagefolder(root, seed=0):
    rng = np.random.default_rng(seed)
    pngs = {}
    for split in ("train", "test"):
        for c in ("cat", "dog", "emu"):
            for i in range(2):
                arr = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
                ext = "png" if (i == 0) else "jpg"
                if c == "emu" and i == 0:
                    arr = arr[:, :, 0]  # a grayscale PNG
                p = root / split / c / f"{i}.{ext}"
                save_image(p, arr)
                pngs[p] = arr
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return pngs


def test_imagefolder_png_jpg_gray(tmp_path):
    written = write_imagefolder(tmp_path / "pets")
    d = D.load("imagefolder", "train", tmp_path / "pets", progress=False)
    assert d.classes == ["cat", "dog", "emu"] and d.images.shape == (6, 3, 10, 12)
    np.testing.assert_array_equal(d.labels, [0, 0, 1, 1, 2, 2])
    # PNG is lossless: exact pixels; the grayscale PNG is repeated over RGB.
    np.testing.assert_array_equal(d.images[0], written[tmp_path / "pets/train/cat/0.png"].transpose(2, 0, 1))
    g = written[tmp_path / "pets/train/emu/0.png"]
    for c in range(3):
        np.testing.assert_array_equal(d.images[4, c], g)
    np.testing.assert_array_equal(d.images[1], decoded_reference(tmp_path / "pets/train/cat/1.jpg"))
    assert d.mean == (0.5, 0.5, 0.5) and d.augmentation == "none"
    assert D.load("imagefolder", "test", tmp_path / "pets", progress=False).images.shape == (6, 3, 10, 12)


def test_imagefolder_all_gray_is_one_channel(tmp_path):
    for c in ("a", "b"):
        save_image(tmp_path / "train" / c / "0.png", np.full((5, 5), 7 if c == "a" else 9, np.uint8))
    d = D.load("imagefolder", "train", tmp_path, progress=False)
    assert d.images.shape == (2, 1, 5, 5) and d.mean == (0.5,)
    assert d.images[1].min() == 9


@pytest.mark.parametrize("case", ["classdir", "empty", "size", "corrupt", "nosplit", "nodir"])
def test_imagefolder_errors(tmp_path, case):
    root = tmp_path / "pets"
    write_imagefolder(root)
    err, split = D.DatasetError, "test"
    if case == "classdir":
        for f in (root / "test" / "dog").iterdir():
            f.unlink()
        (root / "test" / "dog").rmdir()
        match = r"test/dog: missing class folder 'dog' \(present in another split"
    elif case == "empty":
        for f in (root / "test" / "dog").iterdir():
            f.unlink()
        match = r"test/dog: class folder 'dog' holds no .jpg/.png images"
    elif case == "size":
        save_image(root / "test" / "emu" / "1.jpg", np.zeros((11, 12, 3), np.uint8))
        match = r"emu/1.jpg: image is 12x11 \(WxH\), expected 12x10"
    elif case == "corrupt":
        (root / "test" / "dog" / "1.jpg").write_bytes(b"\xff\xd8\xff garbage")
        match = r"dog/1.jpg: cannot decode image"
    elif case == "nosplit":
        err, split, match = D.DatasetNotFoundError, "val", r"no folder 'val/<class>/'"
    else:
        with pytest.raises(ValueError, match="pass data_dir"):
            D.load("imagefolder", "train")
        return
    with pytest.raises(err, match=match):
        D.load("imagefolder", split, root, progress=False)


CIFAR_JPEG = SHARED_DATA / "cifar10" / "jpeg-lossy"
TINY = SHARED_DATA / "tiny-imagenet-200"
requires_cifar_jpeg = pytest.mark.skipif(not CIFAR_JPEG.is_dir(), reason=f"{CIFAR_JPEG} is absent")
requires_tiny = pytest.mark.skipif(not TINY.is_dir(), reason=f"{TINY} is absent")


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    """One decoded-array cache for the real JPEG datasets of this module."""
    return tmp_path_factory.mktemp("eenet-cache")


@requires_cifar_jpeg
def test_cifar10_jpeg_copy_through_imagefolder(real_cache, monkeypatch):
    monkeypatch.setenv("EENET_CACHE", str(real_cache))
    before = snapshot(CIFAR_JPEG.parent)
    te = D.load("imagefolder", "test", data_dir=CIFAR_JPEG, progress=False)
    assert te.images.shape == (10000, 3, 32, 32) and te.classes == CIFAR_NAMES
    np.testing.assert_array_equal(np.bincount(te.labels), np.full(10, 1000))
    np.testing.assert_array_equal(te.images[0], decoded_reference(CIFAR_JPEG / "test/airplane/0000.jpg"))
    # The named variant: same pixels, CIFAR-10's constants and augmentation.
    named = D.load("cifar10-jpeg", "test", data_dir=SHARED_DATA, progress=False)
    np.testing.assert_array_equal(named.images, te.images)
    assert named.mean == (0.4914, 0.4822, 0.4465) and named.augmentation == "crop-flip"
    assert snapshot(CIFAR_JPEG.parent) == before


@requires_cifar_jpeg
@pytest.mark.slow
def test_cifar10_jpeg_train_split(real_cache, monkeypatch):
    monkeypatch.setenv("EENET_CACHE", str(real_cache))
    tr = D.load("cifar10-jpeg", "train", data_dir=SHARED_DATA, progress=False)
    assert tr.images.shape == (20000, 3, 32, 32) and tr.classes == CIFAR_NAMES
    np.testing.assert_array_equal(np.bincount(tr.labels), np.full(10, 2000))
    np.testing.assert_array_equal(tr.images[2000 * 3 + 17],
                                  decoded_reference(CIFAR_JPEG / "train/cat/0017.jpg"))


@requires_tiny
def test_tiny_imagenet_real(real_cache, monkeypatch):
    monkeypatch.setenv("EENET_CACHE", str(real_cache))
    before = snapshot(TINY)
    va = D.load("tiny-imagenet", "val", data_dir=SHARED_DATA, progress=False)
    wnids = (TINY / "wnids.txt").read_text().split()
    assert len(wnids) == 200 and va.classes == wnids
    assert va.images.shape == (10000, 3, 64, 64) and va.images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(va.labels, minlength=200), np.full(200, 50))
    first = (TINY / "val" / "val_annotations.txt").read_text().split("\n")[0].split("\t")
    assert va.labels[0] == wnids.index(first[1])
    np.testing.assert_array_equal(va.images[0], decoded_reference(TINY / "val" / "images" / first[0]))
    tr = D.load("tiny-imagenet", "train", data_dir=TINY, progress=False)
    assert tr.images.shape == (10000, 3, 64, 64)
    np.testing.assert_array_equal(np.bincount(tr.labels, minlength=200), np.full(200, 50))
    p = TINY / "train" / wnids[7] / "images" / f"{wnids[7]}_3.JPEG"
    np.testing.assert_array_equal(tr.images[7 * 50 + 3], decoded_reference(p))
    assert snapshot(TINY) == before


# ---- downloads ---------------------------------------------------------------------------

class _Server:
    """A local HTTP server with Range support serving ``files`` {path: bytes}."""

    def __init__(self, honour_range=True):
        self.files = {}
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                body = outer.files.get(self.path)
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def resource(server, name, body, md5=None, size=None):
    server.files["/" + name] = body
    return D.Resource(name, md5 or hashlib.md5(body).hexdigest(), (server.url + "/" + name,), size)


def test_download_file_checks_md5(tmp_path, server):
    body = os.urandom(300_000)
    r = resource(server, "blob.bin", body)
    p = D.download_file(r, tmp_path / "dl", progress=False)
    assert p.read_bytes() == body and not (tmp_path / "dl" / "blob.bin.part").exists()
    bad = resource(server, "bad.bin", body, md5="0" * 32)
    with pytest.raises(D.DatasetError, match=r"bad.bin: downloaded from .*: MD5 [0-9a-f]{32} "
                                             r"\(300000 bytes\), expected 0{32}"):
        D.download_file(bad, tmp_path / "dl", progress=False)
    assert not (tmp_path / "dl" / "bad.bin").exists() and not (tmp_path / "dl" / "bad.bin.part").exists()
    # A mirror serving a wrong file is skipped for the next one.
    server.files["/wrong.bin"] = b"x" * 1000
    r2 = D.Resource("good.bin", r.md5, (server.url + "/wrong.bin", server.url + "/blob.bin"))
    assert D.download_file(r2, tmp_path / "dl", progress=False).read_bytes() == body


@pytest.mark.parametrize("honour_range", [True, False])
def test_download_resumes_part_file(tmp_path, honour_range):
    s = _Server(honour_range=honour_range)
    try:
        body = os.urandom(200_000)
        r = resource(s, "big.bin", body, size=len(body))
        (tmp_path / "big.bin.part").write_bytes(body[:123_456])
        p = D.download_file(r, tmp_path, progress=True)
        assert p.read_bytes() == body
        assert s.requests == [("/big.bin", "bytes=123456-")]
        # A complete part file is only checked, not fetched again.
        (tmp_path / "big.bin").rename(tmp_path / "big.bin.part")
        s.requests.clear()
        D.download_file(r, tmp_path, progress=False)
        assert s.requests == [] and (tmp_path / "big.bin").read_bytes() == body
    finally:
        s.close()


def test_download_file_url_and_mirror_fallback(tmp_path, server):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc" * 1000)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    r = D.Resource("x.bin", md5, (server.url + "/missing", src.as_uri()))
    assert D.download_file(r, tmp_path / "out", progress=False).read_bytes() == src.read_bytes()


def test_load_downloads_missing_mnist(tmp_path, server, monkeypatch):
    src = tmp_path / "src"
    ref = write_idx_set(src / "mnist")
    table = {f.name: resource(server, f.name, f.read_bytes()) for f in (src / "mnist").iterdir()}
    monkeypatch.setitem(D.RESOURCES, "mnist", table)
    d = D.load("mnist", "test", data_dir=tmp_path / "root", progress=False)
    np.testing.assert_array_equal(d.labels, ref["t10k"][1])
    assert sorted(p.name for p in (tmp_path / "root" / "mnist").iterdir()) == \
        ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    # D.download fetches the rest.
    paths = D.download("mnist", tmp_path / "root", progress=False)
    assert len(paths) == 4 and len(list((tmp_path / "root" / "mnist").iterdir())) == 4


def test_load_downloads_cifar_tar(tmp_path, server, monkeypatch):
    ref = write_cifar(tmp_path / "src" / "cifar-10-batches-py")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setitem(D.RESOURCES, "cifar10", {"cifar-10-python.tar.gz": resource(server, "cifar-10-python.tar.gz", buf.getvalue())})
    check_cifar(D.load("cifar10", "train", tmp_path / "root", progress=False),
                D.load("cifar10", "test", tmp_path / "root", progress=False), ref)


def test_load_downloads_and_extracts_tiny_zip(tmp_path, server, monkeypatch):
    import zipfile
    write_tiny(tmp_path / "src" / "tiny-imagenet-200")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted((tmp_path / "src").rglob("*")):
            z.write(p, p.relative_to(tmp_path / "src"))
    monkeypatch.setitem(D.RESOURCES, "tiny-imagenet",
                        {"tiny-imagenet-200.zip": resource(server, "tiny-imagenet-200.zip", buf.getvalue())})
    d = D.load("tiny-imagenet", "val", tmp_path / "root", progress=False)
    assert len(d) == 4 and (tmp_path / "root" / "tiny-imagenet-200" / "wnids.txt").is_file()
    assert not [p for p in (tmp_path / "root").iterdir() if p.name.startswith(".extract")]


def test_no_network_error_names_files_checksums_urls(tmp_path, monkeypatch):
    def offline(request, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(D, "_urlopen", offline)
    with pytest.raises(D.DatasetNotFoundError) as e:
        D.load("svhn", "extra", tmp_path, progress=False)
    msg = str(e.value)
    assert "extra_32x32.mat" in msg and "a93ce644f1a588dc4d68dda5feec44a7" in msg
    assert "http://ufldl.stanford.edu/housenumbers/extra_32x32.mat" in msg
    assert "Name or service not known" in msg and str(tmp_path / "svhn") in msg
    with pytest.raises(D.DatasetNotFoundError, match=r"c58f30108f718f92721af3b95e74349a"):
        D.load("cifar10", "train", tmp_path, progress=False)
    with pytest.raises(D.DatasetNotFoundError, match=r"90528d7ca1a48142e341f4ef8d21d0de"):
        D.load("tiny-imagenet", "train", tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_verify_detects_bad_checksum(tmp_path):
    write_idx_set(tmp_path / "mnist")
    with pytest.raises(D.DatasetError, match=r"train-images-idx3-ubyte.gz: MD5 [0-9a-f]{32}, "
                                             r"expected f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        D.verify("mnist", tmp_path)


def test_import_eenet_stays_light():
    import subprocess
    import sys
    code = ("import sys, eenet, eenet.datasets, eenet.data; "
            "print([m for m in ('PIL', 'scipy', 'tqdm') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "[]"


def test_info_matches_loaded_data(tmp_path):
    write_idx_set(tmp_path / "mnist")
    d = D.load("mnist", "train", tmp_path, download=False)
    i = D.info("MNIST")
    assert i.input_shape == d.input_shape == (1, 28, 28) and i.num_classes == d.num_classes
    assert (i.mean, i.std, i.augmentation) == (d.mean, d.std, d.augmentation)
    assert D.info("tiny_imagenet").num_classes == 200 and D.info("cifar10").input_shape == (3, 32, 32)
    assert set(D.NAMES) >= {"mnist", "fashion-mnist", "cifar10", "svhn", "tiny-imagenet"}
    with pytest.raises(KeyError):
        D.info("imagefolder")
    with pytest.raises(KeyError):
        D.info("cifar100")


def test_interrupted_download_keeps_part_for_resume(tmp_path, monkeypatch):
    import http.client
    body = os.urandom(50_000)

    class Dropped(io.BytesIO):
        status, headers = 200, {"Content-Length": str(len(body))}

        def read(self, n=-1):
            if self.tell() >= 20_000:
                raise http.client.IncompleteRead(b"")
            return super().read(min(n, 20_000 - self.tell()))

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(D, "_urlopen", lambda req, timeout: Dropped(body))
    r = D.Resource("cut.bin", hashlib.md5(body).hexdigest(), ("http://example.invalid/cut.bin",))
    with pytest.raises(D.DatasetNotFoundError, match=r"could not download cut.bin \(MD5 [0-9a-f]{32}\)"):
        D.download_file(r, tmp_path, progress=False)
    assert (tmp_path / "cut.bin.part").read_bytes() == body[:20_000]
    seen = []

    class Rest(io.BytesIO):
        status, headers = 206, {"Content-Length": str(len(body) - 20_000)}

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    def resume(req, timeout):
        seen.append(req.get_header("Range"))
        return Rest(body[20_000:])

    monkeypatch.setattr(D, "_urlopen", resume)
    assert D.download_file(r, tmp_path, progress=False).read_bytes() == body
    assert seen == ["bytes=20000-"]
