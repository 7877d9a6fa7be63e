"""ESAM against a float64 NumPy transcription of its equations, over steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sam_jax
from sam_jax.optimizers.esam import subset_size, weight_mask
from tests.optimizers import mlp_problem as mp


def example_losses(params, x, y):
  return jax.vmap(lambda xi, yi: mp.jax_loss(params, xi[None], yi[None]))(x, y)


def numpy_example_losses(flat, x, y):
  return np.array([mp.numpy_loss_and_grad(flat, x[i:i + 1], y[i:i + 1])[0]
                   for i in range(len(y))])


def esam_reference(w, x, y, mask, rho, beta, gamma, valid=None):
  """One ESAM direction in float64: masked ascent scaled by 1/β, then the
  gradient of the ⌊γB⌋ examples whose loss rose most (Du et al., Alg. 1)."""
  g = mp.numpy_grad(w, x, y)
  g_masked = {k: g[k] * mask[k] for k in g}
  perturbed = mp.add(w, g_masked, rho / (beta * (mp.norm(g_masked) + 1e-12)))
  if gamma == 1:
    return mp.numpy_grad(perturbed, x, y)
  rise = numpy_example_losses(perturbed, x, y) - numpy_example_losses(w, x, y)
  if valid is not None:
    rise = np.where(valid, rise, -np.inf)
  chosen = np.argsort(-rise, kind="stable")[:max(1, int(len(y) * gamma))]
  if valid is not None:
    chosen = chosen[valid[chosen]]
  return mp.numpy_grad(perturbed, x[chosen], y[chosen])


def run(tx, problem, steps, jit, valid=None):
  x, y = jnp.asarray(problem.x, jnp.float32), jnp.asarray(problem.y)

  def one(params, state):
    examples = sam_jax.optimizers.examples_from_loss(example_losses, x, y, valid=valid)
    return tx.update(problem.grad_fn(params)[0], state, params, grad_fn=problem.grad_fn,
                     examples=examples)

  one = jax.jit(one) if jit else one
  params, state = problem.params, tx.init(problem.params)
  directions, weights = [], []
  for _ in range(steps):
    weights.append(mp.to_flat(params))
    out, state = one(params, state)
    directions.append(out)
    params = jax.tree.map(lambda w, d: w - 0.3 * d, params, out)
  return directions, weights


def masks_at(step, beta, seed, problem):
  """The draw the transformation makes (the one random piece the reference shares)."""
  return mp.to_flat(jax.tree.map(lambda m: np.float64(m),
                                 weight_mask(seed, jnp.int32(step), beta,
                                                      problem.params)))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("beta,gamma", [(1.0, 1.0), (0.5, 1.0), (1.0, 0.5), (0.6, 0.25)])
def test_esam_matches_its_equations_over_steps(problem, jit, beta, gamma):
  rho, seed, steps = 0.2, 3, 4
  directions, weights = run(sam_jax.esam(rho, beta, gamma, seed=seed), problem, steps, jit)
  for t, (direction, w) in enumerate(zip(directions, weights)):
    want = esam_reference(w, problem.x, problem.y, masks_at(t, beta, seed, problem), rho, beta,
                          gamma)
    mp.assert_trees_close(direction, want, rtol=2e-4)


def test_padding_is_never_selected_before_a_real_example(problem):
  valid = np.ones(mp.N, bool)
  valid[::3] = False
  directions, weights = run(sam_jax.esam(0.2, 1.0, 0.75), problem, 2, True,
                            valid=jnp.asarray(valid))
  for direction, w in zip(directions, weights):
    want = esam_reference(w, problem.x, problem.y, {k: 1.0 for k in w}, 0.2, 1.0, 0.75,
                          valid=valid)
    mp.assert_trees_close(direction, want, rtol=2e-4)


def test_beta_and_gamma_one_is_sam(problem):
  got, _ = run(sam_jax.esam(0.1, 1.0, 1.0), problem, 1, True)
  want = optax.chain(sam_jax.sam(0.1)).update(
      problem.clean_grads(), optax.chain(sam_jax.sam(0.1)).init(problem.params), problem.params,
      grad_fn=problem.grad_fn)[0]
  for a, b in zip(jax.tree.leaves(got[0]), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_adaptive_with_beta_and_gamma_one_is_the_element_wise_sam(problem):
  got, _ = run(sam_jax.esam(0.5, 1.0, 1.0, adaptive=True), problem, 1, True)
  tx = sam_jax.sam(0.5, adaptive=True)
  want = tx.update(problem.clean_grads(), tx.init(problem.params), problem.params,
                   grad_fn=problem.grad_fn)[0]
  for a, b in zip(jax.tree.leaves(got[0]), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_weight_mask_draws_each_leaf_with_chance_beta(problem):
  draws = np.array([jax.tree.leaves(weight_mask(0, jnp.int32(t), 0.3, problem.params))
                    for t in range(400)])
  assert draws.shape == (400, 5)
  assert abs(draws.mean() - 0.3) < 0.05
  assert len({tuple(row) for row in draws}) > 10  # the steps draw differently


def test_the_subset_has_a_static_size():
  assert subset_size(128, 0.5) == 64
  assert subset_size(10, 0.01) == 1


@pytest.mark.parametrize("kwargs,match", [
    ({"rho": -0.1}, "rho"), ({"beta": 0.0}, "beta"), ({"beta": 1.5}, "beta"),
    ({"gamma": 0.0}, "gamma"), ({"gamma": lambda t: 0.5}, "Python float")])
def test_bad_hyperparameters_are_named(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sam_jax.esam(**kwargs)


def test_selection_without_examples_says_what_is_missing(problem):
  tx = sam_jax.esam(0.1, gamma=0.5)
  with pytest.raises(ValueError, match="examples="):
    tx.update(problem.clean_grads(), tx.init(problem.params), problem.params,
              grad_fn=problem.grad_fn)


def test_the_train_step_feeds_esam_and_its_chain():
  assert sam_jax.optimizers.selects_examples(
      optax.chain(sam_jax.esam(), optax.sgd(0.1)).init({"w": jnp.zeros(2)}))
  assert not sam_jax.optimizers.selects_examples(
      optax.chain(sam_jax.sam(), optax.sgd(0.1)).init({"w": jnp.zeros(2)}))
