"""Batches for training and evaluation: preprocessing, shuffling, prefetching.

Preprocessing follows the authors (torchvision transforms, applied per batch in NumPy):

* normalise: ``x = (u8 / 255 - mean[c]) / std[c]`` in float32, in exactly torchvision's
  order (``ToTensor`` then ``Normalize``), with the dataset's ``mean``/``std``;
* ``crop-flip`` (CIFAR-10): ``RandomCrop(size, padding=4)`` with zero padding, then
  ``RandomHorizontalFlip()``; ``flip`` (Tiny-ImageNet): ``RandomHorizontalFlip()``.

Randomness is a pure function of ``(seed, epoch)``: the order comes from
``default_rng([seed, epoch])`` and the augmentation of *sample i* from
``default_rng([seed, epoch, 1])`` drawn for every sample of the dataset up front, so an
epoch's batches do not depend on the batch size, the prefetch thread or on where a
resumed run restarts.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .datasets import Dataset

__all__ = ["AugmentParams", "augment_params", "normalize", "crop_flip", "hflip", "preprocess",
           "BatchIterator", "EpochIterator", "train_val_split", "subset"]


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample augmentation of one epoch, indexed by dataset position.

    oy, ox: int64 (N,) crop offsets into the zero-padded image, in [0, 2*pad];
    flip: bool (N,) horizontal flip; pad: padding in pixels (0: no crop).
    """
    oy: np.ndarray
    ox: np.ndarray
    flip: np.ndarray
    pad: int


def augment_params(n: int, mode: str, seed: int, epoch: int, pad: int = 4) -> AugmentParams | None:
    """Draw the augmentation of ``n`` samples for ``(seed, epoch)``; None for mode 'none'."""
    if mode == "none":
        return None
    if mode not in ("flip", "crop-flip"):
        raise ValueError(f"mode: expected 'none', 'flip' or 'crop-flip', got {mode!r}")
    rng = np.random.default_rng([int(seed), int(epoch), 1])
    if mode == "crop-flip":
        oy = rng.integers(0, 2 * pad + 1, size=n, dtype=np.int64)
        ox = rng.integers(0, 2 * pad + 1, size=n, dtype=np.int64)
    else:
        pad = 0
        oy = ox = np.zeros(n, dtype=np.int64)
    flip = rng.random(n) < 0.5
    return AugmentParams(oy, ox, flip, pad)


def normalize(images: np.ndarray, mean, std, out: np.ndarray | None = None) -> np.ndarray:
    """float32 (B, C, H, W) ``(images / 255 - mean[c]) / std[c]`` of uint8 (B, C, H, W).

    Same float32 operation order as torchvision's ``ToTensor`` + ``Normalize``.
    """
    if images.dtype != np.uint8 or images.ndim != 4:
        raise TypeError(f"images: expected uint8 (B, C, H, W), got {images.dtype} {images.shape}")
    c = images.shape[1]
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    if m.shape[1] != c or s.shape[1] != c:
        raise ValueError(f"mean/std: expected {c} values, got {m.size}/{s.size}")
    if out is None:
        out = np.empty(images.shape, dtype=np.float32)
    np.copyto(out, images, casting="unsafe")
    out /= np.float32(255.0)
    out -= m
    out /= s
    return out


def crop_flip(images: np.ndarray, oy: np.ndarray, ox: np.ndarray, flip: np.ndarray,
              pad: int = 4) -> np.ndarray:
    """Random crop with zero padding, then horizontal flip, of uint8 (B, C, H, W).

    Sample b is ``padded[b, :, oy[b]:oy[b]+H, ox[b]:ox[b]+W]`` of the image padded by
    ``pad`` zeros on every side (torchvision ``RandomCrop(H, padding=pad)``), mirrored
    left-right where ``flip[b]``. Returns a new uint8 (B, C, H, W) array.
    """
    b, c, h, w = images.shape
    padded = np.zeros((b, c, h + 2 * pad, w + 2 * pad), dtype=images.dtype)
    padded[:, :, pad:pad + h, pad:pad + w] = images
    out = np.empty_like(images)
    # One slice copy per sample (each copies C*H*W values at once): measured 3-6x faster
    # than a single fancy-index gather or a sliding-window gather for B=128, 3x32x32.
    for i in range(b):
        y0, x0 = int(oy[i]), int(ox[i])
        win = padded[i, :, y0:y0 + h, x0:x0 + w]
        out[i] = win[:, :, ::-1] if flip[i] else win
    return out


