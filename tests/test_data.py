"""Preprocessing, batch iteration and validation splits (eenet.data)."""
import gc
import threading

import numpy as np
import pytest

from eenet import data
from eenet.datasets import CIFAR10_MEAN, CIFAR10_STD, Dataset


def make_dataset(n=37, c=3, h=8, w=8, k=5, augmentation="crop-flip", seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, c, h, w), dtype=np.uint8)
    labels = rng.integers(0, k, size=n)
    return Dataset(images, labels, [f"c{i}" for i in range(k)], name="synthetic",
                   mean=CIFAR10_MEAN[:c], std=CIFAR10_STD[:c], augmentation=augmentation)


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("eenet-prefetch")]


# ---- reference implementations (slow, per pixel, float64) --------------------------

def ref_normalize(u8, mean, std):
    out = np.empty(u8.shape, dtype=np.float64)
    for c in range(u8.shape[1]):
        out[:, c] = (u8[:, c] / 255.0 - mean[c]) / std[c]
    return out


def ref_crop_flip(u8, oy, ox, flip, pad):
    b, c, h, w = u8.shape
    out = np.zeros_like(u8)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                sx = (w - 1 - x) if flip[i] else x  # flip after the crop
                py, px = oy[i] + y - pad, ox[i] + sx - pad  # position in the unpadded image
                if 0 <= py < h and 0 <= px < w:
                    out[i, :, y, x] = u8[i, :, py, px]
    return out


def test_normalize_matches_reference(rng):
    u8 = rng.integers(0, 256, size=(4, 3, 5, 6), dtype=np.uint8)
    got = data.normalize(u8, CIFAR10_MEAN, CIFAR10_STD)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == u8.shape
    np.testing.assert_allclose(got, ref_normalize(u8, CIFAR10_MEAN, CIFAR10_STD), rtol=1e-6, atol=1e-6)


def test_normalize_errors():
    with pytest.raises(TypeError, match="uint8"):
        data.normalize(np.zeros((1, 3, 2, 2), np.float32), CIFAR10_MEAN, CIFAR10_STD)
    with pytest.raises(ValueError, match="expected 1 values"):
        data.normalize(np.zeros((1, 1, 2, 2), np.uint8), CIFAR10_MEAN, CIFAR10_STD)


def test_crop_flip_matches_reference(rng):
    u8 = rng.integers(1, 256, size=(40, 3, 7, 9), dtype=np.uint8)
    oy = rng.integers(0, 9, size=40)
    ox = rng.integers(0, 9, size=40)
    flip = rng.random(40) < 0.5
    # Include the extreme offsets and both flip states.
    oy[:4], ox[:4], flip[:4] = [0, 8, 0, 8], [0, 8, 8, 0], [False, True, True, False]
    got = data.crop_flip(u8, oy, ox, flip, pad=4)
    np.testing.assert_array_equal(got, ref_crop_flip(u8, oy, ox, flip, 4))
    # Centre offset without flip is the identity; padding shows as zeros elsewhere.
    same = data.crop_flip(u8, np.full(40, 4), np.full(40, 4), np.zeros(40, bool), pad=4)
    np.testing.assert_array_equal(same, u8)
    assert (got[0, :, :4, :] == 0).all() and (got[0, :, :, :4] == 0).all()


def test_hflip(rng):
    u8 = rng.integers(0, 256, size=(6, 3, 4, 5), dtype=np.uint8)
    flip = np.array([True, False, True, False, False, True])
    got = data.hflip(u8, flip)
    for i in range(6):
        np.testing.assert_array_equal(got[i], u8[i, :, :, ::-1] if flip[i] else u8[i])


def test_augment_params_deterministic_and_distributed():
    a = data.augment_params(5000, "crop-flip", seed=3, epoch=2)
    b = data.augment_params(5000, "crop-flip", seed=3, epoch=2)
    c = data.augment_params(5000, "crop-flip", seed=3, epoch=3)
    np.testing.assert_array_equal(a.oy, b.oy)
    np.testing.assert_array_equal(a.flip, b.flip)
    assert not np.array_equal(a.oy, c.oy)
    assert set(np.unique(a.oy)) == set(range(9)) and set(np.unique(a.ox)) == set(range(9))
    assert 0.45 < a.flip.mean() < 0.55
    f = data.augment_params(100, "flip", seed=0, epoch=0)
    assert f.pad == 0 and (f.oy == 0).all()
    assert data.augment_params(10, "none", 0, 0) is None


