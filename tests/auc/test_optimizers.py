"""PESG, SOAP, SOPA, SOPA-s: one and several steps against a float64 transcription."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sam_jax
from sam_jax import auc
from tests.auc import reference as ref

SHAPES = {"w": (3, 4), "c": (4,)}


def problem(seed=0, steps=5, with_aucm=False):
  rng = np.random.default_rng(seed)
  params = {k: rng.normal(0, 1, s) for k, s in SHAPES.items()}
  if with_aucm:
    params.update(a=np.float64(0.3), b=np.float64(0.1), alpha=np.float64(0.2))
  # Gradients large enough that clipping at 1 bites on some entries.
  grads = [{k: rng.normal(0, 1.5, np.shape(v)) for k, v in params.items()} for _ in range(steps)]
  return params, grads


def as_tree(flat, with_aucm):
  tree = {"model": {k: jnp.asarray(flat[k], jnp.float32) for k in SHAPES}}
  if with_aucm:
    tree["objective"] = {k: jnp.asarray(flat[k], jnp.float32) for k in ("a", "b", "alpha")}
  return tree


def as_flat(tree):
  flat = {k: np.asarray(v, np.float64) for k, v in tree["model"].items()}
  flat.update({k: np.asarray(v, np.float64) for k, v in tree.get("objective", {}).items()})
  return flat


def run(tx, params, grads, with_aucm, jit):
  tree = as_tree(params, with_aucm)
  state = tx.init(tree)
  update = jax.jit(tx.update) if jit else tx.update
  out = []
  for g in grads:
    updates, state = update(as_tree(g, with_aucm), state, tree)
    tree = optax.apply_updates(tree, updates)
    out.append(as_flat(tree))
  return out


def assert_histories_close(got, expected):
  for t, (a, e) in enumerate(zip(got, expected)):
    for k in e:
      np.testing.assert_allclose(a[k], e[k], rtol=2e-5, atol=2e-6, err_msg=f"step {t + 1}, {k}")


CASES = {
    "pesg documented (no momentum)": (
        lambda lr: auc.pesg(lr, weight_decay=1e-3, epoch_decay=2e-2, margin=0.8),
        dict(mode="sgd", clip=1.0, wd=1e-3, epoch_decay=2e-2, margin=0.8), True),
    "pesg libauc momentum": (
        lambda lr: auc.pesg(lr, momentum=0.9, momentum_convention="libauc", epoch_decay=3e-3),
        dict(mode="sgd", clip=1.0, wd=1e-5, epoch_decay=3e-3, momentum=0.9,
             convention="libauc", margin=1.0), True),
    "pesg heavy-ball momentum": (
        lambda lr: auc.pesg(lr, momentum=0.5, weight_decay=0.0),
        dict(mode="sgd", clip=1.0, epoch_decay=2e-3, momentum=0.5, margin=1.0), True),
    "pesg adam": (
        lambda lr: auc.pesg(lr, mode="adam", clip_value=0.5),
        dict(mode="adam", clip=0.5, wd=1e-5, epoch_decay=2e-3, margin=1.0), True),
    "soap adam": (
        lambda lr: auc.soap(lr), dict(mode="adam", clip=1.0, wd=1e-5), False),
    "soap sgd": (
        lambda lr: auc.soap(lr, mode="sgd"),
        dict(mode="sgd", clip=1.0, wd=1e-5, momentum=0.9, dampening=0.1), False),
    "soap sgd nesterov": (
        lambda lr: auc.soap(lr, mode="sgd", nesterov=True, dampening=0.0),
        dict(mode="sgd", clip=1.0, wd=1e-5, momentum=0.9, nesterov=True), False),
    "sopa adam": (lambda lr: auc.sopa(lr), dict(mode="adam", clip=1.0), False),
    "sopa sgd": (lambda lr: auc.sopa(lr, mode="sgd"),
                 dict(mode="sgd", clip=1.0, momentum=0.9), False),
    "sopa_s adam": (lambda lr: auc.sopa_s(lr, epoch_decay=1e-2),
                    dict(mode="adam", clip=2.0, wd=1e-5, epoch_decay=1e-2), False),
    "sopa_s sgd": (lambda lr: auc.sopa_s(lr, mode="sgd"),
                   dict(mode="sgd", clip=2.0, wd=1e-5, momentum=0.9, dampening=0.1), False),
}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", list(CASES))
def test_steps_match_transcription(name, jit):
  factory, options, with_aucm = CASES[name]
  params, grads = problem(seed=len(name), with_aucm=with_aucm)
  got = run(factory(0.05), params, grads, with_aucm, jit)
  expected = ref.dam_steps(params, grads, lr=lambda t: 0.05, **options)
  assert_histories_close(got[:1], expected[:1])  # one step
  assert_histories_close(got, expected)          # several


def test_pesg_stages_reset_the_reference_and_follow_the_schedule():
  """update_regularizer at steps 3 and 5: the anchor becomes the average iterate, lr /10."""
  params, grads = problem(seed=3, steps=7, with_aucm=True)
  schedule = optax.piecewise_constant_schedule(0.1, {3: 0.1, 5: 0.1})
  tx = auc.pesg(schedule, epoch_decay=0.05, momentum=0.9, momentum_convention="libauc",
                reference_resets=(3, 5))
  got = run(tx, params, grads, True, jit=True)
  expected = ref.dam_steps(params, grads, lr=lambda t: 0.1 * 0.1 ** ((t >= 3) + (t >= 5)),
                           mode="sgd", clip=1.0, wd=1e-5, epoch_decay=0.05, momentum=0.9,
                           convention="libauc", resets=(3, 5), margin=1.0)
  assert_histories_close(got, expected)
  # Without the resets the trajectory differs: the test can tell.
  no_reset = ref.dam_steps(params, grads, lr=lambda t: 0.1 * 0.1 ** ((t >= 3) + (t >= 5)),
                           mode="sgd", clip=1.0, wd=1e-5, epoch_decay=0.05, momentum=0.9,
                           convention="libauc", margin=1.0)
  assert not np.allclose(got[-1]["w"], no_reset[-1]["w"], rtol=1e-6, atol=1e-7)


def test_pesg_noise_reference_is_libauc_init():
  params, grads = problem(seed=4, with_aucm=True)
  tx = auc.pesg(0.1, epoch_decay=0.1, reference_init="noise", seed=7)
  tree = as_tree(params, True)
  state = tx.init(tree)
  reference = as_flat(state.reference)
  assert 0.005 < np.std(reference["w"]) < 0.02  # N(0, 0.01²)
  got = run(tx, params, grads, True, jit=True)
  expected = ref.dam_steps(params, grads, lr=lambda t: 0.1, clip=1.0, wd=1e-5, epoch_decay=0.1,
                           reference=reference, margin=1.0)
  assert_histories_close(got, expected)


def test_pesg_dual_ascent_is_clamped():
  params = {"w": np.zeros((3, 4)), "c": np.zeros(4), "a": 5.0, "b": 0.0, "alpha": 0.1}
  grads = [{k: np.zeros(np.shape(v)) for k, v in params.items()}]
  got = run(auc.pesg(1.0, weight_decay=0.0), params, grads, True, jit=False)
  assert got[0]["alpha"] == 0.0  # 0.1 + 1·(2(1 + 0 − 5) − 0.2) < 0 → 0
  params.update(a=-500.0, alpha=0.0)  # 0 + 10·2(1 + 0 + 500) > 999 → 999
  got = run(auc.pesg(10.0, weight_decay=0.0, epoch_decay=0.0), params, grads, True, jit=False)
  assert got[0]["alpha"] == 999.0


def test_sam_on_pesg_composes_and_ignores_the_dual_gradient():
  """optax.chain(sam, pesg): the dual's direction is replaced by PESG's closed form."""
  params, grads = problem(seed=5, steps=1, with_aucm=True)
  tree = as_tree(params, True)
  tx = optax.chain(sam_jax.sam(0.05), auc.pesg(0.1, weight_decay=0.0, epoch_decay=0.0))
  g = as_tree(grads[0], True)
  updates, _ = tx.update(g, tx.init(tree), tree, grad_fn=lambda p: (g, None))
  expected_alpha = np.clip(0.2 + 0.1 * (2 * (1 + (0.1 - 0.1 * np.clip(grads[0]["b"], -1, 1))
                                             - (0.3 - 0.1 * np.clip(grads[0]["a"], -1, 1)))
                                        - 0.4), 0, 999)
  assert float(tree["objective"]["alpha"] + updates["objective"]["alpha"]) == pytest.approx(
      expected_alpha, rel=1e-5)


@pytest.mark.parametrize("bad,match", [
    (dict(mode="rmsprop"), "mode must be one of"),
    (dict(learning_rate=-1.0), "learning_rate must be >= 0"),
    (dict(epoch_decay=-1.0), "epoch_decay must be >= 0"),
    (dict(momentum=1.0), "momentum must be < 1"),
    (dict(momentum_convention="nesterov"), "momentum_convention must be one of"),
    (dict(reference_resets=(0,)), "reference_resets are step counts >= 1"),
    (dict(clip_value=0.0), "clip_value must be > 0"),
])
def test_bad_hyperparameters_are_named(bad, match):
  with pytest.raises(ValueError, match=match):
    auc.pesg(**bad)


def test_dual_mask_finds_alpha_beside_a_and_b_only():
  params = {"model": {"alpha": jnp.zeros(2), "k": jnp.zeros(3)},
            "objective": {"a": jnp.zeros(()), "b": jnp.zeros(()), "alpha": jnp.zeros(())}}
  mask = auc.dual_mask(params)
  assert mask == {"model": {"alpha": False, "k": False},
                  "objective": {"a": False, "b": False, "alpha": True}}
