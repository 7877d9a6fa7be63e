"""Gradient accumulation and rematerialization: what they compute and what they save.

* Without BatchNorm, a step over ``k`` micro-batches equals one step on the
  whole batch, for SGD and for sharpness methods (their perturbation and
  adversarial gradient are the whole batch's), and differs from m-sharpness
  (each micro-batch perturbed with its own gradient).
* With BatchNorm and an objective with per-example state, plain SGD over
  micro-batches equals the m-sharpness step over the same sub-batches (both
  treat the parts as devices: statistics averaged, per-example changes added).
* Rematerialization changes neither the parameter tree nor the step.
* Both lower the compiled step's peak memory.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax
import pytest

import sam_jax
from sam_jax import cli, models
from sam_jax.data import dataset as ds
from sam_jax.train import memory, objectives, parallel
from sam_jax.train.losses import softmax_cross_entropy
from sam_jax.train.state import create_train_state
from sam_jax.train.step import make_train_step
from tests.data.synthetic import write_medmnist_npz
from tests.train.parallel_check import BatchNormNet, LayerNormNet

RNG = np.random.default_rng(3)
BATCH = {"image": RNG.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8),
         "label": RNG.integers(0, 3, 16).astype(np.int32)}


TXS = {
    "sgd_momentum": lambda: optax.sgd(0.1, momentum=0.9),
    "sam": lambda: optax.chain(sam_jax.sam(0.3), optax.sgd(0.1)),
    "crsam": lambda: optax.chain(sam_jax.crsam(0.3, 0.2, 0.1), optax.sgd(0.1)),
}


def one_step(module, tx, batch, objective=None, **step_options):
  apply_fn, params, model_state = models.from_linen(module, jax.random.key(0), batch["image"][:1])
  objective = objectives.as_objective(objective or softmax_cross_entropy())
  state = create_train_state(params, model_state, tx, objective)
  m_sharpness = step_options.pop("m_sharpness", 1)
  build = functools.partial(make_train_step, apply_fn, objective, tx, **step_options)
  step = parallel.place(build, m_sharpness=m_sharpness).step_fn
  new_state, metrics = step(state, batch, jax.random.key(7))
  return jax.tree.map(np.asarray, new_state), jax.tree.map(np.asarray, metrics)


def assert_close(a, b, rtol=2e-5, atol=2e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def differs(a, b):
  return any(not np.allclose(x, y, rtol=1e-4, atol=1e-5)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.parametrize("name", sorted(TXS))
@pytest.mark.parametrize("k", [2, 4])
def test_micro_batches_equal_one_big_batch_without_batchnorm(name, k):
  whole, whole_metrics = one_step(LayerNormNet(), TXS[name](), BATCH)
  accumulated, metrics = one_step(LayerNormNet(), TXS[name](), BATCH, accumulation_steps=k)
  assert_close(accumulated.params, whole.params)
  assert_close(accumulated.opt_state, whole.opt_state)
  for key in ("loss", "accuracy", "grad_norm", "update_norm", "perturbed_loss"):
    if key in whole_metrics:
      np.testing.assert_allclose(metrics[key], whole_metrics[key], rtol=2e-5, err_msg=key)
  if name != "sgd_momentum":
    # Perturbing each micro-batch with its own gradient (m-sharpness) is another step.
    per_part, _ = one_step(LayerNormNet(), TXS[name](), BATCH, m_sharpness=k)
    assert differs(per_part.params, whole.params)


def test_with_batchnorm_and_per_example_state_micro_batches_are_parts_like_devices():
  labels = np.asarray([0, 1] * 8, np.int32)  # both classes in every micro-batch
  batch = {"image": BATCH["image"], "label": labels, "index": np.arange(16, dtype=np.int32)}
  objective = objectives.ap(ds.BINARY, 16, margin=1.0, gamma=0.9, surrogate="squared_hinge")
  accumulated, _ = one_step(BatchNormNet(classes=2), optax.sgd(0.1), batch, objective,
                            task=ds.BINARY, accumulation_steps=4)
  as_parts, _ = one_step(BatchNormNet(classes=2), optax.sgd(0.1), batch, objective,
                         task=ds.BINARY, m_sharpness=4)
  whole, _ = one_step(BatchNormNet(classes=2), optax.sgd(0.1), batch, objective, task=ds.BINARY)
  assert_close(accumulated.params, as_parts.params)
  assert_close(accumulated.model_state, as_parts.model_state)
  assert_close(accumulated.objective_state, as_parts.objective_state)
  # ...and not the whole batch's: BatchNorm normalized each micro-batch alone.
  assert differs(accumulated.model_state, whole.model_state)
  # The AP state keeps a row per positive: every positive's row moved, from all micro-batches.
  start = jax.tree.leaves(objective.init()[1])
  moved = [np.any(np.asarray(new) != np.asarray(old), axis=tuple(range(1, np.ndim(old))))
           for new, old in zip(jax.tree.leaves(accumulated.objective_state), start)
           if np.ndim(old) > 0]
  assert moved and all(np.array_equal(m, labels == 1) for m in moved)


def test_a_batch_that_does_not_split_is_named():
  with pytest.raises(ValueError, match="does not split into 3 micro-batches"):
    one_step(LayerNormNet(), optax.sgd(0.1), BATCH, accumulation_steps=3)
  with pytest.raises(ValueError, match="accumulation_steps must be an integer >= 1"):
    make_train_step(lambda *a, **k: None, softmax_cross_entropy(), optax.sgd(0.1),
                    accumulation_steps=0)


@pytest.mark.parametrize("name,shape", [("resnet18", (8, 16, 16, 1)), ("vit_ti", (8, 16, 16, 1))])
def test_remat_changes_neither_the_parameters_nor_the_step(name, shape):
  batch = {"image": RNG.integers(0, 256, shape, dtype=np.uint8),
           "label": RNG.integers(0, 2, shape[0]).astype(np.int32)}
  small = dict(stage_sizes=(1, 1, 1, 1), width=0.0625) if name == "resnet18" else \
      dict(patch_size=4, depth=2)
  states = []
  for remat in (False, True):
    model = models.create_model(name, 2, remat=remat, **small)
    states.append(one_step(model, optax.sgd(0.1, momentum=0.9), batch)[0])
  assert jax.tree.structure(states[0]) == jax.tree.structure(states[1])
  assert_close(states[0].params, states[1].params, rtol=1e-4, atol=1e-5)
  assert_close(states[0].model_state, states[1].model_state, rtol=1e-4, atol=1e-5)


def test_both_lower_the_compiled_steps_peak_memory():
  batch = {"image": np.zeros((32, 32, 32, 1), np.uint8), "label": np.zeros(32, np.int32)}
  tx = optax.chain(sam_jax.sam(0.05), optax.sgd(0.1))

  def peak(remat=False, accumulation_steps=1):
    model = models.create_model("resnet18", 2, width=0.125, stage_sizes=(2, 2), remat=remat)
    apply_fn, params, model_state = models.from_linen(model, jax.random.key(0), batch["image"][:1])
    state = create_train_state(params, model_state, tx)
    step = jax.jit(make_train_step(apply_fn, softmax_cross_entropy(), tx,
                                   accumulation_steps=accumulation_steps))
    return memory.compiled_bytes(step.lower(state, batch, jax.random.key(0)).compile())

  plain, rematerialized, accumulated = peak(), peak(remat=True), peak(accumulation_steps=4)
  assert rematerialized < 0.8 * plain, (rematerialized, plain)
  assert accumulated < 0.5 * plain, (accumulated, plain)


def test_the_options_train_from_the_cli_and_bad_ones_are_one_line(tmp_path, capsys):
  npz = str(write_medmnist_npz(tmp_path / "tiny.npz", counts=(64, 16, 16), seed=2))
  common = ["train", "--dataset", npz, "--model", "resnet10", "--width", "0.0625",
            "--batch-size", "32", "--no-progress", "--epochs", "1"]
  assert cli.main([*common, "--accumulation-steps", "3", "--workdir", str(tmp_path / "a")]) == 2
  assert "does not split into accumulation_steps 3" in capsys.readouterr().err
  assert cli.main([*common, "--model", "vgg16_bn", "--remat",
                   "--workdir", str(tmp_path / "b")]) == 2
  assert "does not take one of" in capsys.readouterr().err
  assert cli.main([*common, "--optimizer", "sam", "--base-optimizer", "sgd",
                   "--learning-rate", "0.05", "--accumulation-steps", "2", "--remat",
                   "--workdir", str(tmp_path / "c")]) == 0