def test_iterator_covers_every_sample_once():
    ds = make_dataset(n=37)
    it = data.BatchIterator(ds, batch_size=8, shuffle=True, seed=5)
    assert len(it) == 5
    for _ in range(2):
        seen = []
        sizes = []
        for x, y, idx in it:
            assert x.dtype == np.float32 and x.flags.c_contiguous and x.shape[1:] == (3, 8, 8)
            assert y.dtype == np.int64 and idx.dtype == np.int64
            np.testing.assert_array_equal(y, ds.labels[idx])
            seen.append(idx)
            sizes.append(len(idx))
        assert sizes == [8, 8, 8, 8, 5]
        np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(37))
    assert it.next_epoch == 2


def test_iterator_values_are_the_preprocessed_samples():
    ds = make_dataset(n=20)
    it = data.BatchIterator(ds, batch_size=6, seed=1, augment=True)
    params = data.augment_params(len(ds), "crop-flip", seed=1, epoch=0)
    for x, y, idx in it:
        u8 = ref_crop_flip(ds.images[idx], params.oy[idx], params.ox[idx], params.flip[idx], 4)
        np.testing.assert_allclose(x, ref_normalize(u8, ds.mean, ds.std), rtol=1e-6, atol=1e-6)
    plain = data.BatchIterator(ds, batch_size=6, shuffle=False, augment=False)
    x, y, idx = next(iter(plain))
    np.testing.assert_array_equal(idx, np.arange(6))
    np.testing.assert_allclose(x, ref_normalize(ds.images[:6], ds.mean, ds.std), rtol=1e-6, atol=1e-6)


def test_drop_last_and_no_shuffle():
    ds = make_dataset(n=37)
    it = data.BatchIterator(ds, batch_size=8, shuffle=False, drop_last=True)
    batches = [idx for _, _, idx in it]
    assert len(it) == 4 and len(batches) == 4 and it.num_samples == 32
    np.testing.assert_array_equal(np.concatenate(batches), np.arange(32))


def test_epoch_reproducibility_and_resume():
    ds = make_dataset(n=50)

    def run(it, epochs):
        return [[(x.copy(), idx.copy()) for x, _, idx in it] for _ in range(epochs)]

    a = run(data.BatchIterator(ds, 7, seed=11, augment=True), 3)
    b = data.BatchIterator(ds, 7, seed=11, augment=True, prefetch=0)
    b.set_epoch(2)  # a resumed run starting at epoch 2
    resumed = run(b, 1)[0]
    for (xa, ia), (xb, ib) in zip(a[2], resumed):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(xa, xb)
    # Different epochs and different seeds give different orders.
    assert not np.array_equal(a[0][0][1], a[1][0][1])
    other = data.BatchIterator(ds, 7, seed=12, augment=True)
    assert not np.array_equal(next(iter(other))[2], a[0][0][1])
    # Augmentation of a sample does not depend on the batch size.
    big = data.BatchIterator(ds, 50, seed=11, augment=True)
    xb, _, ib = next(iter(big))
    x0 = np.concatenate([x for x, _ in a[0]])
    np.testing.assert_array_equal(np.concatenate([i for _, i in a[0]]), ib)
    np.testing.assert_array_equal(x0, xb)


def test_augmentation_changes_data_only_when_asked():
    ds = make_dataset(n=16)
    plain = next(iter(data.BatchIterator(ds, 16, shuffle=False)))[0]
    aug = next(iter(data.BatchIterator(ds, 16, shuffle=False, augment=True)))[0]
    assert not np.array_equal(plain, aug)
    none_ds = make_dataset(n=16, augmentation="none")
    still = next(iter(data.BatchIterator(none_ds, 16, shuffle=False, augment=True)))[0]
    np.testing.assert_array_equal(still, plain)


def test_indices_subset_and_views():
    ds = make_dataset(n=30)
    sub = np.array([3, 7, 8, 20, 29])
    it = data.BatchIterator(ds, 2, indices=sub, seed=0)
    got = np.concatenate([idx for _, _, idx in it])
    np.testing.assert_array_equal(np.sort(got), sub)
    with pytest.raises(ValueError, match="indices"):
        data.BatchIterator(ds, 2, indices=[30])


