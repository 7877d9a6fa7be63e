"""A convolution whose kernel gradient is summed over batch chunks.

XLA:CPU computes a convolution's kernel (weight) gradient over the whole
batch as one "backward-filter" convolution, which is slow for large batches
of small maps: ResNet-18's 28x28x64 layer at batch 128 takes 0.14-0.18 s for
it, 4.2x PyTorch's, against 0.08 s for the forward pass
(``benchmarks/results/conv_layers_cpu.md``). The same gradient as a sum of
the gradients of batch chunks of 16-32 examples took about half that in a
probe on this project's 2-core machine, even on one core, so it is a matter
of XLA's kernel, not of parallelism.

:func:`batch_chunked` wraps ``lax.conv_general_dilated`` (a drop-in for
``flax.linen.Conv(conv_general_dilated=...)``) in a ``jax.custom_jvp`` whose
tangent in the kernel is the concatenation, over batch chunks, of each
chunk's convolution with the kernel's tangent. Its transpose, which reverse
mode derives, is the sum of the chunks' kernel gradients; the value, the
input's gradient and forward-mode derivatives (Hessian-vector products) are
the plain convolution's. Results equal the plain convolution's up to the
float32 rounding of the reordered sum.

In a whole ResNet-18 SAM step (28 px, batch 128) the gain is smaller than
the layer's, and a narrow network loses: width 1, 7.41 -> 5.77 s on one
device and 5.81 -> 5.41 s split over 2 host devices; width 1/4, 0.472 ->
0.523 s split over 2 host devices (``python -m benchmarks.cpu_options
--only ...`` -> ``benchmarks/results/kernel_grad_chunk/``). So
``ResNet(kernel_grad_chunk=...)`` is an option, off by default.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero


def batch_chunked(chunk: int) -> Callable:
  """``lax.conv_general_dilated`` with its kernel gradient summed over chunks of ``chunk``
  examples (batch axis 0; batches of at most ``chunk``, or not divisible by it, are
  convolved whole)."""
  if chunk < 1:
    raise ValueError(f"batch_chunked: chunk must be a positive number of examples, got {chunk}.")

  def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                           rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                           batch_group_count=1, precision=None, preferred_element_type=None):
    conv = functools.partial(
        lax.conv_general_dilated, window_strides=window_strides, padding=padding,
        lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
    batch_axis = _batch_axis(dimension_numbers, 0)
    size = lhs.shape[batch_axis]
    if size <= chunk or size % chunk or batch_group_count != 1:
      return conv(lhs, rhs)

    @jax.custom_jvp
    def chunked(x, kernel):
      return conv(x, kernel)

    def chunked_jvp(primals, tangents):
      (x, kernel), (x_dot, kernel_dot) = primals, tangents
      out_dot = []
      if not isinstance(x_dot, SymbolicZero):
        out_dot.append(conv(x_dot, kernel))
      if not isinstance(kernel_dot, SymbolicZero):
        pieces = [conv(lax.slice_in_dim(x, start, start + chunk, axis=batch_axis), kernel_dot)
                  for start in range(0, size, chunk)]
        out_dot.append(jnp.concatenate(pieces, axis=_batch_axis(dimension_numbers, 2)))
      out = conv(x, kernel)
      if not out_dot:
        return out, jnp.zeros_like(out)
      return out, out_dot[0] if len(out_dot) == 1 else out_dot[0] + out_dot[1]

    chunked.defjvp(chunked_jvp, symbolic_zeros=True)
    return chunked(lhs, rhs)

  return conv_general_dilated


def _batch_axis(dimension_numbers, operand: int) -> int:
  """The batch axis of the input (``operand=0``) or of the output (``operand=2``)."""
  if dimension_numbers is None:
    return 0
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return dimension_numbers[operand][0]
  return dimension_numbers[operand].index("N")
