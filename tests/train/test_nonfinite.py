"""Non-finite values injected into a run: into a batch, into a gradient, and by an
overflowing learning rate, for SGD, SAM and an AUC objective (AUC-margin with PESG).

The documented behaviour (:mod:`sam_jax.train.step`): with ``nonfinite="error"``
the run stops with :class:`NonFiniteError` naming the step and the parameter
paths, and the checkpoint written before that step restores, finite, to the
state the step started from; with ``"skip"`` the poisoned steps are counted,
left out of the epoch's means, and the run ends with finite weights.
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.data import augment as augment_lib
from sam_jax.train import config as config_lib
from sam_jax.train import loop, objectives, setup
from sam_jax.train.step import NonFiniteError
from tests.data.synthetic import write_medmnist_npz

POISONED = 42  # the training example whose batch is poisoned: with seed 0 it is in the
# second batch of the first epoch (checked below), so a checkpoint precedes it
METHODS = {
    "sgd": dict(optimizer="sgd", learning_rate=0.05),
    "sam": dict(optimizer="sam", base_optimizer="sgd", rho=0.05, learning_rate=0.05),
    "aucm_pesg": dict(loss="aucm", optimizer="pesg", learning_rate=0.05),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  npz = write_medmnist_npz(tmp_path_factory.mktemp("nonfinite") / "tiny.npz",
                           counts=(96, 16, 16), seed=4)
  return config_lib.TrainConfig(dataset=str(npz), model="resnet10", width=0.0625, batch_size=32,
                                eval_batch_size=32, epochs=2, checkpoint_every_steps=1,
                                progress=False)


def poisoned_step(config) -> int:
  """The 1-based step whose batch holds example ``POISONED`` in the first epoch."""
  train = setup.load_data(config)["train"]
  for step, batch in enumerate(setup.train_batches(config, train, 0), start=1):
    if POISONED in batch["index"].tolist():
      assert step > 1, "choose a POISONED example of a later batch"
      return step
  raise AssertionError("the poisoned example is in no batch")


def poison_batch(monkeypatch):
  """Example POISONED's image becomes NaN once on the device (its uint8 pixels are marked
  255 everywhere and the augmentation turns such an image into NaN)."""
  load, plain_augment_fn = setup.load_data, augment_lib.augment_fn

  def marked(config):
    dataset = load(config)
    images = dataset["train"].images.copy()
    images[POISONED] = 255
    return dataset.__class__(dataset.name, dataset.task, dataset.class_names,
                             {**dataset.splits, "train": dataset["train"].__class__(
                                 images, dataset["train"].labels)}, dataset.meta)

  def augment_fn(config):
    plain = plain_augment_fn(config)

    def fn(key, images, train=True):
      out = plain(key, images, train=train)
      marked_ = jnp.all(images == 255, axis=tuple(range(1, images.ndim)))
      return jnp.where(marked_.reshape((-1,) + (1,) * (images.ndim - 1)) & train, jnp.nan, out)
    return fn

  monkeypatch.setattr(setup, "load_data", marked)
  monkeypatch.setattr(loop.augment_lib, "augment_fn", augment_fn)


def poison_gradient(monkeypatch):
  """On batches holding example POISONED the objective's gradient is 0 * inf = NaN while
  its value stays finite."""
  build = setup.build_objective

  def poisoned(config, dataset):
    objective = build(config, dataset)

    def loss(variables, state, logits, labels, index, mask):
      value, new_state = objective.loss(variables, state, logits, labels, index, mask)
      # u is 0 on a poisoned batch, else 1; du/dlogits = 0 either way, and
      # d sqrt(u)/du is inf only at 0 (a jnp.where around the sqrt would leak
      # its NaN gradient into every step).
      u = jnp.where(jnp.any(index == POISONED), 0.0, 1.0) + 0.0 * jnp.sum(logits)
      return value + jnp.sqrt(u) - jax.lax.stop_gradient(jnp.sqrt(u)), new_state
    return objectives.Objective(objective.name, objective.init, loss)

  monkeypatch.setattr(setup, "build_objective", poisoned)


def overflow(config):
  return config.replace(learning_rate=1e30, momentum=0.0)


def finite(tree) -> bool:
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating))


# The default suite injects into the gradient for every method and into a batch and the
# learning rate for one each; `make test-slow` runs the whole matrix.
INJECTIONS = [
    pytest.param(injection, method, marks=() if injection == "gradient" or (injection, method) in (
        ("batch", "sam"), ("learning_rate", "aucm_pesg")) else pytest.mark.slow)
    for injection in ("batch", "gradient", "learning_rate") for method in sorted(METHODS)
]


@pytest.mark.parametrize("injection,method", INJECTIONS)
def test_error_policy_stops_at_the_step_and_keeps_the_last_good_checkpoint(
    base, method, injection, tmp_path, monkeypatch):
  config = base.replace(**METHODS[method])
  expected_step = poisoned_step(config) if injection != "learning_rate" else None
  if injection == "batch":
    poison_batch(monkeypatch)
  elif injection == "gradient":
    poison_gradient(monkeypatch)
  else:
    config = overflow(config)
  with pytest.raises(NonFiniteError) as raised:
    loop.train_and_evaluate(config, tmp_path, log=lambda m: None)
  message = str(raised.value)
  step = int(re.search(r"at step (\d+)", message).group(1))
  if expected_step is not None:
    assert step == expected_step, message
  assert "--nonfinite skip" in message and re.search(r"params|Conv|Dense|kernel", message)
  assert not (tmp_path / "results.json").exists()
  # The newest checkpoint is the state before the failed step, and it restores finite.
  dataset = setup.load_data(config)
  last = setup.restore_run(tmp_path, dataset, which="last")
  assert last.step == step - 1 and int(last.state.step) == step - 1
  assert finite(last.state.params) and finite(last.state.opt_state)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_skip_policy_counts_the_poisoned_steps_and_ends_finite(base, method, tmp_path,
                                                               monkeypatch):
  config = base.replace(**METHODS[method], nonfinite="skip")
  poison_gradient(monkeypatch)
  results = loop.train_and_evaluate(config, tmp_path, log=lambda m: None)
  # Example POISONED is in exactly one batch per epoch.
  assert results["skipped_steps"] == config.epochs
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["skipped_steps"] for r in records] == [1, 1]
  assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val"]["loss"]) for r in records)
  dataset = setup.load_data(config)
  assert finite(setup.restore_run(tmp_path, dataset, which="last").state.params)
