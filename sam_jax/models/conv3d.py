"""3-D convolutions computed the way that is fastest on the backend.

XLA:CPU has no fast path for 3-D kernels: one 3x3x3 convolution of a
32x28^3x16 batch (forward and backward) takes 1.7 s through
``lax.conv_general_dilated`` on this project's 2-core machine, 7x PyTorch's.
Its 2-D convolutions, by contrast, run at oneDNN's per-core speed. A 3-D
convolution is a sum of 2-D ones: with the input padded in depth,

    y[n, d] = sum_{i < k_d} conv2d(x[n, s_d·d + i], K[i])

where ``K[i]`` is the ``i``-th depth slice of the kernel (``(k_h, k_w, C, O)``)
and the 2-D convolution carries the height/width strides and padding. Folding
depth into the batch turns each term into one 2-D convolution over
``(N·D_out, H, W, C)``. Two ways to add the terms:

* ``"depth_sum"``: ``k_d`` 2-D convolutions, added;
* ``"depth_concat"``: the ``k_d`` depth-shifted inputs concatenated along
  channels, then one 2-D convolution with the kernel reshaped to
  ``(k_h, k_w, k_d·C, O)`` (one larger matmul, ``k_d`` times the input copy).

A ``1x1x1`` kernel is a strided slice and a matrix product (``"matmul"``).
``"xla"`` is ``lax.conv_general_dilated`` itself, which GPUs and TPUs keep
(cuDNN and the TPU compiler have native 3-D convolutions). ``"auto"`` picks
by the backend the computation is traced for; which CPU form it picks was
measured (``benchmarks/conv3d_cpu.py``, table in BUILD_NOTES).

Every form has the parameters of ``flax.linen.Conv`` (one ``kernel`` of shape
``(k_d, k_h, k_w, C, O)`` and an optional ``bias``), so checkpoints and
parameter counts do not depend on the implementation, and all forms agree to
float tolerance (tests/models/test_conv3d.py).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

IMPLEMENTATIONS = ("auto", "xla", "depth_sum", "depth_concat", "matmul")
# What "auto" uses on a CPU for kernels with more than one tap (measured; see
# BUILD_NOTES "Fast 3-D convolutions on CPU").
CPU_IMPLEMENTATION = "depth_concat"

_DN_3D = ("NDHWC", "DHWIO", "NDHWC")
_DN_2D = ("NHWC", "HWIO", "NHWC")


def resolve_implementation(impl: str, kernel_size: Sequence[int]) -> str:
  """The implementation ``impl`` stands for, on the current default backend."""
  if impl not in IMPLEMENTATIONS:
    raise ValueError(
        f"conv3d: unknown implementation {impl!r}; choose one of {', '.join(IMPLEMENTATIONS)}."
    )
  if impl != "auto":
    return impl
  if jax.default_backend() != "cpu":
    return "xla"
  return "matmul" if tuple(kernel_size) == (1, 1, 1) else CPU_IMPLEMENTATION


def _explicit_padding(padding, kernel_size, strides, spatial):
  """Padding as three ``(low, high)`` pairs (``"SAME"``/``"VALID"`` resolved)."""
  if isinstance(padding, str):
    return lax.padtype_to_pads(spatial, kernel_size, strides, padding)
  pads = [tuple(p) for p in padding]
  if len(pads) != 3 or any(len(p) != 2 for p in pads):
    raise ValueError(f"conv3d: padding must be 'SAME', 'VALID' or three (low, high) pairs, got {padding!r}.")
  return pads


def conv3d(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1, 1),
           padding: str | Sequence[tuple[int, int]] = "SAME", impl: str = "auto",
           precision: Any = None) -> jax.Array:
  """A 3-D convolution of ``x`` (``(N, D, H, W, C)``) with ``kernel`` (``(kd, kh, kw, C, O)``).

  Equal, to float tolerance, to ``lax.conv_general_dilated`` with
  ``("NDHWC", "DHWIO", "NDHWC")`` for any strides and padding; ``impl`` chooses
  how it is computed (see the module docstring).
  """
  if x.ndim != 5 or kernel.ndim != 5:
    raise ValueError(
        f"conv3d expects x (N, D, H, W, C) and kernel (kd, kh, kw, C, O), got {x.shape} and {kernel.shape}."
    )
  if x.shape[-1] != kernel.shape[3]:
    raise ValueError(f"conv3d: x has {x.shape[-1]} channels, the kernel expects {kernel.shape[3]}.")
  strides = tuple(int(s) for s in strides)
  kernel_size = kernel.shape[:3]
  pads = _explicit_padding(padding, kernel_size, strides, x.shape[1:4])
  impl = resolve_implementation(impl, kernel_size)
  if impl == "xla":
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DN_3D,
                                    precision=precision)
  if impl == "matmul":
    if tuple(kernel_size) != (1, 1, 1):
      raise ValueError(f"conv3d: 'matmul' is for 1x1x1 kernels, got {tuple(kernel_size)}.")
    x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    x = x[:, ::strides[0], ::strides[1], ::strides[2]]
    return jnp.einsum("ndhwc,co->ndhwo", x, kernel[0, 0, 0], precision=precision)
  return _conv3d_folded(x, kernel, strides, pads, impl, precision)


def _conv3d_folded(x, kernel, strides, pads, impl, precision):
  """Depth folded into the batch; the ``k_d`` depth taps summed or concatenated."""
  kd, kh, kw, c, o = kernel.shape
  sd = strides[0]
  x = jnp.pad(x, [(0, 0), pads[0], (0, 0), (0, 0), (0, 0)])
  n, d, h, w, _ = x.shape
  d_out = (d - kd) // sd + 1
  if d_out < 1:
    raise ValueError(f"conv3d: depth {d} (padded) is smaller than the kernel's {kd}.")

  def depth_tap(i):  # input depths i, i + sd, ..., one per output depth
    return lax.slice_in_dim(x, i, i + sd * (d_out - 1) + 1, sd, axis=1)

  def conv2d(inputs, k2d):
    y = lax.conv_general_dilated(inputs.reshape(n * d_out, h, w, inputs.shape[-1]), k2d,
                                 strides[1:], pads[1:], dimension_numbers=_DN_2D,
                                 precision=precision)
    return y.reshape(n, d_out, *y.shape[1:])

  if impl == "depth_sum" or kd == 1:
    out = conv2d(depth_tap(0), kernel[0])
    for i in range(1, kd):
      out = out + conv2d(depth_tap(i), kernel[i])
    return out
  if impl == "depth_concat":
    stacked = jnp.concatenate([depth_tap(i) for i in range(kd)], axis=-1)
    # Channel index i·C + c of the stack is tap i, channel c: match the kernel.
    k2d = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kd * c, o)
    return conv2d(stacked, k2d)
  raise ValueError(f"conv3d: unknown implementation {impl!r}.")


WAYS = ("3d", "2.5d", "acs")


def _acs_split(features: int) -> tuple[int, int, int]:
  """Output channels of the axial, coronal and sagittal parts (ACSConv's split)."""
  third, rest = divmod(features, 3)
  return (third + (rest > 0), third + (rest > 1), third)


def _flat_axis(kernel_size, padding, axis):
  """``kernel_size`` and explicit ``padding`` with ``axis`` made a single tap."""
  kernel_size = list(kernel_size)
  kernel_size[axis] = 1
  if not isinstance(padding, str):
    padding = [tuple(p) for p in padding]
    padding[axis] = (0, 0)
  return tuple(kernel_size), padding


class Conv3D(nn.Module):
  """``flax.linen.Conv`` for volumes, computed by :func:`conv3d`.

  ``way`` says how a ``k x k`` convolution of a 2-D network becomes 3-D, the
  three ways of the MedMNIST v2 3-D benchmark:

  * ``"3d"``: a full ``k_d x k_h x k_w`` kernel; the same parameters (``kernel``
    ``(k_d, k_h, k_w, C, features)``, ``bias``) and results as ``nn.Conv``.
  * ``"2.5d"``: a 2-D kernel applied to every axial slice, ``1 x k_h x k_w``
    (ACSConv's ``Conv2_5d``: no padding in depth, the stride in all three).
  * ``"acs"``: one 2-D kernel ``(k_h, k_w, C, features)`` whose output channels
    are split three ways (axial, coronal, sagittal; the first parts take the
    remainder, as ACSConv does); each part is applied in its own plane with a
    single tap across it, and the three outputs are concatenated in that order.

  ``2.5d`` and ``acs`` have a 2-D network's parameter count. ``impl`` chooses
  the computation (``"auto"``: the fastest on the backend); every ``impl``
  gives the same result.
  """

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] | int = 1
  padding: str | Sequence[tuple[int, int]] = "SAME"
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
  bias_init: Callable[..., jax.Array] = nn.initializers.zeros_init()
  way: str = "3d"
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel_size = tuple(self.kernel_size)
    if len(kernel_size) != 3:
      raise ValueError(f"Conv3D: kernel_size must have 3 entries, got {kernel_size}.")
    if self.way not in WAYS:
      raise ValueError(f"Conv3D: unknown way {self.way!r}; choose one of {', '.join(WAYS)}.")
    if x.ndim != 5:
      raise ValueError(f"Conv3D expects inputs (N, D, H, W, C), got shape {x.shape}.")
    strides = (self.strides,) * 3 if isinstance(self.strides, int) else tuple(self.strides)
    if self.way == "acs":
      if kernel_size[1:] != kernel_size[:2]:
        raise ValueError(f"Conv3D(way='acs') needs a cubic kernel, got {kernel_size}.")
      shape = (*kernel_size[1:], x.shape[-1], self.features)
    elif self.way == "2.5d":
      shape = (1, *kernel_size[1:], x.shape[-1], self.features)
    else:
      shape = (*kernel_size, x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    if self.way == "3d":
      y = conv3d(x, kernel, strides, self.padding, self.impl, self.precision)
    elif self.way == "2.5d":
      _, padding = _flat_axis(kernel_size, self.padding, 0)
      y = conv3d(x, kernel, strides, padding, self.impl, self.precision)
    elif kernel_size == (1, 1, 1):  # the three parts are one 1x1x1 convolution
      y = conv3d(x, kernel[None], strides, self.padding, self.impl, self.precision)
    else:
      y = self._acs(x, kernel, kernel_size, strides)
    if bias is not None:
      y = y + bias
    return y

  def _acs(self, x, kernel, kernel_size, strides):
    """The three ACS parts, concatenated (axial, coronal, sagittal)."""
    impl = resolve_implementation(self.impl, (1, *kernel_size[1:]))
    parts, start = [], 0
    for axis, size in enumerate(_acs_split(self.features)):
      if size == 0:
        continue
      part = kernel[..., start:start + size]
      start += size
      _, padding = _flat_axis(kernel_size, self.padding, axis)
      if impl == "xla":
        parts.append(conv3d(x, jnp.expand_dims(part, axis), strides, padding, impl, self.precision))
        continue
      # Folded forms: move the part's flat axis to depth, where a single tap is
      # one 2-D convolution over (N·D, H, W); taps along depth would cost k_d.
      order = [axis] + [a for a in range(3) if a != axis]
      moved = jnp.transpose(x, (0, *(1 + a for a in order), 4))
      moved_padding = padding if isinstance(padding, str) else [padding[a] for a in order]
      y = conv3d(moved, part[None], [strides[a] for a in order], moved_padding, impl,
                 self.precision)
      parts.append(jnp.transpose(y, (0, *(1 + order.index(a) for a in range(3)), 4)))
    return jnp.concatenate(parts, axis=-1)
