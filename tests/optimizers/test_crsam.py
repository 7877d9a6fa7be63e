"""CR-SAM against a float64 NumPy transcription of the official update."""

import pytest

import sam_jax
from tests.optimizers import mlp_problem as mp
from tests.optimizers.conftest import run_updates
from tests.optimizers.test_sam import sam_reference


def crsam_reference(params, grad, rho, gamma, beta, eps=1e-12):
  g0 = grad(params)
  e = mp.scale(g0, rho / (mp.norm(g0) + eps))
  gp = grad(mp.add(params, e))
  gm = grad(mp.add(params, e, -1.0))
  return {
      k: gp[k] + gamma * (gp[k] + gm[k] - 2 * g0[k]) + beta * (gp[k] - gm[k])
      for k in g0
  }


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("batched", [True, False, None])
def test_crsam_matches_reference(problem, jit, batched):
  tx = sam_jax.crsam(0.1, 0.1, 0.01, batched=batched)
  (direction,) = run_updates(tx, problem, jit=jit)
  mp.assert_trees_close(
      direction, crsam_reference(problem.params_np, problem.numpy_grad, 0.1, 0.1, 0.01)
  )


def test_gamma_beta_zero_is_sam(problem):
  (direction,) = run_updates(sam_jax.crsam(0.05, 0.0, 0.0), problem, jit=True)
  mp.assert_trees_close(direction, sam_reference(problem.params_np, problem.numpy_grad, 0.05))


def test_reports_both_perturbed_points(problem):
  tx = sam_jax.crsam(0.1)
  params = problem.params
  _, _, aux = sam_jax.update_with_aux(
      tx, problem.clean_grads(), tx.init(params), params, grad_fn=problem.grad_fn
  )
  g = problem.numpy_grad(problem.params_np)
  e = mp.scale(g, 0.1 / mp.norm(g))
  for name, sign in (("perturbed", 1.0), ("perturbed_minus", -1.0)):
    loss, _ = mp.numpy_loss_and_grad(mp.add(problem.params_np, e, sign), problem.x, problem.y)
    assert float(aux[name]["loss"]) == pytest.approx(loss, rel=1e-5)