def hflip(images: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """uint8 (B, C, H, W) with samples ``flip[b]`` mirrored left-right (a new array)."""
    out = images.copy()
    sel = np.flatnonzero(flip)
    if sel.size:
        out[sel] = images[sel][:, :, :, ::-1]
    return out


def preprocess(images: np.ndarray, dataset: Dataset, params: AugmentParams | None = None,
               idx: np.ndarray | None = None, normalise: bool = True) -> np.ndarray:
    """float32 (B, C, H, W) batch from uint8 ``images`` (B, C, H, W) of ``dataset``:
    augmentation ``params`` of samples ``idx`` (dataset positions), then normalisation
    (``normalise=False``: only scale to [0, 1])."""
    if params is not None:
        if idx is None:
            raise ValueError("idx: required with augmentation params")
        if params.pad > 0:
            images = crop_flip(images, params.oy[idx], params.ox[idx], params.flip[idx], params.pad)
        else:
            images = hflip(images, params.flip[idx])
    if normalise:
        return normalize(images, dataset.mean, dataset.std)
    c = images.shape[1]
    return normalize(images, (0.0,) * c, (1.0,) * c)


_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _produce(batches: list[np.ndarray], make, q: "queue.Queue", stop: threading.Event) -> None:
    """Prefetch thread body: build batches in order and queue them until told to stop.
    It must not reference the consuming iterator, so that dropping the iterator (a
    ``break``) runs its finaliser, which stops and joins this thread."""
    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    try:
        for idx in batches:
            if stop.is_set():
                return
            if not put(make(idx)):
                return
        put(_END)
    except BaseException as e:  # handed to the consumer, re-raised there
        put(_Failure(e))


class EpochIterator:
    """Iterator over one epoch's batches ``(x, y, idx)``; a background thread prepares the
    next ``prefetch`` batches. ``close()`` (also on garbage collection and on ``with``
    exit) stops and joins the thread."""

    def __init__(self, batches: list[np.ndarray], make, prefetch: int, epoch: int) -> None:
        self.epoch = epoch
        self._batches = batches
        self._make = make
        self._pos = 0
        self._thread: threading.Thread | None = None
        self._done = False
        if prefetch > 0 and batches:
            self._q: queue.Queue = queue.Queue(maxsize=prefetch)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=_produce, args=(batches, make, self._q, self._stop),
                                            name=f"eenet-prefetch-epoch{epoch}", daemon=True)
            self._thread.start()

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> "EpochIterator":
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._done:
            raise StopIteration
        if self._thread is None:
            if self._pos >= len(self._batches):
                self._done = True
                raise StopIteration
            self._pos += 1
            return self._make(self._batches[self._pos - 1])
        item = self._q.get()
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.exc
        return item

    def close(self) -> None:
        """Stop the prefetch thread and wait for it."""
        self._done = True
        t = self._thread
        if t is not None:
            self._stop.set()
            t.join()
            self._thread = None

    def __enter__(self) -> "EpochIterator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


