"""Batch iterators: full coverage in evaluation, seeded shuffling, balanced sampling."""

import numpy as np
import pytest

from sam_jax.data import batches
from sam_jax.data.dataset import Split


def make_split(n, num_classes=2, seed=0, imbalance=None):
  rng = np.random.default_rng(seed)
  if imbalance is None:
    labels = np.arange(n) % num_classes
  else:
    labels = (rng.uniform(size=n) < imbalance).astype(np.int32)
  images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) if n < 256 else \
      rng.integers(0, 256, (n, 1, 1, 1), dtype=np.uint8)
  return Split(images=images, labels=labels.astype(np.int32))


@pytest.mark.parametrize("n,batch_size", [(10, 4), (12, 4), (1, 8), (157, 32), (156, 156)])
def test_eval_visits_every_example_exactly_once(n, batch_size):
  split = make_split(n)
  seen = []
  for batch in batches.eval_batches(split, batch_size):
    assert batch["image"].shape[0] == batch_size  # one compiled shape
    seen.extend(batch["index"][batch["mask"]].tolist())
    assert np.all(batch["index"][~batch["mask"]] == -1)
    np.testing.assert_array_equal(batch["label"][batch["mask"]], split.labels[batch["index"][batch["mask"]]])
  assert sorted(seen) == list(range(n)) and len(seen) == n


def test_train_batches_are_a_seeded_permutation():
  split = make_split(50)
  epoch0 = [b["index"] for b in batches.train_batches(split, 8, seed=1, epoch=0)]
  again = [b["index"] for b in batches.train_batches(split, 8, seed=1, epoch=0)]
  epoch1 = [b["index"] for b in batches.train_batches(split, 8, seed=1, epoch=1)]
  other_seed = [b["index"] for b in batches.train_batches(split, 8, seed=2, epoch=0)]
  assert len(epoch0) == 6  # drop_last: 50 // 8
  flat = np.concatenate(epoch0)
  assert len(set(flat.tolist())) == len(flat) == 48  # no repeats within an epoch
  assert all(np.array_equal(a, b) for a, b in zip(epoch0, again))
  assert not np.array_equal(np.concatenate(epoch1), flat)
  assert not np.array_equal(np.concatenate(other_seed), flat)


def test_resuming_inside_an_epoch():
  split = make_split(50)
  full = [b["index"] for b in batches.train_batches(split, 8, seed=1, epoch=3)]
  resumed = [b["index"] for b in batches.train_batches(split, 8, seed=1, epoch=3, start_batch=4)]
  assert all(np.array_equal(a, b) for a, b in zip(full[4:], resumed)) and len(resumed) == 2


def test_keeping_the_last_batch_pads_it():
  split = make_split(10)
  out = list(batches.train_batches(split, 4, seed=0, epoch=0, drop_last=False))
  assert len(out) == 3 and out[-1]["mask"].sum() == 2
  assert sorted(np.concatenate([b["index"][b["mask"]] for b in out]).tolist()) == list(range(10))


def test_batch_larger_than_the_dataset():
  with pytest.raises(ValueError, match="larger than the 10 training examples"):
    list(batches.train_batches(make_split(10), 16, seed=0, epoch=0))


def test_balanced_batches_follow_libauc_dual_sampler():
  split = make_split(200, imbalance=0.1, seed=3)
  n_pos = int(split.labels.sum())
  rate = 0.25
  fractions = {1: rate, 0: 1 - rate}
  out = list(batches.train_batches(split, 16, seed=0, epoch=0, fractions=fractions))
  # num_pos = int(0.25 * 16) = 4 per batch; batches = max(n+ // 4, n- // 12).
  assert len(out) == max(n_pos // 4, (200 - n_pos) // 12)
  assert len(out) == batches.num_train_batches(split, 16, fractions=fractions)
  for b in out:
    assert b["label"].sum() == 4
  positives = np.concatenate([b["index"][b["label"] == 1] for b in out])
  assert len(positives) > n_pos  # the minority class is oversampled
  # Each pass over a class's pool sees every member before any repeats.
  assert len(set(positives[:n_pos].tolist())) == n_pos


def test_balanced_multiclass_equal_shares():
  split = make_split(90, num_classes=3)
  out = list(batches.train_batches(split, 9, seed=0, epoch=0, sampler="balanced"))
  for b in out:
    assert np.bincount(b["label"], minlength=3).tolist() == [3, 3, 3]


def test_per_class_counts_rounding():
  labels = np.array([0, 1, 2] * 5)
  assert sum(batches.per_class_counts(labels, 10).values()) == 10
  assert batches.per_class_counts(np.array([0, 1] * 5), 5, {0: 0.9, 1: 0.1}) == {0: 4, 1: 1}
  with pytest.raises(ValueError, match="multi-label"):
    batches.per_class_counts(np.zeros((4, 3)), 4)
