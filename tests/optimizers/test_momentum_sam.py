"""Momentum-SAM against a float64 NumPy transcription of the authors' MSAM step, over steps."""

import jax
import numpy as np
import optax
import pytest

import sam_jax
from tests.optimizers import mlp_problem as mp


def msam_reference(stored_weights, grad, lr, momentum, rho, weight_decay):
  """Each step's change of the stored weights, and the weights to evaluate after the last
  (MarlonBecker/MSAM ``MSAM.step`` and ``move_back_from_momentumAscent``, in float64)."""
  buffer = {k: np.zeros_like(v) for k, v in stored_weights[0].items()}
  inverse_norm = 0.0
  changes = []
  for stored in stored_weights:
    d_p = mp.add(grad(stored), stored, weight_decay)
    moved_back = mp.add(stored, buffer, rho * inverse_norm)        # p = p̃ + ρ v/‖v‖
    buffer = mp.add(mp.scale(buffer, momentum), d_p)               # v = μ v + d_p
    descended = mp.add(moved_back, buffer, -lr)                    # p − lr v
    inverse_norm = 1.0 / (mp.norm(buffer) + 1e-12)
    new_stored = mp.add(descended, buffer, -rho * inverse_norm)    # p̃ = p − ρ v/‖v‖
    changes.append(mp.add(new_stored, stored, -1.0))
  evaluated = mp.add(new_stored, buffer, rho * inverse_norm)
  return changes, evaluated


def run(tx, problem, steps, jit):
  update = lambda g, s, p: tx.update(g, s, p)
  update = jax.jit(update) if jit else update
  params, state = problem.params, tx.init(problem.params)
  updates, stored = [], []
  for _ in range(steps):
    stored.append(mp.to_flat(params))
    out, state = update(problem.grad_fn(params)[0], state, params)
    updates.append(out)
    params = optax.apply_updates(params, out)
  return updates, stored, params, state


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("rho,weight_decay", [(0.3, 0.0), (0.05, 5e-3)])
def test_momentum_sam_matches_the_authors_step_over_steps(problem, jit, rho, weight_decay):
  lr, momentum, steps = 0.2, 0.9, 8
  tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=momentum),
                   sam_jax.momentum_sam(rho))
  updates, stored, params, state = run(tx, problem, steps, jit)
  changes, evaluated = msam_reference(stored, problem.numpy_grad, lr, momentum, rho, weight_decay)
  for actual, want in zip(updates, changes):
    # The change sums terms of the size of ρ (the offsets), not of the change itself.
    mp.assert_trees_close(actual, want, term_scale={k: np.full_like(v, rho)
                                                    for k, v in want.items()})
  mp.assert_trees_close(sam_jax.evaluation_params(params, state), evaluated,
                        term_scale={k: np.full_like(v, rho) for k, v in evaluated.items()})
  # The stored weights sit ρ from the evaluated ones, along the last step.
  offset = mp.add(mp.to_flat(params), mp.to_flat(sam_jax.evaluation_params(params, state)), -1.0)
  np.testing.assert_allclose(mp.norm(offset), rho, rtol=1e-5)


def test_rho_zero_is_the_base_optimizer(problem):
  base = optax.sgd(0.2, momentum=0.9)
  got, _, params, state = run(optax.chain(base, sam_jax.momentum_sam(0.0)), problem, 4, True)
  want, _, want_params, _ = run(base, problem, 4, True)
  for a, b in zip(jax.tree.leaves(got) + jax.tree.leaves(params),
                  jax.tree.leaves(want) + jax.tree.leaves(want_params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  for a, b in zip(jax.tree.leaves(sam_jax.evaluation_params(params, state)),
                  jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_evaluation_params_leave_other_chains_alone(problem):
  tx = optax.chain(sam_jax.sam(0.1), optax.sgd(0.1))
  state = tx.init(problem.params)
  assert sam_jax.evaluation_params(problem.params, state) is problem.params


def test_it_is_one_pass_and_not_a_grad_fn_method(problem):
  tx = optax.chain(optax.sgd(0.1, momentum=0.9), sam_jax.momentum_sam(0.3))
  assert not sam_jax.is_sharpness_aware(tx.init(problem.params))  # gradients averaged before it


@pytest.mark.parametrize("rho", [-0.1, float("nan")])
def test_bad_rho_is_rejected(rho):
  with pytest.raises(ValueError, match="rho"):
    sam_jax.momentum_sam(rho)
