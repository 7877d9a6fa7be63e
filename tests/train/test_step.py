"""The train step keeps SAM's invariants, for every method, with no per-method code."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sam_jax
from sam_jax import models
from sam_jax.data import augment
from sam_jax.train import parallel
from sam_jax.train.losses import softmax_cross_entropy
from sam_jax.train.state import create_train_state
from sam_jax.train.step import make_train_step, nonfinite_message

RNG = np.random.default_rng(0)
BATCH = {
    "image": RNG.integers(0, 256, (8, 12, 12, 1), dtype=np.uint8),
    "label": RNG.integers(0, 3, 8).astype(np.int32),
}
LOSS = softmax_cross_entropy()


class DropoutMLP(nn.Module):
  """No BatchNorm, so every quantity can be recomputed by hand."""

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(16)(x))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(3)(x)


class TinyBNNet(nn.Module):
  """A convolution with BatchNorm: compiles in a fraction of a ResNet's time."""

  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), use_bias=False, dtype=self.dtype)(x.astype(self.dtype))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
    x = nn.Dense(3, dtype=self.dtype)(jnp.mean(nn.relu(x), axis=(1, 2)))
    return x.astype(jnp.float32)


def small_resnet():
  return TinyBNNet()


def setup(module, tx):
  apply_fn, params, model_state = models.from_linen(module, jax.random.key(0), BATCH["image"][:1])
  state = create_train_state(params, model_state, tx)
  build = functools.partial(make_train_step, apply_fn, LOSS, tx)
  return apply_fn, state, build


def copy(tree):
  return jax.tree.map(jnp.copy, tree)


def test_batchnorm_statistics_come_from_the_clean_pass():
  tx = optax.chain(sam_jax.sam(0.5), optax.sgd(0.1))
  apply_fn, state, build = setup(small_resnet(), tx)
  images = augment.normalize(BATCH["image"])
  _, expected = apply_fn(state.params, state.model_state, images, train=True)
  new_state, _ = jax.jit(build())(copy(state), BATCH, jax.random.key(3))
  for a, b in zip(jax.tree.leaves(new_state.model_state), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  # The perturbed point's statistics would differ: the test can tell them apart.
  perturbed = jax.tree.map(lambda p: p + 0.3, state.params)
  _, other = apply_fn(perturbed, state.model_state, images, train=True)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(expected)))


def test_same_dropout_mask_in_both_passes_and_update_at_clean_weights():
  rho, lr = 0.5, 0.1
  tx = optax.chain(sam_jax.sam(rho), optax.sgd(lr))
  apply_fn, state, build = setup(DropoutMLP(), tx)
  rng = jax.random.key(7)
  new_state, metrics = jax.jit(build())(copy(state), BATCH, rng)

  dropout_rng, _ = jax.random.split(rng)
  images = augment.normalize(BATCH["image"])

  def loss_at(params, key):
    logits, _ = apply_fn(params, {}, images, train=True, rng=key)
    return LOSS(logits, BATCH["label"])

  def sam_update(second_key):
    g = jax.grad(loss_at)(state.params, dropout_rng)
    eps = jax.tree.map(lambda x: rho * x / sam_jax.optimizers.global_norm(g), g)
    g_p = jax.grad(loss_at)(jax.tree.map(jnp.add, state.params, eps), second_key)
    return jax.tree.map(lambda p, d: p - lr * d, state.params, g_p)  # at the clean weights

  same = sam_update(dropout_rng)
  fresh = sam_update(jax.random.key(99))
  for a, b, c in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(same), jax.tree.leaves(fresh)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert any(not np.allclose(a, c, atol=1e-6)
             for a, c in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(fresh)))
  assert float(metrics["perturbed_loss"]) == pytest.approx(
      float(loss_at(jax.tree.map(jnp.add, state.params, jax.tree.map(
          lambda x: rho * x / sam_jax.optimizers.global_norm(jax.grad(loss_at)(state.params, dropout_rng)),
          jax.grad(loss_at)(state.params, dropout_rng))), dropout_rng)), rel=1e-5)