class BatchIterator:
    """Mini-batches of a :class:`~eenet.datasets.Dataset` as ``(x, y, idx)``:

    * x: float32 (B, C, H, W) C-contiguous, augmented (``augment=True``: the dataset's
      ``augmentation``) and normalised with the dataset's mean/std;
    * y: int64 (B,) labels;
    * idx: int64 (B,) positions of the samples in ``dataset`` (for v4's exit tags).

    Every sample (of ``indices``, default all) appears exactly once per epoch; the last
    batch is short unless ``drop_last``. ``iter(it)`` runs epoch ``it.next_epoch`` and then
    advances it; ``set_epoch(e)`` chooses the next epoch and ``epoch(e)`` iterates a
    given one. Epoch e with seed s always gives the same batches.

    A daemon thread prefetches ``prefetch`` batches (NumPy releases the GIL while
    copying); ``prefetch=0`` builds batches in the caller's thread.
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, augment: bool = False, indices=None,
                 normalise: bool = True, prefetch: int = 2, epoch: int = 0) -> None:
        if not isinstance(dataset, Dataset):
            raise TypeError(f"dataset: expected eenet.datasets.Dataset, got {type(dataset).__name__}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if int(prefetch) < 0:
            raise ValueError(f"prefetch: expected >= 0, got {prefetch}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.augment = bool(augment)
        self.normalise = bool(normalise)
        self.prefetch = int(prefetch)
        if indices is None:
            self.indices = np.arange(len(dataset), dtype=np.int64)
        else:
            self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
            if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(dataset)):
                raise ValueError(f"indices: values must lie in [0, {len(dataset)})")
        self._epoch = int(epoch)

    @property
    def next_epoch(self) -> int:
        """The epoch the next ``iter()`` runs."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` run epoch ``epoch`` (for resuming a run)."""
        self._epoch = int(epoch)

    def __len__(self) -> int:
        n = self.indices.size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        """Samples delivered per epoch (after ``drop_last``)."""
        return len(self) * self.batch_size if self.drop_last else int(self.indices.size)

    def order(self, epoch: int) -> np.ndarray:
        """int64 (n,) dataset positions in the order epoch ``epoch`` visits them."""
        if not self.shuffle:
            return self.indices.copy()
        rng = np.random.default_rng([self.seed, int(epoch)])
        return self.indices[rng.permutation(self.indices.size)]

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The index arrays of epoch ``epoch``'s batches."""
        order = self.order(epoch)
        bs = self.batch_size
        out = [order[i:i + bs] for i in range(0, order.size, bs)]
        if self.drop_last and out and out[-1].size < bs:
            out.pop()
        return out

    def epoch(self, epoch: int) -> EpochIterator:
        """An iterator over the batches of epoch ``epoch`` (does not change ``next_epoch``)."""
        params = augment_params(len(self.dataset), self.dataset.augmentation if self.augment else "none",
                                self.seed, epoch)
        ds, normalise = self.dataset, self.normalise

        def make(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            images, labels = ds.gather(idx)
            x = preprocess(images, ds, params, idx, normalise)
            return x, labels, idx

        return EpochIterator(self.batches(epoch), make, self.prefetch, epoch)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        it = self.epoch(self._epoch)
        self._epoch += 1
        return it


def train_val_split(dataset: Dataset, val_fraction: float | None = None, val_size: int | None = None,
                    seed: int = 0, stratify: bool = False) -> tuple[Dataset, Dataset]:
    """Split ``dataset`` into (train, val) views sharing its arrays.

    Exactly one of ``val_fraction`` (in (0, 1)) and ``val_size`` (in [1, N-1]) is given.
    The validation samples are a seeded random choice (per class in proportion with
    ``stratify``); both views keep dataset order. The val view has ``split='val'``.
    """
    n = len(dataset)
    if (val_fraction is None) == (val_size is None):
        raise ValueError("give exactly one of val_fraction and val_size")
    if val_fraction is not None:
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction: expected in (0, 1), got {val_fraction}")
        val_size = int(round(float(val_fraction) * n))
    val_size = int(val_size)
    if not 1 <= val_size <= n - 1:
        raise ValueError(f"val_size: expected in [1, {n - 1}] for {n} samples, got {val_size}")
    rng = np.random.default_rng([int(seed), 0x5EED])
    if stratify:
        labels = dataset.labels
        chosen = []
        classes, counts = np.unique(labels, return_counts=True)
        quota = np.floor(counts * val_size / n).astype(np.int64)
        # Largest remainders take the samples left over after flooring.
        rest = val_size - int(quota.sum())
        if rest > 0:
            frac = counts * val_size / n - quota
            quota[np.argsort(-frac, kind="stable")[:rest]] += 1
        for k, q in zip(classes, quota):
            members = np.flatnonzero(labels == k)
            chosen.append(rng.choice(members, size=int(q), replace=False))
        val_idx = np.sort(np.concatenate(chosen))
    else:
        val_idx = np.sort(rng.permutation(n)[:val_size])
    mask = np.ones(n, dtype=bool)
    mask[val_idx] = False
    train_idx = np.flatnonzero(mask)
    return dataset.subset(train_idx), dataset.subset(val_idx, split="val")


def subset(dataset: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """A view on ``n`` samples of ``dataset`` chosen at random with ``seed`` (kept in
    dataset order); all of it when ``n`` is None or at least ``len(dataset)``."""
    if n is None or int(n) >= len(dataset):
        return dataset
    if int(n) < 1:
        raise ValueError(f"n: expected >= 1, got {n}")
    rng = np.random.default_rng([int(seed), 0x5B5E7])
    return dataset.subset(np.sort(rng.permutation(len(dataset))[:int(n)]))
