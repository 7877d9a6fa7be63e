"""Stable SAM (SSAM) against a float64 NumPy transcription of the renormalization."""

import pytest

import sam_jax
from tests.optimizers import mlp_problem as mp
from tests.optimizers.conftest import run_updates
from tests.optimizers.test_crsam import crsam_reference
from tests.optimizers.test_sam import sam_reference


@pytest.mark.parametrize("jit", [False, True])
def test_stable_sam_matches_reference(problem, jit):
  (direction,) = run_updates(sam_jax.stable_sam(0.1), problem, jit=jit)
  g = problem.numpy_grad(problem.params_np)
  gp = sam_reference(problem.params_np, problem.numpy_grad, 0.1)
  mp.assert_trees_close(direction, mp.scale(gp, mp.norm(g) / mp.norm(gp)))


def test_direction_has_the_clean_gradient_norm(problem):
  (direction,) = run_updates(sam_jax.stable_sam(0.5), problem, jit=True)
  g = problem.numpy_grad(problem.params_np)
  assert mp.norm(mp.to_flat(direction)) == pytest.approx(mp.norm(g), rel=1e-5)


def test_on_top_of_crsam_renormalizes_both_points(problem):
  tx = sam_jax.stable_sam(base=sam_jax.crsam(0.1, 0.1, 0.01))
  (direction,) = run_updates(tx, problem, jit=True)
  g_norm = mp.norm(problem.numpy_grad(problem.params_np))

  def renormalized_grad(params):
    gp = problem.numpy_grad(params)
    return mp.scale(gp, g_norm / mp.norm(gp))

  # g₀ is the clean gradient (already of norm ‖g‖); g₊ and g₋ are rescaled.
  clean = problem.numpy_grad(problem.params_np)
  grad = lambda p: clean if p is problem.params_np else renormalized_grad(p)
  mp.assert_trees_close(direction, crsam_reference(problem.params_np, grad, 0.1, 0.1, 0.01))


def test_rho_and_base_are_exclusive():
  with pytest.raises(ValueError, match="not both"):
    sam_jax.stable_sam(0.1, base=sam_jax.sam(0.1))


@pytest.mark.parametrize("jit", [False, True])
def test_stable_usam_matches_reference(problem, jit):
  """The authors' other base: unnormalized SAM, eps = rho g, then renormalized."""
  from tests.optimizers.test_sam import usam_reference

  (direction,) = run_updates(sam_jax.stable_sam(0.3, normalize=False), problem, jit=jit)
  g = problem.numpy_grad(problem.params_np)
  gp = usam_reference(problem.params_np, problem.numpy_grad, 0.3)
  mp.assert_trees_close(direction, mp.scale(gp, mp.norm(g) / mp.norm(gp)))
  with pytest.raises(ValueError, match="normalize=False chooses USAM"):
    sam_jax.stable_sam(base=sam_jax.sam(), normalize=False)
