"""AE-SAM against a float64 NumPy transcription of Jiang et al.'s policy, over steps."""

import numpy as np
import optax
import pytest

import sam_jax
from tests.optimizers import mlp_problem as mp
from tests.optimizers.conftest import run_updates


def ae_sam_reference(weights, grad, rho, threshold, decay, eps=1e-12):
  """(directions, took_sam) at the given sequence of weights."""
  mean = variance = 0.0
  directions, took = [], []
  for t, w in enumerate(weights):
    g = grad(w)
    n = mp.norm(g) ** 2
    mean = decay * mean + (1 - decay) * n
    variance = decay * variance + (1 - decay) * (n - mean) ** 2
    c = threshold(t) if callable(threshold) else threshold
    take = n >= mean + c * np.sqrt(variance)
    took.append(take)
    directions.append(grad(mp.add(w, mp.scale(g, rho / (mp.norm(g) + eps)))) if take else g)
  return directions, took


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("threshold", [0.0, 0.5, optax.linear_schedule(-1.0, 1.0, 8)])
def test_ae_sam_matches_reference_over_steps(problem, jit, threshold):
  rho, lr, decay = 0.1, 0.5, 0.6
  tx = optax.chain(sam_jax.ae_sam(rho, threshold, decay), optax.sgd(lr))
  updates, weights = run_updates(tx, problem, jit=jit, steps=8, apply=True)
  expected, took = ae_sam_reference(weights, problem.numpy_grad, rho,
                                    (lambda t: float(threshold(t))) if callable(threshold)
                                    else threshold, decay)
  # Both branches are exercised (the loss falls, so ‖g‖² drops below its mean).
  assert any(took) and not all(took), took
  for actual, want in zip(updates, expected):
    mp.assert_trees_close(actual, mp.scale(want, -lr))


def test_sam_steps_counts_the_second_passes(problem):
  tx = optax.chain(sam_jax.ae_sam(0.1, 0.5, 0.6), optax.sgd(0.5))
  state, params, weights = tx.init(problem.params), problem.params, []
  for _ in range(8):
    weights.append(mp.to_flat(params))
    updates, state = tx.update(problem.grad_fn(params)[0], state, params,
                               grad_fn=problem.grad_fn)
    params = optax.apply_updates(params, updates)
  _, took = ae_sam_reference(weights, problem.numpy_grad, 0.1, 0.5, 0.6)
  assert int(state[0].sam_steps) == sum(took)


@pytest.mark.parametrize("kwargs,match", [(dict(ema_decay=1.0), "ema_decay"),
                                          (dict(ema_decay=-0.1), "ema_decay"),
                                          (dict(threshold=float("inf")), "threshold"),
                                          (dict(rho=-0.1), "rho")])
def test_invalid_configurations(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sam_jax.ae_sam(**kwargs)
