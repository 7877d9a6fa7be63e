"""ASAM against a float64 NumPy transcription of the official update."""

import numpy as np
import pytest

import sam_jax
from tests.optimizers import mlp_problem as mp
from tests.optimizers.conftest import run_updates

# Leaves the official code's test "'weight' in name" would select.
WEIGHTS = ("conv/kernel", "norm/scale", "head/kernel")


def asam_reference(params, grad, rho, eta, weights=WEIGHTS, eps=1e-12):
  """T_w = |w| + η on weights, 1 elsewhere; ε = ρ T²g/‖Tg‖; returns ∇L(w+ε)."""
  g = grad(params)
  t = {k: (np.abs(params[k]) + eta) if k in weights else np.ones_like(params[k]) for k in g}
  tg = {k: t[k] * g[k] for k in g}
  e = {k: rho * t[k] * tg[k] / (mp.norm(tg) + eps) for k in g}
  return grad(mp.add(params, e))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("rho,eta", [(0.5, 0.01), (1.0, 0.0), (0.2, 0.5)])
def test_asam_matches_reference(problem, jit, rho, eta):
  (direction,) = run_updates(sam_jax.asam(rho, eta), problem, jit=jit)
  mp.assert_trees_close(direction, asam_reference(problem.params_np, problem.numpy_grad, rho, eta))


def test_custom_mask_selects_the_rescaled_leaves(problem):
  mask = lambda p: {k: {n: k == "head" for n in v} for k, v in p.items()}
  (direction,) = run_updates(sam_jax.asam(0.5, 0.01, mask=mask), problem, jit=True)
  expected = asam_reference(
      problem.params_np, problem.numpy_grad, 0.5, 0.01, weights=("head/kernel", "head/bias")
  )
  mp.assert_trees_close(direction, expected)


def test_asam_differs_from_davda54_adaptive_sam(problem):
  """The official ASAM (η, weights only) is not sam(adaptive=True)."""
  (official,) = run_updates(sam_jax.asam(0.5, 0.01), problem, jit=True)
  (elementwise,) = run_updates(sam_jax.sam(0.5, adaptive=True), problem, jit=True)
  diff = max(
      float(np.max(np.abs(a - b)))
      for a, b in zip(mp.to_flat(official).values(), mp.to_flat(elementwise).values())
  )
  assert diff > 1e-4
