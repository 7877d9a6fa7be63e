"""max_pool: flax's values and gradients (ties included), without XLA's scatter."""

from __future__ import annotations

import itertools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.models.pooling import max_pool

# (input shape, window, strides, padding): ResNet's stem (2-D and 3-D), VGG's
# pool, "SAME" on an odd size.
CASES = [
    ((2, 9, 9, 3), (3, 3), (2, 2), [(1, 1), (1, 1)]),
    ((2, 8, 6, 3), (2, 2), (2, 2), "VALID"),
    ((2, 7, 5, 7, 2), (3, 3, 3), (2, 2, 2), [(1, 1)] * 3),
    ((2, 10, 9, 3), (3, 3), (2, 2), "SAME"),
    ((1, 6, 6, 1), (3, 3), (1, 1), "VALID"),
]


def tied_input(shape, seed=0):
  """ReLU'd small integers: most windows hold several equal maxima, as after a ReLU."""
  rng = np.random.default_rng(seed)
  return np.maximum(rng.integers(-2, 3, shape), 0).astype(np.float32)


def reference_gradient(x, cotangent, window, strides, padding):
  """float64 loops: each output's cotangent goes to its window's first maximum (row-major)."""
  spatial = x.shape[1:-1]
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(spatial, window, strides, padding)
  padded = np.pad(x.astype(np.float64), [(0, 0), *padding, (0, 0)], constant_values=-np.inf)
  grad = np.zeros_like(padded)
  for n, c in itertools.product(range(x.shape[0]), range(x.shape[-1])):
    for out in itertools.product(*(range(k) for k in cotangent.shape[1:-1])):
      corner = [o * s for o, s in zip(out, strides)]
      offsets = list(itertools.product(*(range(k) for k in window)))
      values = [padded[(n, *[a + b for a, b in zip(corner, off)], c)] for off in offsets]
      first = offsets[int(np.argmax(values))]  # np.argmax keeps the first maximum
      grad[(n, *[a + b for a, b in zip(corner, first)], c)] += cotangent[(n, *out, c)]
  inner = tuple(slice(lo, lo + size) for (lo, _), size in zip(padding, spatial))
  return grad[(slice(None), *inner, slice(None))]


@pytest.mark.parametrize("shape,window,strides,padding", CASES)
def test_values_and_gradient_equal_flax_and_the_reference(shape, window, strides, padding):
  x = jnp.asarray(tied_input(shape))
  pooled = max_pool(x, window, strides, padding)
  np.testing.assert_array_equal(pooled, nn.max_pool(x, window, strides, padding))
  cotangent = np.random.default_rng(1).standard_normal(pooled.shape).astype(np.float32)
  grad = jax.jit(jax.grad(lambda v: jnp.vdot(max_pool(v, window, strides, padding),
                                             cotangent)))(x)
  flax_grad = jax.grad(lambda v: jnp.vdot(nn.max_pool(v, window, strides, padding),
                                          cotangent))(x)
  np.testing.assert_array_equal(grad, flax_grad)
  np.testing.assert_allclose(grad, reference_gradient(np.asarray(x), cotangent, window,
                                                      strides, padding), rtol=1e-6)


def test_forward_over_reverse_and_vmap_equal_flax():
  shape, window, strides, padding = CASES[0]
  x = jnp.asarray(tied_input(shape) + np.random.default_rng(2).normal(0, 1e-3, shape),
                  jnp.float32)
  tangent = jnp.asarray(np.random.default_rng(3).standard_normal(shape), jnp.float32)
  def hvp(pool):
    loss = lambda v: jnp.sum(pool(v, window, strides, padding) ** 2)
    return jax.jvp(jax.grad(loss), (x,), (tangent,))[1]
  np.testing.assert_array_equal(hvp(max_pool), hvp(nn.max_pool))
  batched = jax.vmap(jax.grad(lambda v: jnp.sum(max_pool(v[None], window, strides,
                                                         padding) ** 2)))(x)
  np.testing.assert_array_equal(batched, jax.grad(
      lambda v: jnp.sum(nn.max_pool(v, window, strides, padding) ** 2))(x))


def test_bfloat16_keeps_its_dtype_and_flax_values():
  shape, window, strides, padding = CASES[0]
  x = jnp.asarray(tied_input(shape), jnp.bfloat16)
  pooled = max_pool(x, window, strides, padding)
  assert pooled.dtype == jnp.bfloat16
  grad = jax.grad(lambda v: jnp.sum(max_pool(v, window, strides, padding).astype(jnp.float32)))(x)
  assert grad.dtype == jnp.bfloat16
  np.testing.assert_array_equal(grad, jax.grad(lambda v: jnp.sum(
      nn.max_pool(v, window, strides, padding).astype(jnp.float32)))(x))


def test_compiled_gradient_has_no_scatter():
  # The reason the module exists: XLA:CPU lowers flax's gradient to a scatter
  # with index tensors the size of the padded input.
  shape, window, strides, padding = CASES[0]
  x = jnp.zeros(shape)
  def hlo(pool):
    grad = jax.jit(jax.grad(lambda v: jnp.sum(pool(v, window, strides, padding))))
    return grad.lower(x).compile().as_text()
  scatter = re.compile(r"\bscatter\(")  # an instruction, also select-and-scatter(
  assert not scatter.search(hlo(max_pool))
  if jax.default_backend() == "cpu":
    assert scatter.search(hlo(nn.max_pool))


def test_shape_mismatch_is_explained():
  with pytest.raises(ValueError, match=r"expected \(N, \*spatial, C\)"):
    max_pool(jnp.zeros((9, 9, 3)), (3, 3), (2, 2))
  with pytest.raises(ValueError, match="padding pairs"):
    max_pool(jnp.zeros((1, 9, 9, 3)), (3, 3), (2, 2), [(1, 1)])


def test_imagenet_stem_resnet_gradient_equals_flax_pooling(monkeypatch):
  from sam_jax import models
  from sam_jax.models import pooling, resnet
  assert resnet.max_pool is pooling.max_pool
  model = models.create_model("resnet10", 2, stem="imagenet", width=0.125)
  x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 32, 32, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), x, train=False)
  def grads():
    loss = lambda p: jnp.sum(model.apply({**variables, "params": p}, x, train=False) ** 2)
    return jax.jit(jax.grad(loss))(variables["params"])
  ours = grads()
  monkeypatch.setattr(resnet, "max_pool", nn.max_pool)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               ours, grads())
