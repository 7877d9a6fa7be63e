"""WSAM against a float64 NumPy transcription of the official update."""

import numpy as np
import optax
import pytest

import sam_jax
from tests.optimizers import mlp_problem as mp
from tests.optimizers.conftest import run_updates
from tests.optimizers.test_sam import sam_reference


def clip(tree, max_norm):
  n = mp.norm(tree)
  return mp.scale(tree, min(1.0, max_norm / n))


def wsam_points(params, grad, rho, max_norm=None, eps=1e-12):
  g = grad(params)
  e = mp.scale(g, rho / (mp.norm(g) + eps))
  gp = grad(mp.add(params, e))
  if max_norm is not None:
    g, gp = clip(g, max_norm), clip(gp, max_norm)
  return g, gp


def wsam_coupled_reference(params, grad, rho, gamma, max_norm=None):
  alpha = gamma / (1 - gamma)
  g, gp = wsam_points(params, grad, rho, max_norm)
  return {k: alpha * gp[k] + (1 - alpha) * g[k] for k in g}


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.9])
def test_coupled_matches_reference(problem, jit, gamma):
  (direction,) = run_updates(sam_jax.wsam(0.1, gamma, decouple=False), problem, jit=jit)
  expected = wsam_coupled_reference(problem.params_np, problem.numpy_grad, 0.1, gamma)
  mp.assert_trees_close(direction, expected)


def test_coupled_with_max_norm_clips_both_gradients(problem):
  tx = sam_jax.wsam(0.1, 0.8, decouple=False, max_norm=0.05)
  (direction,) = run_updates(tx, problem, jit=True)
  expected = wsam_coupled_reference(problem.params_np, problem.numpy_grad, 0.1, 0.8, 0.05)
  mp.assert_trees_close(direction, expected)


def test_gamma_half_coupled_is_sam(problem):
  (direction,) = run_updates(sam_jax.wsam(0.05, 0.5, decouple=False), problem, jit=True)
  mp.assert_trees_close(direction, sam_reference(problem.params_np, problem.numpy_grad, 0.05))


@pytest.mark.parametrize("jit", [False, True])
def test_decoupled_matches_reference_over_steps(problem, jit):
  """Three steps of decoupled WSAM around SGD with momentum and a lr schedule."""
  lr = optax.linear_schedule(0.1, 0.05, 3)
  rho, gamma, mu = 0.1, 0.9, 0.9
  alpha = gamma / (1 - gamma)
  tx = sam_jax.wsam(rho, gamma, base_optimizer=optax.sgd(lr, momentum=mu), learning_rate=lr)
  updates, weights = run_updates(tx, problem, jit=jit, steps=3, apply=True)

  trace = {k: np.zeros_like(v) for k, v in problem.params_np.items()}
  for step, (actual, w) in enumerate(zip(updates, weights)):
    g, gp = wsam_points(w, problem.numpy_grad, rho)
    trace = {k: g[k] + mu * trace[k] for k in g}          # optax.trace
    expected = {k: -float(lr(step)) * (trace[k] + alpha * (gp[k] - g[k])) for k in g}
    # α·(g_p − g) with α = 9 cancels: float32 resolves it relative to α·g_p.
    term = {k: float(lr(step)) * alpha * np.abs(gp[k]) for k in g}
    mp.assert_trees_close(actual, expected, term_scale=term)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(gamma=1.0, decouple=False), "gamma"),
        (dict(gamma=-0.1, decouple=False), "gamma"),
        (dict(rho=-0.1, decouple=False), "rho"),
        (dict(), "base_optimizer"),
        (dict(decouple=False, learning_rate=0.1), "base_optimizer"),
        (dict(decouple=False, max_norm=0.0), "max_norm"),
    ],
)
def test_invalid_configurations(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sam_jax.wsam(**kwargs)
