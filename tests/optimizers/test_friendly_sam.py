"""F-SAM against a float64 NumPy transcription of the official update, over steps."""

import optax
import pytest

import sam_jax
from tests.optimizers import mlp_problem as mp
from tests.optimizers.conftest import run_updates


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("sigma,lmbda", [(1.0, 0.9), (0.5, 0.6)])
def test_friendly_sam_matches_reference_over_steps(problem, jit, sigma, lmbda):
  rho, lr = 0.1, 0.5
  tx = optax.chain(sam_jax.friendly_sam(rho, sigma, lmbda), optax.sgd(lr))
  updates, weights = run_updates(tx, problem, jit=jit, steps=4, apply=True)

  m = None
  for actual, w in zip(updates, weights):
    g = problem.numpy_grad(w)
    if m is None:                       # first step: d = g, m = g
      d, m = g, g
    else:
      d = mp.add(g, m, -sigma)
      m = {k: lmbda * m[k] + (1 - lmbda) * g[k] for k in g}
    gp = problem.numpy_grad(mp.add(w, mp.scale(d, rho / (mp.norm(d) + 1e-12))))
    expected = mp.scale(gp, -lr)
    mp.assert_trees_close(actual, expected)


@pytest.mark.parametrize("kwargs,match", [(dict(lmbda=1.0), "lmbda"), (dict(sigma=-1.0), "sigma"),
                                          (dict(rho=-0.1), "rho")])
def test_invalid_configurations(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sam_jax.friendly_sam(**kwargs)