METHODS = {
    "sgd": optax.sgd(0.05, momentum=0.9),
    "sam": optax.chain(sam_jax.sam(0.05), optax.sgd(0.05)),
    "asam": optax.chain(sam_jax.asam(), optax.sgd(0.05)),
    "gsam": optax.chain(sam_jax.gsam(0.05, alpha=0.1), optax.sgd(0.05)),
    "wsam": sam_jax.wsam(base_optimizer=optax.adam(1e-3), learning_rate=1e-3),
    "crsam": optax.chain(sam_jax.crsam(), optax.adam(1e-3)),
    "gcsam": optax.chain(sam_jax.gcsam(), optax.adam(1e-3)),
    "friendly_sam": optax.chain(sam_jax.friendly_sam(), optax.sgd(0.05)),
    "stable_sam": optax.chain(sam_jax.stable_sam(base=sam_jax.crsam()), optax.sgd(0.05)),
    "looksam": optax.chain(sam_jax.looksam(0.05, period=2), optax.sgd(0.05)),
    "ae_sam": optax.chain(sam_jax.ae_sam(0.05), optax.sgd(0.05)),
    "randomized_sam": optax.chain(sam_jax.randomized_sam(0.05), optax.sgd(0.05)),
    "esam": optax.chain(sam_jax.esam(0.05), optax.sgd(0.05)),
}
# Their second pass exists on some steps only, so its loss is not a metric.
NO_PERTURBED_LOSS = ("sgd", "looksam", "ae_sam", "randomized_sam")


def test_esam_ranks_the_batch_by_its_losses_and_descends_on_the_sharpest_half():
  rho, lr, gamma = 0.5, 0.1, 0.5
  tx = optax.chain(sam_jax.esam(rho, beta=1.0, gamma=gamma), optax.sgd(lr))
  apply_fn, state, build = setup(DropoutMLP(), tx)
  rng = jax.random.key(5)
  new_state, metrics = jax.jit(build())(copy(state), BATCH, rng)

  dropout_rng, _ = jax.random.split(rng)
  images = augment.normalize(BATCH["image"])
  labels = BATCH["label"]

  def losses_at(params, x, y):
    logits, _ = apply_fn(params, {}, x, train=True, rng=dropout_rng)
    return jax.vmap(lambda l, t: LOSS(l[None], t[None]))(logits, y)

  g = jax.grad(lambda p: jnp.mean(losses_at(p, images, labels)))(state.params)
  perturbed = jax.tree.map(lambda w, x: w + rho * x / sam_jax.optimizers.global_norm(g),
                           state.params, g)
  rise = losses_at(perturbed, images, labels) - losses_at(state.params, images, labels)
  chosen = np.argsort(-np.asarray(rise), kind="stable")[:4]
  g_p = jax.grad(lambda p: jnp.mean(losses_at(p, images[chosen], labels[chosen])))(perturbed)
  expected = jax.tree.map(lambda w, d: w - lr * d, state.params, g_p)
  for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # The perturbed loss is the whole batch's, as for SAM, not the chosen half's.
  assert float(metrics["perturbed_loss"]) == pytest.approx(
      float(jnp.mean(losses_at(perturbed, images, labels))), rel=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_every_method_runs_through_the_same_step(name):
  tx = METHODS[name]
  _, state, build = setup(small_resnet(), tx)
  step = parallel.jit_step(build)
  losses = []
  for i in range(3):
    state, metrics = step(state, BATCH, jax.random.key(i))
    losses.append(float(metrics["loss"]))
    assert bool(metrics["finite"])
  assert int(state.step) == 3 and all(np.isfinite(losses))
  assert ("perturbed_loss" in metrics) == (name not in NO_PERTURBED_LOSS)


def _nan_in(leaf_name: str, at_step: int = 0):
  """A transformation that makes one leaf's update NaN at one step."""

  def init(params):
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    def poison(path, u):
      hit = jax.tree_util.keystr(path, simple=True, separator="/") == leaf_name
      return jnp.where((state.count == at_step) & hit, jnp.nan, u) if hit else u
    updates = jax.tree_util.tree_map_with_path(poison, updates)
    return updates, optax.ScaleByScheduleState(count=state.count + 1)

  return optax.GradientTransformation(init, update)


def test_a_non_finite_update_is_not_applied_and_is_named():
  tx = optax.chain(sam_jax.sam(0.05), optax.sgd(0.05), _nan_in("Dense_1/bias", at_step=1))
  _, state, build = setup(DropoutMLP(), tx)
  step = parallel.jit_step(build)
  state, metrics = step(state, BATCH, jax.random.key(0))
  assert bool(metrics["finite"])
  before = jax.tree.map(np.asarray, state)
  state, metrics = step(state, BATCH, jax.random.key(1))
  assert not bool(metrics["finite"])
  # Nothing of the failed step was applied (the step counter moves on).
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before.params)):
    np.testing.assert_array_equal(a, b)
  message = nonfinite_message(2, metrics, before.params)
  assert "step 2" in message and "Dense_1/bias" in message and "Dense_0" not in message


