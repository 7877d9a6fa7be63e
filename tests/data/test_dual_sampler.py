"""The dual sampler (LibAUC's DualSampler): composition, epoch length, coverage, seeds, resume."""

from __future__ import annotations

import numpy as np
import pytest

from sam_jax.data import batches as batches_lib
from sam_jax.data.dataset import Split


def imbalanced(n=103, positives=11, seed=0):
  labels = np.zeros(n, np.int32)
  labels[np.random.default_rng(seed).choice(n, positives, replace=False)] = 1
  return labels


def test_batch_layout_and_epoch_length_follow_libauc():
  labels = imbalanced()
  num_pos, num_neg = batches_lib.dual_counts(16, 0.2)
  assert (num_pos, num_neg) == (3, 13)  # int(0.2·16) = 3
  order = batches_lib.dual_indices(labels, 16, 0.2, seed=1, epoch=0)
  # max(11 // 3, 92 // 13) = max(3, 7) = 7 batches of 16.
  assert len(order) == 7 * 16 == 16 * batches_lib.num_dual_batches(labels, 16, 0.2)
  for batch in order.reshape(7, 16):
    assert np.all(labels[batch[:3]] == 1) and np.all(labels[batch[3:]] == 0)


def test_every_example_of_the_limiting_class_is_seen_each_epoch_and_pools_cycle():
  labels = imbalanced()
  for epoch in range(3):
    order = batches_lib.dual_indices(labels, 16, 0.2, seed=1, epoch=epoch).reshape(-1, 16)
    negatives = order[:, 3:].reshape(-1)
    positives = order[:, :3].reshape(-1)
    # 7 batches × 13 = 91 of the 92 negatives, none twice (one pass, no wrap).
    assert len(set(negatives.tolist())) == 91
    # 21 positive slots over 11 positives: every positive is seen, the pool cycles.
    assert set(positives.tolist()) == set(np.flatnonzero(labels).tolist())
    counts = np.bincount(positives, minlength=len(labels))[labels == 1]
    assert counts.min() >= 1 and counts.max() <= 2


def test_minimum_one_positive_and_errors():
  assert batches_lib.dual_counts(16, 0.01) == (1, 15)
  with pytest.raises(ValueError, match="sampling_rate must be in"):
    batches_lib.dual_counts(16, 1.0)
  with pytest.raises(ValueError, match="needs positives and negatives"):
    batches_lib.num_dual_batches(np.zeros(10, np.int32), 4, 0.5)
  with pytest.raises(ValueError, match="needs binary labels"):
    batches_lib.dual_indices(np.arange(10) % 3, 4, 0.5, seed=0, epoch=0)


def test_deterministic_per_seed_and_epoch():
  labels = imbalanced()
  a = batches_lib.dual_indices(labels, 16, 0.25, seed=3, epoch=2)
  assert np.array_equal(a, batches_lib.dual_indices(labels, 16, 0.25, seed=3, epoch=2))
  assert not np.array_equal(a, batches_lib.dual_indices(labels, 16, 0.25, seed=4, epoch=2))
  assert not np.array_equal(a, batches_lib.dual_indices(labels, 16, 0.25, seed=3, epoch=3))


def test_multilabel_by_chosen_task():
  rng = np.random.default_rng(5)
  labels = np.stack([rng.integers(0, 2, 60), (np.arange(60) % 10 == 0).astype(int)], 1)
  order = batches_lib.dual_indices(labels, 10, 0.3, seed=0, epoch=0, task=1).reshape(-1, 10)
  assert np.all(labels[order[:, :3], 1] == 1) and np.all(labels[order[:, 3:], 1] == 0)
  with pytest.raises(ValueError, match="sampler_task 2 is not a label"):
    batches_lib.dual_indices(labels, 10, 0.3, seed=0, epoch=0, task=2)


def test_train_batches_resume_mid_epoch_and_carry_dataset_indices():
  labels = imbalanced()
  images = np.arange(len(labels), dtype=np.uint8).reshape(-1, 1, 1, 1)
  split = Split(images=images, labels=labels)
  kwargs = dict(seed=9, epoch=1, sampler="dual", sampling_rate=0.2)
  whole = list(batches_lib.train_batches(split, 16, **kwargs))
  tail = list(batches_lib.train_batches(split, 16, start_batch=4, **kwargs))
  assert len(whole) == batches_lib.num_train_batches(split, 16, sampler="dual",
                                                     sampling_rate=0.2)
  assert len(tail) == len(whole) - 4
  for a, b in zip(whole[4:], tail):
    assert np.array_equal(a["index"], b["index"]) and np.array_equal(a["image"], b["image"])
  for batch in whole:
    assert np.array_equal(batch["image"][:, 0, 0, 0], batch["index"])  # dataset indices
    assert np.array_equal(batch["label"], labels[batch["index"]])


def test_interleave_gives_every_shard_both_classes():
  labels = imbalanced()
  split = Split(images=np.zeros((len(labels), 1, 1, 1), np.uint8), labels=labels)
  batch = next(batches_lib.train_batches(split, 16, seed=0, epoch=0, sampler="dual",
                                         sampling_rate=0.25))
  spread = batches_lib.interleave(batch, 4)
  assert sorted(spread["index"].tolist()) == sorted(batch["index"].tolist())
  for shard in spread["label"].reshape(4, 4):
    assert shard.tolist() == [1, 0, 0, 0]
  assert batches_lib.interleave(batch, 1) is batch
