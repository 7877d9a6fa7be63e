"""Float64 parameters (``jax_enable_x64``) are perturbed and combined in float64: every
method equals its float64 NumPy reference to 1e-10, not to float32's 1e-5."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sam_jax
from tests.optimizers import mlp_problem as mp
from tests.optimizers.test_asam import asam_reference
from tests.optimizers.test_crsam import crsam_reference
from tests.optimizers.test_gcsam import gcsam_reference
from tests.optimizers.test_gsam import gsam_reference
from tests.optimizers.test_sam import sam_reference

CASES = {
    "sam": (lambda: sam_jax.sam(0.1), lambda p, g: sam_reference(p, g, 0.1)),
    "sam_adaptive": (lambda: sam_jax.sam(0.5, adaptive=True),
                     lambda p, g: sam_reference(p, g, 0.5, adaptive=True)),
    "asam": (lambda: sam_jax.asam(0.5, 0.01), lambda p, g: asam_reference(p, g, 0.5, 0.01)),
    "gsam": (lambda: sam_jax.gsam(0.1, alpha=0.4), lambda p, g: gsam_reference(p, g, 0.1, 0.4)),
    "gcsam": (lambda: sam_jax.gcsam(0.1), lambda p, g: gcsam_reference(p, g, 0.1)),
    "crsam": (lambda: sam_jax.crsam(0.1, 0.1, 0.01), lambda p, g: crsam_reference(p, g, 0.1, 0.1, 0.01)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64_parameters_match_the_reference_to_1e_10(name):
  make, reference = CASES[name]
  params_np, x, y = mp.make_problem(seed=0)
  with jax.enable_x64(True):
    params = mp.to_tree(params_np, jnp.float64)
    grad_fn = sam_jax.grad_fn_from_loss(mp.jax_loss, jnp.asarray(x, jnp.float64), jnp.asarray(y))
    tx = make()
    direction, _ = jax.jit(lambda p, s: tx.update(grad_fn(p)[0], s, p, grad_fn=grad_fn))(
        params, tx.init(params))
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(direction))
    actual = mp.to_flat(direction)
  expected = reference(params_np, lambda p: mp.numpy_grad(p, x, y))
  for key, want in expected.items():
    np.testing.assert_allclose(actual[key], want, rtol=1e-10, atol=1e-12 * np.max(np.abs(want)),
                               err_msg=f"{name} {key}")
