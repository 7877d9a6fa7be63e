"""Max pooling whose gradient needs no scatter.

``flax.linen.max_pool`` is ``lax.reduce_window(max)``. Its gradient is XLA's
``select-and-scatter``, which XLA:CPU expands into a scatter with an ``s32``
index tensor per spatial axis (and one for the batch and the channels), each
the size of the *padded input*. For ResNet's ImageNet stem at 224 px, batch 32,
that is four to five 101 MiB ``s32[32, 114, 114, 64]`` buffers alive at once,
about half of the whole step's peak, and they sit at the end of the backward
pass, where a SAM step's second pass also keeps its perturbed weights alive
(``benchmarks/results/max_pool_cpu.md``; BUILD_NOTES, "SAM's memory at
224 px").

:func:`max_pool` computes the same forward value and routes each output's
tangent to the *first* maximum of its window in row-major order, which is
the element XLA's select-and-scatter (with JAX's ``>=`` select) picks; ties
are frequent after a ReLU, where whole windows are 0. It is a
``jax.custom_jvp``: the forward pass also returns, per output, which window
offset holds that maximum (an ``int32`` the size of the output), and the
tangent is ``select_n(offset, *strided views of the input's tangent)``. JAX
transposes that into the gradient with strided pads, which XLA fuses into one
elementwise pass; forward mode (Hessian-vector products in
:mod:`sam_jax.landscape`) and ``vmap`` work as for any JAX function.
"""

from __future__ import annotations

import functools
import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax


def _padding_pairs(padding, spatial_shape, window, strides) -> list[tuple[int, int]]:
  if isinstance(padding, str):
    return list(lax.padtype_to_pads(spatial_shape, window, strides, padding))
  pairs = [tuple(p) for p in padding]
  if len(pairs) != len(spatial_shape):
    raise ValueError(f"max_pool: {len(pairs)} padding pairs for {len(spatial_shape)} "
                     "spatial axes.")
  return [(int(lo), int(hi)) for lo, hi in pairs]


def _window_views(padded, window, strides, out_shape):
  """The strided view of ``padded`` at each window offset, row-major order."""
  views = []
  for offset in itertools.product(*(range(k) for k in window)):
    start = (0, *offset, 0)
    limit = (padded.shape[0],
             *(o + s * (n - 1) + 1 for o, s, n in zip(offset, strides, out_shape)),
             padded.shape[-1])
    views.append(lax.slice(padded, start, limit, (1, *strides, 1)))
  return views


def max_pool(x: jax.Array, window_shape: Sequence[int], strides: Sequence[int] | None = None,
             padding: str | Sequence[tuple[int, int]] = "VALID") -> jax.Array:
  """``flax.linen.max_pool`` over ``(N, *spatial, C)`` inputs, with a scatter-free gradient.

  Args:
    x: ``(N, *spatial, C)``.
    window_shape: the window's size along each spatial axis.
    strides: the step along each spatial axis (default: 1).
    padding: ``"VALID"``, ``"SAME"`` or one ``(low, high)`` pair per spatial
      axis; padded positions hold ``-inf`` and so are never the maximum.

  Returns:
    ``(N, *pooled, C)``, equal to ``nn.max_pool(x, window_shape, strides,
    padding)``; so is its gradient, tie-breaking included.
  """
  window = tuple(int(k) for k in window_shape)
  strides = tuple(int(s) for s in (strides or (1,) * len(window)))
  if x.ndim != len(window) + 2 or len(strides) != len(window):
    raise ValueError(f"max_pool: input of shape {x.shape} with window {window} and strides "
                     f"{strides}; expected (N, *spatial, C) with one window size and stride "
                     "per spatial axis.")
  pads = _padding_pairs(padding, x.shape[1:-1], window, strides)
  return _max_pool(x, window, strides, tuple(pads))


def _reduce_window_max(x, window, strides, pads):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),
                           ((0, 0), *pads, (0, 0)))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, pads):
  return _reduce_window_max(x, window, strides, pads)


@_max_pool.defjvp
def _max_pool_jvp(window, strides, pads, primals, tangents):
  (x,), (tangent,) = primals, tangents
  pooled = _reduce_window_max(x, window, strides, pads)
  out_shape = pooled.shape[1:-1]
  full_pads = ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0))
  views = _window_views(lax.pad(x, jnp.array(-jnp.inf, x.dtype), full_pads), window,
                        strides, out_shape)
  # Going from the last offset to the first leaves the first maximum.
  argmax = jnp.zeros(pooled.shape, jnp.int32)
  for index in reversed(range(len(views))):
    argmax = jnp.where(views[index] == pooled, jnp.int32(index), argmax)
  tangent_views = _window_views(lax.pad(tangent, jnp.zeros((), tangent.dtype), full_pads),
                                window, strides, out_shape)
  return pooled, lax.select_n(argmax, *tangent_views)
