"""SAM against a float64 NumPy transcription of Foret et al.'s equations."""

import numpy as np
import optax
import pytest

import sam_jax
from tests.optimizers import mlp_problem as mp
from tests.optimizers.conftest import run_updates


def sam_reference(params, grad, rho, adaptive=False, eps=1e-12):
  """ε = ρ g/‖g‖ (adaptive: ρ w²g/‖|w|g‖); returns ∇L(w + ε)."""
  g = grad(params)
  if adaptive:
    wg = {k: np.abs(params[k]) * g[k] for k in g}
    e = {k: rho * params[k] ** 2 * g[k] / (mp.norm(wg) + eps) for k in g}
  else:
    e = mp.scale(g, rho / (mp.norm(g) + eps))
  return grad(mp.add(params, e))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("rho", [0.05, 0.5])
def test_sam_matches_reference(problem, jit, rho):
  (direction,) = run_updates(sam_jax.sam(rho), problem, jit=jit)
  expected = sam_reference(problem.params_np, problem.numpy_grad, rho)
  mp.assert_trees_close(direction, expected)


@pytest.mark.parametrize("jit", [False, True])
def test_adaptive_sam_matches_reference(problem, jit):
  (direction,) = run_updates(sam_jax.sam(1.0, adaptive=True), problem, jit=jit)
  expected = sam_reference(problem.params_np, problem.numpy_grad, 1.0, adaptive=True)
  mp.assert_trees_close(direction, expected)


def test_rho_schedule_is_evaluated_at_the_step_count(problem):
  schedule = optax.linear_schedule(0.1, 0.0, transition_steps=4)
  outputs = run_updates(sam_jax.sam(schedule), problem, jit=True, steps=3)
  for step, direction in enumerate(outputs):
    expected = sam_reference(problem.params_np, problem.numpy_grad, float(schedule(step)))
    mp.assert_trees_close(direction, expected)


def test_rho_zero_is_the_clean_gradient(problem):
  (direction,) = run_updates(sam_jax.sam(0.0), problem, jit=True)
  mp.assert_trees_close(direction, problem.numpy_grad(problem.params_np))


def usam_reference(params, grad, rho):
  """Unnormalized SAM: ε = ρ g; returns ∇L(w + ε)."""
  return grad(mp.add(params, mp.scale(grad(params), rho)))


@pytest.mark.parametrize("jit", [False, True])
def test_unnormalized_sam_matches_reference(problem, jit):
  (direction,) = run_updates(sam_jax.sam(0.3, normalize=False), problem, jit=jit)
  mp.assert_trees_close(direction, usam_reference(problem.params_np, problem.numpy_grad, 0.3))
