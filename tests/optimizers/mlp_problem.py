"""A small MLP problem with an independent float64 NumPy gradient.

The model: ``z = x @ K0 + b0``, ``h = tanh(z)``, ``a = h * s``,
``logits = a @ K1 + b1``, mean softmax cross-entropy. ``K0`` has shape
``(2, 3, 8)`` (a Flax-layout kernel with two input axes, as a conv kernel
has), ``s`` is a normalization-like ``scale``; there are two biases. So the
tree holds every kind of leaf the methods treat differently.

The NumPy side does the backward pass by hand, so the references in the tests
depend neither on JAX's autodiff nor on float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

KEYS = ("conv/kernel", "conv/bias", "norm/scale", "head/kernel", "head/bias")
N, IN, HIDDEN, CLASSES = 16, 6, 8, 3


def make_problem(seed: int = 0):
  """Returns ``(params_np, x, y)``: flat float64 params and a batch."""
  rng = np.random.default_rng(seed)
  params = {
      "conv/kernel": rng.normal(0, 0.5, (2, 3, HIDDEN)),
      "conv/bias": rng.normal(0, 0.1, (HIDDEN,)),
      "norm/scale": 1.0 + rng.normal(0, 0.1, (HIDDEN,)),
      "head/kernel": rng.normal(0, 0.5, (HIDDEN, CLASSES)),
      "head/bias": rng.normal(0, 0.1, (CLASSES,)),
  }
  x = rng.normal(0, 1, (N, IN))
  y = rng.integers(0, CLASSES, (N,))
  return params, x, y


def numpy_loss_and_grad(params, x, y):
  """Loss and gradient in float64 by a hand-written backward pass."""
  k0 = params["conv/kernel"].reshape(IN, HIDDEN)
  z = x @ k0 + params["conv/bias"]
  h = np.tanh(z)
  a = h * params["norm/scale"]
  logits = a @ params["head/kernel"] + params["head/bias"]
  logits = logits - logits.max(axis=1, keepdims=True)
  p = np.exp(logits)
  p /= p.sum(axis=1, keepdims=True)
  n = x.shape[0]
  loss = -np.mean(np.log(p[np.arange(n), y]))
  dlogits = p.copy()
  dlogits[np.arange(n), y] -= 1.0
  dlogits /= n
  da = dlogits @ params["head/kernel"].T
  dh = da * params["norm/scale"]
  dz = dh * (1.0 - h**2)
  grads = {
      "conv/kernel": (x.T @ dz).reshape(params["conv/kernel"].shape),
      "conv/bias": dz.sum(axis=0),
      "norm/scale": (da * h).sum(axis=0),
      "head/kernel": a.T @ dlogits,
      "head/bias": dlogits.sum(axis=0),
  }
  return loss, grads


def numpy_grad(params, x, y):
  return numpy_loss_and_grad(params, x, y)[1]


def to_tree(flat, dtype=jnp.float32):
  """Flat ``{'a/b': array}`` -> nested Flax-style dict of JAX arrays."""
  tree = {}
  for key, value in flat.items():
    outer, inner = key.split("/")
    tree.setdefault(outer, {})[inner] = jnp.asarray(value, dtype)
  return tree


def to_flat(tree):
  """Nested dict of arrays -> flat ``{'a/b': float64 numpy}``."""
  return {
      f"{outer}/{inner}": np.asarray(v, np.float64)
      for outer, sub in tree.items()
      for inner, v in sub.items()
  }


def jax_loss(params, x, y):
  k0 = params["conv"]["kernel"]
  z = jnp.einsum("ni,ik->nk", x, k0.reshape(IN, HIDDEN)) + params["conv"]["bias"]
  a = jnp.tanh(z) * params["norm"]["scale"]
  logits = a @ params["head"]["kernel"] + params["head"]["bias"]
  logp = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
  return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


# Flat-dict arithmetic for the NumPy references.
def add(a, b, scale=1.0):
  return {k: a[k] + scale * b[k] for k in a}


def scale(a, c):
  return {k: c * a[k] for k in a}


def norm(a):
  return np.sqrt(sum(np.sum(v**2) for v in a.values()))


def vdot(a, b):
  return sum(np.sum(a[k] * b[k]) for k in a)


def assert_trees_close(actual_tree, expected_flat, rtol=1e-5, term_scale=None):
  """``actual`` (JAX, float32) equals the float64 reference to ``rtol``.

  Element-wise ``|a − e| ≤ rtol·|e| + floor`` where the floor, ``1e-6`` of
  the leaf's largest entry, only matters for entries near zero, whose own
  relative error float32 cannot resolve. When the result is a difference of
  larger terms, ``term_scale`` (a flat dict) gives the largest term per leaf,
  and the floor is taken relative to it instead.
  """
  actual = to_flat(actual_tree)
  assert actual.keys() == expected_flat.keys()
  for key, expected in expected_flat.items():
    scale = np.max(np.abs(expected if term_scale is None else term_scale[key]))
    tol = rtol * np.abs(expected) + 1e-6 * scale
    err = np.abs(actual[key] - expected)
    assert np.all(err <= tol), (
        f"{key}: max abs err {err.max():.3g}, max rel err "
        f"{np.max(err / (np.abs(expected) + 1e-300)):.3g}"
    )
