"""Batches of ``uint8`` examples for training and evaluation, on the host.

Every batch is a dict of NumPy arrays:

``image``  ``uint8`` ``(B, ...)``;
``label``  ``int32`` ``(B,)`` or ``(B, L)``;
``index``  ``int32`` ``(B,)``: each example's position in its split (the AUC
           losses keep per-example state by it); ``-1`` for padding;
``mask``   ``bool`` ``(B,)``: ``False`` only for evaluation padding.

Training order is a permutation drawn from ``(seed, epoch)``, so an epoch's
batches can be recreated after a restart without replaying the earlier
ones. Evaluation visits every example exactly once, in order, padding the
last batch to the full batch size (so one compiled step serves every batch)
with masked entries.

Class-balanced sampling (``sampler="balanced"`` or per-class ``fractions``)
follows LibAUC's ``DualSampler``: each batch holds a fixed number of examples
of each class; each class's examples are drawn from its own shuffled pool,
cyclically, reshuffled whenever the pool is exhausted; an epoch has as many
batches as the class needing the most takes to be seen once. The minority
class is therefore oversampled. ``sampler="dual"`` is LibAUC's binary
layout exactly (positives first, ``max(1, int(rate·B))`` of them).
"""

from __future__ import annotations

import math
from typing import Iterator, Mapping, Optional

import numpy as np

from sam_jax.data.dataset import Split