def test_msharpness_on_one_device_is_the_mean_of_sub_batch_directions():
  rho, lr, k = 0.2, 0.1, 2
  tx = optax.chain(sam_jax.sam(rho), optax.sgd(lr))
  apply_fn, state, build = setup(DropoutMLP(), tx)
  rng = jax.random.key(4)
  new_state, _ = parallel.msharpness_step(build, k)(copy(state), BATCH, rng)

  directions = []
  for i in range(k):
    sub = {key: v[i * 4:(i + 1) * 4] for key, v in BATCH.items()}
    sub_rng = jax.random.fold_in(rng, i)  # as the step folds in the sub-batch index
    dropout_rng, _ = jax.random.split(sub_rng)
    images = augment.normalize(sub["image"])
    loss = lambda p: LOSS(apply_fn(p, {}, images, train=True, rng=dropout_rng)[0], sub["label"])
    g = jax.grad(loss)(state.params)
    eps = jax.tree.map(lambda x: rho * x / sam_jax.optimizers.global_norm(g), g)
    directions.append(jax.grad(loss)(jax.tree.map(jnp.add, state.params, eps)))
  mean = jax.tree.map(lambda a, b: (a + b) / 2, *directions)
  expected = jax.tree.map(lambda p, d: p - lr * d, state.params, mean)
  for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_an_nnx_model_trains_with_the_same_step():
  from tests.models.test_models import make_nnx_model
  apply_fn, params, model_state = models.from_nnx(make_nnx_model())
  tx = optax.chain(sam_jax.sam(0.05), optax.sgd(0.1))
  state = create_train_state(params, copy(model_state), tx)
  batch = {"image": RNG.integers(0, 256, (8, 10, 10, 1), dtype=np.uint8),
           "label": RNG.integers(0, 3, 8).astype(np.int32)}
  step = parallel.jit_step(functools.partial(make_train_step, apply_fn, LOSS, tx))
  new_state, metrics = step(state, batch, jax.random.key(0))
  assert bool(metrics["finite"]) and "perturbed_loss" in metrics
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(new_state.model_state["bn"]),
                                                   jax.tree.leaves(model_state["bn"]))]
  assert all(moved)


def test_bfloat16_compute_with_float32_parameters():
  tx = optax.chain(sam_jax.sam(0.05), optax.sgd(0.05))
  _, state, build = setup(TinyBNNet(dtype=jnp.bfloat16), tx)
  jaxpr = str(jax.make_jaxpr(build())(state, BATCH, jax.random.key(0)))
  assert "bf16" in jaxpr
  new_state, metrics = parallel.jit_step(build)(state, BATCH, jax.random.key(0))
  assert bool(metrics["finite"])
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(new_state.params))
