"""Randomized SAM (RST) against a float64 NumPy transcription, given its Bernoulli draws."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sam_jax
from sam_jax.optimizers.randomized_sam import draw
from tests.optimizers import mlp_problem as mp
from tests.optimizers.conftest import run_updates


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("probability", [0.5, optax.linear_schedule(0.2, 0.9, 10)])
def test_randomized_sam_matches_reference_over_steps(problem, jit, probability):
  rho, lr, seed, steps = 0.1, 0.5, 3, 10
  tx = optax.chain(sam_jax.randomized_sam(rho, probability, seed=seed), optax.sgd(lr))
  updates, weights = run_updates(tx, problem, jit=jit, steps=steps, apply=True)
  took = []
  for t, (actual, w) in enumerate(zip(updates, weights)):
    p = float(probability(t)) if callable(probability) else probability
    take = float(draw(seed, jnp.int32(t))) < p
    took.append(take)
    g = problem.numpy_grad(w)
    want = problem.numpy_grad(mp.add(w, mp.scale(g, rho / (mp.norm(g) + 1e-12)))) if take else g
    mp.assert_trees_close(actual, mp.scale(want, -lr))
  assert any(took) and not all(took), took


@pytest.mark.parametrize("probability,sam_steps", [(0.0, 0), (1.0, 4)])
def test_probability_zero_and_one_are_the_base_optimizer_and_sam(problem, probability, sam_steps):
  tx = sam_jax.randomized_sam(0.1, probability)
  got = run_updates(tx, problem, jit=True, steps=4)
  reference = sam_jax.sam(0.1) if probability else optax.identity()
  want = run_updates(reference, problem, jit=True, steps=4) if probability else \
      [problem.clean_grads()] * 4
  for a, b in zip(got, want):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  state = tx.init(problem.params)
  for _ in range(4):
    _, state = tx.update(problem.clean_grads(), state, problem.params, grad_fn=problem.grad_fn)
  assert int(state.sam_steps) == sam_steps


def test_draws_are_uniform_and_depend_on_the_seed():
  counts = jnp.arange(4000, dtype=jnp.int32)
  u = np.asarray(jax.vmap(lambda t: draw(0, t))(counts))
  assert 0.0 <= u.min() and u.max() < 1.0
  assert abs(u.mean() - 0.5) < 0.02 and abs((u < 0.3).mean() - 0.3) < 0.03
  other = np.asarray(jax.vmap(lambda t: draw(1, t))(counts))
  assert np.mean(u == other) < 0.01


@pytest.mark.parametrize("kwargs,match", [(dict(probability=1.5), "probability"),
                                          (dict(probability=-0.1), "probability"),
                                          (dict(seed=1.0), "seed"),
                                          (dict(rho=-0.1), "rho")])
def test_invalid_configurations(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sam_jax.randomized_sam(**kwargs)
