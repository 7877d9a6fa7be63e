"""batch_chunked: the plain convolution's values and derivatives, kernel gradient by chunks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sam_jax import models
from sam_jax.models.chunked_conv import batch_chunked

NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                out_spec=(0, 3, 1, 2))  # flax's, for 2-D inputs


def conv_args(layout):
  rng = np.random.default_rng(0)
  if layout == "NCHW":
    x, w = rng.standard_normal((8, 3, 9, 9)), rng.standard_normal((4, 3, 3, 3))
    dims = ("NCHW", "OIHW", "NCHW")
  else:
    x, w = rng.standard_normal((8, 9, 9, 3)), rng.standard_normal((3, 3, 3, 4))
    dims = NHWC
  return jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), dims


def loss_of(conv_fn, dims, strides):
  def loss(x, w):
    y = conv_fn(x, w, strides, [(1, 1), (1, 1)], dimension_numbers=dims)
    return jnp.sum(jnp.sin(y))
  return loss


@pytest.mark.parametrize("layout,strides", [("NHWC", (1, 1)), ("NHWC", (2, 2)),
                                            ("NCHW", (1, 1))])
def test_value_and_gradients_equal_the_plain_convolution(layout, strides):
  x, w, dims = conv_args(layout)
  plain = loss_of(lax.conv_general_dilated, dims, strides)
  chunked = loss_of(batch_chunked(2), dims, strides)
  np.testing.assert_allclose(jax.jit(chunked)(x, w), plain(x, w), rtol=1e-6)
  got = jax.jit(jax.grad(chunked, argnums=(0, 1)))(x, w)
  want = jax.grad(plain, argnums=(0, 1))(x, w)
  for g, v in zip(got, want):
    np.testing.assert_allclose(g, v, rtol=1e-5, atol=1e-4)  # sums of ~1e2 terms of ~1e1
  # Forward over reverse (Hessian-vector products) and forward mode.
  v = jax.tree.map(jnp.ones_like, (x, w))
  hvp = lambda f: jax.jvp(jax.grad(f, argnums=(0, 1)), (x, w), v)[1]
  for g, h in zip(hvp(chunked), hvp(plain)):
    np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-4)


def count_convolutions(fn, *args):
  return str(jax.make_jaxpr(fn)(*args)).count("conv_general_dilated[")


def test_kernel_gradient_takes_one_convolution_per_chunk():
  x, w, dims = conv_args("NHWC")
  kernel_grad = lambda conv_fn: jax.grad(loss_of(conv_fn, dims, (1, 1)), argnums=1)
  plain = count_convolutions(kernel_grad(lax.conv_general_dilated), x, w)
  # 8 examples in chunks of 2: four kernel-gradient convolutions instead of one.
  assert count_convolutions(kernel_grad(batch_chunked(2)), x, w) == plain + 3
  # A batch no larger than the chunk, or not divisible by it, is convolved whole.
  assert count_convolutions(kernel_grad(batch_chunked(8)), x, w) == plain
  assert count_convolutions(kernel_grad(batch_chunked(3)), x, w) == plain
  # The input gradient alone does not take the chunks.
  input_grad = jax.grad(loss_of(batch_chunked(2), dims, (1, 1)), argnums=0)
  assert count_convolutions(input_grad, x, w) == count_convolutions(
      jax.grad(loss_of(lax.conv_general_dilated, dims, (1, 1)), argnums=0), x, w)


def test_resnet_gradient_does_not_depend_on_the_chunk():
  images = jnp.asarray(np.random.default_rng(1).standard_normal((8, 16, 16, 1)), jnp.float32)
  grads = []
  for chunk in (None, 2):
    model = models.create_model("resnet10", 2, width=0.125, kernel_grad_chunk=chunk)
    variables = model.init(jax.random.key(0), images, train=False)
    loss = lambda p: jnp.sum(model.apply({**variables, "params": p}, images, train=False) ** 2)
    grads.append(jax.jit(jax.grad(loss))(variables["params"]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), *grads)


def test_bad_chunk_is_refused():
  with pytest.raises(ValueError, match="chunk must be a positive"):
    batch_chunked(0)
