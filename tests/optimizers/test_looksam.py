"""LookSAM against a float64 NumPy transcription of Liu et al.'s Algorithm 1, over steps."""

import jax
import numpy as np
import optax
import pytest

import sam_jax
from tests.optimizers import mlp_problem as mp
from tests.optimizers.conftest import run_updates


def looksam_reference(weights, grad, rho, period, alpha, eps=1e-12):
  """The directions LookSAM takes at the given sequence of weights."""
  directions, g_v = [], None
  for t, w in enumerate(weights):
    g = grad(w)
    if t % period == 0:
      g_s = grad(mp.add(w, mp.scale(g, rho / (mp.norm(g) + eps))))
      # g_s − ‖g_s‖ cos θ · g/‖g‖, cos θ = <g, g_s>/(‖g‖‖g_s‖)
      cos = mp.vdot(g, g_s) / (mp.norm(g) * mp.norm(g_s))
      g_v = mp.add(g_s, mp.scale(g, mp.norm(g_s) * cos / mp.norm(g)), -1.0)
      directions.append(g_s)
    else:
      directions.append(mp.add(g, g_v, alpha * mp.norm(g) / mp.norm(g_v)))
  return directions


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("period,alpha", [(3, 0.7), (2, 0.2)])
def test_looksam_matches_reference_over_steps(problem, jit, period, alpha):
  rho, lr = 0.1, 0.5
  tx = optax.chain(sam_jax.looksam(rho, period, alpha), optax.sgd(lr))
  updates, weights = run_updates(tx, problem, jit=jit, steps=7, apply=True)
  expected = looksam_reference(weights, problem.numpy_grad, rho, period, alpha)
  for t, (actual, want) in enumerate(zip(updates, expected)):
    # The reused step adds α‖g‖ĝ_v to g: a sum of terms of that size.
    terms = {k: np.abs(want[k]) + alpha * mp.norm(want) for k in want}
    mp.assert_trees_close(actual, mp.scale(want, -lr), term_scale=None if t % period == 0
                          else mp.scale(terms, lr))


def test_period_one_is_sam(problem):
  got = run_updates(sam_jax.looksam(0.1, period=1), problem, jit=True, steps=3)
  want = run_updates(sam_jax.sam(0.1), problem, jit=True, steps=3)
  for a, b in zip(got, want):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_orthogonal_component_is_orthogonal_and_counts_sam_steps(problem):
  tx = sam_jax.looksam(0.1, period=4)
  state = tx.init(problem.params)
  step = jax.jit(lambda s: tx.update(problem.clean_grads(), s, problem.params,
                                     grad_fn=problem.grad_fn))
  for _ in range(6):
    _, state = step(state)
  g = mp.to_flat(problem.clean_grads())
  g_v = mp.to_flat(state.orthogonal)
  assert abs(mp.vdot(g, g_v)) <= 1e-5 * mp.norm(g) * mp.norm(g_v)
  assert int(state.sam_steps) == 2 and int(state.count) == 6  # steps 0 and 4


@pytest.mark.parametrize("period", [0, -1, 2.0, True])
def test_bad_period_is_rejected(period):
  with pytest.raises(ValueError, match="period"):
    sam_jax.looksam(period=period)


def test_negative_alpha_is_rejected():
  with pytest.raises(ValueError, match="alpha"):
    sam_jax.looksam(alpha=-0.1)