def test_prefetch_thread_terminates():
    ds = make_dataset(n=200)
    before = len(prefetch_threads())
    it = data.BatchIterator(ds, 4, augment=True, prefetch=3)
    for _ in it:  # full epoch: the thread ends by itself
        pass
    for i, _ in enumerate(it):  # early break: dropping the iterator stops the thread
        if i == 2:
            break
    gc.collect()
    with data.BatchIterator(ds, 4).epoch(0) as ep:
        next(ep)
    ep2 = iter(it)
    next(ep2)
    ep2.close()
    assert len(prefetch_threads()) == before


def test_prefetch_error_propagates():
    ds = make_dataset(n=20)
    it = data.BatchIterator(ds, 4)
    ep = it.epoch(0)

    def boom(idx):
        raise RuntimeError("boom in the prefetch thread")

    ep.close()
    ep = data.EpochIterator(it.batches(0), boom, prefetch=2, epoch=0)
    with pytest.raises(RuntimeError, match="boom"):
        next(ep)
    assert not prefetch_threads()


def test_iterator_argument_errors():
    ds = make_dataset(n=5)
    with pytest.raises(ValueError, match="batch_size"):
        data.BatchIterator(ds, 0)
    with pytest.raises(TypeError, match="Dataset"):
        data.BatchIterator(np.zeros((5, 3, 2, 2), np.uint8), 2)


def test_train_val_split():
    ds = make_dataset(n=100, k=4)
    tr, va = data.train_val_split(ds, val_fraction=0.2, seed=3)
    assert len(tr) == 80 and len(va) == 20 and va.split == "val"
    both = np.concatenate([tr.base_index, va.base_index])
    np.testing.assert_array_equal(np.sort(both), np.arange(100))
    np.testing.assert_array_equal(va.images, ds.images[va.base_index])
    np.testing.assert_array_equal(va.labels, ds.labels[va.base_index])
    # Views share the parent's arrays (no copy of the dataset).
    assert np.shares_memory(tr._images, ds.images)
    tr2, va2 = data.train_val_split(ds, val_size=20, seed=3)
    np.testing.assert_array_equal(va.base_index, va2.base_index)
    _, va3 = data.train_val_split(ds, val_size=20, seed=4)
    assert not np.array_equal(va.base_index, va3.base_index)
    # Stratified: class proportions preserved (largest remainder).
    _, vs = data.train_val_split(ds, val_size=20, seed=0, stratify=True)
    counts = np.bincount(ds.labels, minlength=4)
    vcounts = np.bincount(vs.labels, minlength=4)
    assert vcounts.sum() == 20 and (np.abs(vcounts - counts * 0.2) < 1).all()
    # Iterating a view yields positions in the view.
    xs = [(x, y, idx) for x, y, idx in data.BatchIterator(va, 8, shuffle=False)]
    np.testing.assert_array_equal(np.concatenate([i for _, _, i in xs]), np.arange(20))
    np.testing.assert_array_equal(np.concatenate([y for _, y, _ in xs]), va.labels)
    with pytest.raises(ValueError, match="exactly one"):
        data.train_val_split(ds)
    with pytest.raises(ValueError, match="val_size"):
        data.train_val_split(ds, val_size=100)


def test_subset():
    ds = make_dataset(n=50)
    a = data.subset(ds, 20, seed=1)
    assert len(a) == 20 and np.all(np.diff(a.base_index) > 0)
    np.testing.assert_array_equal(a.base_index, data.subset(ds, 20, seed=1).base_index)
    assert not np.array_equal(a.base_index, data.subset(ds, 20, seed=2).base_index)
    assert data.subset(ds, None) is ds and data.subset(ds, 80) is ds
    b = data.subset(a, 5, seed=0)  # a view of a view indexes the original arrays
    np.testing.assert_array_equal(b.images, ds.images[b.base_index])
    assert set(b.base_index) <= set(a.base_index)
    x, y, idx = next(iter(data.BatchIterator(b, 5, shuffle=False)))
    np.testing.assert_array_equal(y, ds.labels[b.base_index])
