"""optax wrappers around or inside a sharpness chain: inject_hyperparams works (see
test_common.py), MultiSteps and apply_if_finite work around the base optimizer and are
refused, with the right composition in the message, around the sharpness method."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sam_jax
from tests.optimizers import mlp_problem as mp


def batches(problem, parts=2):
  x = jnp.asarray(problem.x, jnp.float32)
  y = jnp.asarray(problem.y)
  size = len(x) // parts
  return [(x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]) for i in range(parts)]


def step(tx, state, params, x, y):
  grad_fn = sam_jax.grad_fn_from_loss(mp.jax_loss, x, y)
  updates, state, _ = sam_jax.update_with_aux(tx, grad_fn(params)[0], state, params,
                                              grad_fn=grad_fn)
  return updates, state


@pytest.mark.parametrize("wrap", [lambda tx: optax.MultiSteps(tx, every_k_schedule=2),
                                  lambda tx: optax.apply_if_finite(tx, 3)],
                         ids=["MultiSteps", "apply_if_finite"])
def test_a_sharpness_method_inside_the_wrapper_is_refused(problem, wrap):
  tx = wrap(optax.chain(sam_jax.sam(0.05), optax.sgd(0.1)))
  (x, y), _ = batches(problem)
  with pytest.raises(ValueError, match=r"put it first and wrap the rest: optax\.chain\(sam_jax"):
    step(tx, tx.init(problem.params), problem.params, x, y)


def test_gradient_accumulation_around_the_base_optimizer(problem):
  """chain(sam, MultiSteps(sgd, 2)): each micro-batch's SAM direction, averaged, applied
  every second step."""
  tx = optax.chain(sam_jax.sam(0.05), optax.MultiSteps(optax.sgd(0.1), every_k_schedule=2))
  state, params = tx.init(problem.params), problem.params
  directions = []
  for x, y in batches(problem):
    updates, state = jax.jit(lambda s, x, y: step(tx, s, params, x, y))(state, x, y)
    sam = sam_jax.sam(0.05)
    directions.append(step(sam, sam.init(params), params, x, y)[0])
    if len(directions) == 1:
      assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))
  expected = jax.tree.map(lambda a, b: -0.1 * (a + b) / 2, *directions)
  for got, want in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_apply_if_finite_around_the_base_optimizer_sees_the_adversarial_gradient(problem):
  """A gradient that is finite at w but not at w + eps is rejected, not applied."""
  tx = optax.chain(sam_jax.sam(0.05), optax.apply_if_finite(optax.sgd(0.1), 3))
  state, params = tx.init(problem.params), problem.params
  (x, y), _ = batches(problem)
  clean = sam_jax.grad_fn_from_loss(mp.jax_loss, x, y)
  nan_at_perturbed = lambda p: (jax.tree.map(lambda g: g * jnp.nan, clean(p)[0]), None)
  updates, state, _ = sam_jax.update_with_aux(tx, clean(params)[0], state, params,
                                              grad_fn=nan_at_perturbed)
  assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))
  assert int(state[1].total_notfinite) == 1
