"""The loss along a filter-normalized random direction (Li et al., 2018, "Visualizing the
Loss Landscape of Neural Nets").

A Gaussian direction ``d`` is rescaled filter by filter to the norm of the
weights' filter, ``d_f ← d_f ‖w_f‖ / ‖d_f‖``, so that a step ``α d`` moves
every filter by the same fraction of its own size; this removes the scale
invariance that BatchNorm gives a network and lets one compare the
landscapes of two networks. A *filter* is one output unit: the slice of a
kernel along its last axis (Flax kernels are ``(..., in, out)``). Vectors
(biases, BatchNorm scales and offsets) get no direction (``d = 0``), as in
the paper's code.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def filter_normalized_direction(params: Any, key: jax.Array) -> Any:
  """A random direction with each filter scaled to its weights' filter norm."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  out = []
  for k, w in zip(keys, leaves):
    if jnp.ndim(w) <= 1:
      out.append(jnp.zeros_like(w))
      continue
    d = jax.random.normal(k, jnp.shape(w), jnp.result_type(w))
    axes = tuple(range(jnp.ndim(w) - 1))  # everything but the output axis
    w_norm = jnp.sqrt(jnp.sum(w * w, axis=axes, keepdims=True))
    d_norm = jnp.sqrt(jnp.sum(d * d, axis=axes, keepdims=True))
    out.append(d * w_norm / (d_norm + 1e-10))
  return treedef.unflatten(out)


def loss_along(loss: Callable[[Any], jax.Array], params: Any, direction: Any,
               alphas: Sequence[float]) -> np.ndarray:
  """``[L(params + α direction) for α in alphas]``."""
  at = jax.jit(lambda a: loss(jax.tree.map(lambda w, d: w + a * d.astype(w.dtype), params,
                                           direction)))
  return np.asarray([float(at(jnp.asarray(a, jnp.float32))) for a in alphas])
