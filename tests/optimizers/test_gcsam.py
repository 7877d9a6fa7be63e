"""GCSAM against a float64 NumPy transcription of the paper's equations."""

import numpy as np
import pytest

import sam_jax
from tests.optimizers import mlp_problem as mp
from tests.optimizers.conftest import run_updates
from tests.optimizers.test_sam import sam_reference

KERNELS = ("conv/kernel", "head/kernel")


def gc(tree):
  """Centralize Flax-layout kernels: subtract the mean over all axes but the last."""
  out = dict(tree)
  for k in KERNELS:
    v = tree[k]
    out[k] = v - v.mean(axis=tuple(range(v.ndim - 1)), keepdims=True)
  return out


def gcsam_reference(params, grad, rho, centralize_descent=False, norm_before=False, eps=1e-12):
  g = grad(params)
  g_gc = gc(g)
  n = mp.norm(g) if norm_before else mp.norm(g_gc)
  gp = grad(mp.add(params, mp.scale(g_gc, rho / (n + eps))))
  return gc(gp) if centralize_descent else gp


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("centralize_descent", [False, True])
@pytest.mark.parametrize("norm_before", [False, True])
def test_gcsam_matches_reference(problem, jit, centralize_descent, norm_before):
  tx = sam_jax.gcsam(0.1, centralize_descent=centralize_descent,
                     norm_before_centralization=norm_before)
  (direction,) = run_updates(tx, problem, jit=jit)
  expected = gcsam_reference(problem.params_np, problem.numpy_grad, 0.1,
                             centralize_descent, norm_before)
  mp.assert_trees_close(direction, expected)


def test_centralized_kernel_gradients_have_zero_mean_per_output(problem):
  tx = sam_jax.gcsam(0.1, centralize_descent=True)
  (direction,) = run_updates(tx, problem, jit=True)
  conv = np.asarray(direction["conv"]["kernel"])
  np.testing.assert_allclose(conv.mean(axis=(0, 1)), 0.0, atol=1e-7)
  assert np.abs(conv).max() > 1e-3


def test_only_one_dimensional_leaves_is_sam(problem):
  """With every kernel masked out (as in a model of 1-D leaves) GCSAM is SAM."""
  no_kernels = lambda p: {k: {n: False for n in v} for k, v in p.items()}
  (direction,) = run_updates(sam_jax.gcsam(0.05, mask=no_kernels), problem, jit=True)
  mp.assert_trees_close(direction, sam_reference(problem.params_np, problem.numpy_grad, 0.05))


def test_model_of_one_dimensional_parameters_is_sam():
  import jax, jax.numpy as jnp
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(12, 5)), rng.normal(size=(12,))
  params = {"scale": jnp.asarray(rng.normal(size=5), jnp.float32),
            "bias": jnp.asarray(0.3, jnp.float32)}
  loss = lambda p: jnp.mean((jnp.tanh(x @ p["scale"]) + p["bias"] - y) ** 2)
  grad_fn = sam_jax.grad_fn_from_loss(loss)
  g = grad_fn(params)[0]
  # The default mask finds no kernel here: an error rather than a silent SAM.
  tx = sam_jax.gcsam(0.05)
  with pytest.raises(ValueError, match=r"gcsam: its default mask .* \['bias'\], \['scale'\] .*mask="):
    tx.update(g, tx.init(params), params, grad_fn=grad_fn)
  # Said explicitly, no leaf to centralize is SAM exactly.
  outs = []
  no_kernels = lambda p: jax.tree.map(lambda _: False, p)
  for tx in (sam_jax.gcsam(0.05, mask=no_kernels), sam_jax.sam(0.05)):
    outs.append(tx.update(g, tx.init(params), params, grad_fn=grad_fn)[0])
  for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_asam_default_mask_that_selects_nothing_is_an_error():
  import jax.numpy as jnp
  params = {"w1": jnp.ones((3, 2)), "w2": jnp.ones(2)}
  grad_fn = sam_jax.grad_fn_from_loss(lambda p: jnp.sum(p["w1"] ** 2) + jnp.sum(p["w2"]))
  tx = sam_jax.asam()
  with pytest.raises(ValueError, match=r"asam: .*\['w1'\], \['w2'\].*would be plain SAM"):
    tx.update(grad_fn(params)[0], tx.init(params), params, grad_fn=grad_fn)
  tx = sam_jax.asam(mask={"w1": True, "w2": False})
  assert tx.update(grad_fn(params)[0], tx.init(params), params, grad_fn=grad_fn)[0]