Batch = dict[str, np.ndarray]


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  """The training order of ``epoch``: a function of ``(seed, epoch)`` only."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def _single_labels(labels: np.ndarray) -> np.ndarray:
  if labels.ndim != 1:
    raise ValueError("class-balanced sampling needs one label per example (not multi-label).")
  return labels


def per_class_counts(
    labels: np.ndarray, batch_size: int, fractions: Optional[Mapping[int, float]] = None
) -> dict[int, int]:
  """How many examples of each class go into one balanced batch.

  ``fractions`` maps class -> share of the batch (LibAUC's
  ``sampling_rate`` is ``{1: rate, 0: 1 − rate}``); default equal shares.
  Each present class gets at least one slot; rounding leftovers go to the
  classes with the largest remainders.
  """
  classes = np.unique(_single_labels(labels))
  if fractions is None:
    fractions = {int(c): 1.0 / len(classes) for c in classes}
  missing = [int(c) for c in classes if int(c) not in fractions]
  if missing:
    raise ValueError(f"fractions give no share to classes {missing}.")
  total = sum(fractions[int(c)] for c in classes)
  if total <= 0:
    raise ValueError(f"fractions must be positive, got {dict(fractions)}.")
  if batch_size < len(classes):
    raise ValueError(f"a balanced batch needs at least one slot per class ({len(classes)}).")
  exact = {int(c): batch_size * fractions[int(c)] / total for c in classes}
  counts = {c: max(1, int(math.floor(v))) for c, v in exact.items()}
  while sum(counts.values()) > batch_size:
    c = max(counts, key=lambda k: counts[k] - exact[k])
    counts[c] -= 1
  while sum(counts.values()) < batch_size:
    c = max(counts, key=lambda k: exact[k] - counts[k])
    counts[c] += 1
  return counts


def _cyclic_batches(pools: list[np.ndarray], counts: list[int], num_batches: int,
                    rng: np.random.Generator) -> np.ndarray:
  """``num_batches`` rows of ``counts[k]`` draws from each pool, in pool order.

  Each pool is visited in a shuffled order, cyclically, and reshuffled
  whenever it is exhausted (LibAUC's ``DualSampler``).
  """
  order = [rng.permutation(pool) for pool in pools]
  pointer = [0] * len(pools)
  out = np.empty((num_batches, sum(counts)), np.int64)
  for b in range(num_batches):
    chunks = []
    for c, k in enumerate(counts):
      taken = []
      while len(taken) < k:
        if pointer[c] == len(order[c]):  # pool exhausted: reshuffle, start over
          order[c], pointer[c] = rng.permutation(pools[c]), 0
        step = min(k - len(taken), len(order[c]) - pointer[c])
        taken.extend(order[c][pointer[c]:pointer[c] + step])
        pointer[c] += step
      chunks.append(np.asarray(taken, np.int64))
    out[b] = np.concatenate(chunks)
  return out.reshape(-1)


def balanced_indices(
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    fractions: Optional[Mapping[int, float]] = None,
) -> np.ndarray:
  """One epoch of class-balanced indices, ``num_batches × batch_size`` long."""
  labels = _single_labels(labels)
  counts = per_class_counts(labels, batch_size, fractions)
  rng = np.random.default_rng([seed, epoch, 1])
  pools = {c: np.flatnonzero(labels == c) for c in counts}
  num_batches = max(1, max(len(pools[c]) // counts[c] for c in counts))
  return _cyclic_batches([pools[c] for c in counts], list(counts.values()), num_batches, rng)


def _positive_labels(labels: np.ndarray, task: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim == 2:
    if not 0 <= task < labels.shape[1]:
      raise ValueError(f"sampler_task {task} is not a label of this multi-label set "
                       f"(0..{labels.shape[1] - 1}).")
    labels = labels[:, task]
  if not np.all(np.isin(labels, (0, 1))):
    raise ValueError("the dual sampler needs binary labels (0/1), or a multi-label set and "
                     f"the label to balance; got classes {np.unique(labels).tolist()[:10]}.")
  return labels == 1


def dual_counts(batch_size: int, sampling_rate: float) -> tuple[int, int]:
  """LibAUC's ``(num_pos, num_neg)``: ``max(1, int(rate·B))`` positives, the rest negatives."""
  if not 0 < sampling_rate < 1:
    raise ValueError(f"sampling_rate must be in (0, 1), got {sampling_rate}.")
  num_pos = max(1, int(sampling_rate * batch_size))
  if num_pos >= batch_size:
    raise ValueError(f"a dual batch of {batch_size} with sampling_rate {sampling_rate} leaves no "
                     "room for negatives.")
  return num_pos, batch_size - num_pos


def num_dual_batches(labels: np.ndarray, batch_size: int, sampling_rate: float,
                     task: int = 0) -> int:
  """``max(n₊ // num_pos, n₋ // num_neg)``: the minority class is oversampled."""
  positive = _positive_labels(labels, task)
  num_pos, num_neg = dual_counts(batch_size, sampling_rate)
  n_pos, n_neg = int(positive.sum()), int((~positive).sum())
  if n_pos == 0 or n_neg == 0:
    raise ValueError(f"the dual sampler needs positives and negatives; the training set has "
                     f"{n_pos} positive and {n_neg} negative examples.")
  return max(1, n_pos // num_pos, n_neg // num_neg)


def dual_indices(
    labels: np.ndarray,
    batch_size: int,
    sampling_rate: float,
    seed: int,
    epoch: int,
    task: int = 0,
) -> np.ndarray:
  """One epoch of LibAUC ``DualSampler`` indices (dataset indices).

  Every batch is ``[num_pos positives][num_neg negatives]`` with ``num_pos =
  max(1, int(sampling_rate·batch_size))``; each class is drawn from its own
  shuffled pool, cyclically, reshuffled when exhausted; an epoch has
  ``max(n₊ // num_pos, n₋ // num_neg)`` batches, so every example of the
  class needing the most batches is seen once per epoch and the other class
  is oversampled. The order is a function of ``(seed, epoch)``: a resumed
  run recreates it (LibAUC seeds NumPy's global generator instead).
  ``task`` picks the label that defines positives on multi-label data.
  """
  positive = _positive_labels(labels, task)
  num_pos, num_neg = dual_counts(batch_size, sampling_rate)
  num_batches = num_dual_batches(labels, batch_size, sampling_rate, task)
  rng = np.random.default_rng([seed, epoch, 2])
  return _cyclic_batches([np.flatnonzero(positive), np.flatnonzero(~positive)],
                         [num_pos, num_neg], num_batches, rng)


def num_train_batches(
    split: Split, batch_size: int, *, drop_last: bool = True, sampler: Optional[str] = None,
    fractions: Optional[Mapping[int, float]] = None, sampling_rate: float = 0.5,
    sampler_task: int = 0,
) -> int:
  if sampler == "dual":
    return num_dual_batches(split.labels, batch_size, sampling_rate, sampler_task)
  if sampler is not None or fractions is not None:
    counts = per_class_counts(split.labels, batch_size, fractions)
    return max(1, max(int(np.sum(split.labels == c)) // k for c, k in counts.items()))
  return len(split) // batch_size if drop_last else math.ceil(len(split) / batch_size)


def train_batches(
    split: Split,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    drop_last: bool = True,
    sampler: Optional[str] = None,
    fractions: Optional[Mapping[int, float]] = None,
    sampling_rate: float = 0.5,
    sampler_task: int = 0,
    start_batch: int = 0,
) -> Iterator[Batch]:
  """Shuffled training batches of ``epoch``.

  Args:
    split: the training split.
    batch_size: examples per batch.
    seed, epoch: the order is a function of both.
    drop_last: drop the last, incomplete batch (so every step has the same
      shape); otherwise it is padded and masked.
    sampler: ``None`` (a permutation), ``"balanced"`` (equal shares per
      class, or ``fractions``) or ``"dual"`` (LibAUC's ``DualSampler``:
      ``sampling_rate`` of each batch positives, see :func:`dual_indices`).
    fractions: per-class shares of each batch (implies balanced sampling).
    sampling_rate, sampler_task: the dual sampler's share of positives and,
      on multi-label data, the label that defines them.
    start_batch: skip the first batches (resuming inside an epoch).
  """
  n = len(split)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  if sampler not in (None, "balanced", "dual"):
    raise ValueError(f"sampler must be None, 'balanced' or 'dual', got {sampler!r}.")
  if drop_last and batch_size > n:
    raise ValueError(
        f"batch size {batch_size} is larger than the {n} training examples; "
        "use a smaller batch or drop_last=False."
    )
  if sampler == "dual":
    order = dual_indices(split.labels, batch_size, sampling_rate, seed, epoch, sampler_task)
  elif sampler is not None or fractions is not None:
    order = balanced_indices(split.labels, batch_size, seed, epoch, fractions)
  else:
    order = epoch_permutation(n, seed, epoch)
    if drop_last:
      order = order[: (n // batch_size) * batch_size]
  for start in range(start_batch * batch_size, len(order), batch_size):
    yield _gather(split, order[start:start + batch_size], batch_size)


def interleave(batch: Batch, parts: int) -> Batch:
  """Reorders a batch so that each of ``parts`` equal shards takes every ``parts``-th example.

  A dual-sampler batch lists its positives first; split as it is over devices
  (or m-sharpness sub-batches), the first shards would hold only positives
  and the last only negatives, and a per-shard AUC loss would see one class.
  Striding gives every shard the batch's class mix (±1).
  """
  size = len(batch["label"])
  if parts <= 1 or size % parts:
    return batch
  order = np.concatenate([np.arange(d, size, parts) for d in range(parts)])
  return {key: value[order] for key, value in batch.items()}


def eval_batches(split: Split, batch_size: int) -> Iterator[Batch]:
  """Every example exactly once, in order; the last batch padded and masked."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  for start in range(0, len(split), batch_size):
    yield _gather(split, np.arange(start, min(start + batch_size, len(split))), batch_size)


def _gather(split: Split, idx: np.ndarray, batch_size: int) -> Batch:
  pad = batch_size - len(idx)
  images, labels = split.images[idx], split.labels[idx]
  index = idx.astype(np.int32)
  mask = np.ones(batch_size, bool)
  if pad:
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    labels = np.concatenate([labels, np.zeros((pad,) + labels.shape[1:], labels.dtype)])
    index = np.concatenate([index, np.full(pad, -1, np.int32)])
    mask[len(idx):] = False
  return {"image": images, "label": labels.astype(np.int32), "index": index, "mask": mask}

