"""ResNets for 2D images and 3D volumes (He et al., 2016), in Flax Linen.

One module covers the variants the studies use:

* ``stem="cifar"``: 3x3 stride-1 convolution, no max-pool. The MedMNIST
  benchmark's ResNet at 28-64 px (its stages then see 28, 14, 7, 4 px).
* ``stem="imagenet"``: 7x7 stride-2 convolution and 3x3 stride-2 max-pool,
  torchvision's layout; at 224 px and 1000 classes the parameter counts are
  torchvision's (ResNet-18 11,689,512; ResNet-50 25,557,032).
* ``dim=3``: every convolution and pooling is 3-D, for 28^3 and 64^3 volumes.
  ``volume_conv`` chooses how each ``k x k`` convolution becomes 3-D, the three
  ways of the MedMNIST v2 3-D benchmark (which converts a 2-D ResNet with
  ACSConv's converters): ``"3d"`` (``k^3`` kernels), ``"2.5d"`` (``1 x k x k``)
  or ``"acs"`` (a 2-D kernel split over the axial, coronal and sagittal
  planes); see :class:`sam_jax.models.conv3d.Conv3D`. ``conv_impl`` chooses how
  3-D convolutions are computed (``"auto"``: 2-D convolutions with depth
  folded into the batch on CPUs, XLA's 3-D convolution elsewhere); every
  choice gives the same parameters and results.
* ``width``: a multiplier on every stage's channels (64, 128, 256, 512 at
  1.0), so that tests and CPU runs can use narrow versions.
* ``dtype``: computation dtype (e.g. ``jnp.bfloat16``); parameters stay in
  ``param_dtype`` (float32), and the logits are returned in float32.

Inputs are channel-last: ``(N, H, W, C)`` or ``(N, D, H, W, C)``, any ``C``.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from sam_jax.models import remat as remat_lib
from sam_jax.models.chunked_conv import batch_chunked
from sam_jax.models.conv3d import Conv3D
from sam_jax.models.pooling import max_pool

ModuleDef = Any


class _ResidualBlock(nn.Module):
  """What every block is given: width, stride, layer factories, dimensionality."""

  filters: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  dim: int


class BasicBlock(_ResidualBlock):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

  expansion = 1

  @nn.compact
  def __call__(self, x):
    k, pad = (3,) * self.dim, [(1, 1)] * self.dim  # PyTorch's symmetric padding
    s = (self.strides,) * self.dim
    residual = x
    y = self.conv(self.filters, k, s, padding=pad, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, k, padding=pad, name="conv2")(y)
    # Zero-init of the last BN scale is a common trick; torchvision's default
    # (and the MedMNIST code) keeps ones, so we do too.
    y = self.norm(name="bn2")(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1,) * self.dim, s, name="downsample_conv")(residual)
      residual = self.norm(name="downsample_bn")(residual)
    return nn.relu(y + residual)


class Bottleneck(_ResidualBlock):
  """1x1 - 3x3 - 1x1 bottleneck with stride on the 3x3 (ResNet-50 v1.5)."""

  expansion = 4

  @nn.compact
  def __call__(self, x):
    s = (self.strides,) * self.dim
    residual = x
    y = self.conv(self.filters, (1,) * self.dim, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, (3,) * self.dim, s, padding=[(1, 1)] * self.dim,
                  name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.filters * self.expansion, (1,) * self.dim, name="conv3")(y)
    y = self.norm(name="bn3")(y)
    if residual.shape != y.shape:
      residual = self.conv(
          self.filters * self.expansion, (1,) * self.dim, s, name="downsample_conv"
      )(residual)
      residual = self.norm(name="downsample_bn")(residual)
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """ResNet classifier.

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    block_cls: :class:`BasicBlock` or :class:`Bottleneck`.
    num_classes: outputs of the final dense layer (logits).
    width: multiplier on the stage widths (64·width, ..., 512·width).
    stem: ``"cifar"`` (3x3/1, no pool) or ``"imagenet"`` (7x7/2 + max-pool).
    dim: 2 for images, 3 for volumes.
    dtype: computation dtype; ``param_dtype`` is the parameters'.
    bn_momentum: running-statistics momentum in Flax's convention
      (``new = momentum·old + (1 − momentum)·batch``); 0.9 is PyTorch's 0.1.
    volume_conv: with ``dim=3``, ``"3d"``, ``"2.5d"`` or ``"acs"``.
    conv_impl: with ``dim=3``, how convolutions are computed (``"auto"``,
      ``"xla"``, ``"depth_sum"``, ``"depth_concat"``); results do not depend on it.
    kernel_grad_chunk: with ``dim=2``, sum each convolution's kernel gradient
      over batch chunks of this many examples (:mod:`sam_jax.models.chunked_conv`);
      ``None`` (default): XLA's whole-batch kernel gradient. On XLA:CPU, 32
      made a width-1 ResNet-18 SAM step at 28 px, batch 128, 22 % faster on
      one device and 7 % faster split over 2 host devices (the CLI's
      default placement), but 11 % slower at width 1/4 split over 2 devices
      (``benchmarks/results/kernel_grad_chunk/``), so it is not the default.
      Results change by float32 rounding only.
    remat: rematerialize each residual block (:mod:`sam_jax.models.remat`,
      which saves memory on XLA:CPU too): the backward pass recomputes a block's activations
      instead of keeping them, for less memory at the cost of about one more
      forward pass. Parameter names and results do not change.
  """

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int
  width: float = 1.0
  stem: str = "cifar"
  dim: int = 2
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  volume_conv: str = "3d"
  conv_impl: str = "auto"
  kernel_grad_chunk: Optional[int] = None
  remat: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.dim not in (2, 3):
      raise ValueError(f"ResNet: dim must be 2 or 3, got {self.dim}.")
    if x.ndim != self.dim + 2:
      layout = "(N, H, W, C)" if self.dim == 2 else "(N, D, H, W, C)"
      raise ValueError(
          f"ResNet(dim={self.dim}) expects inputs {layout}, got shape {x.shape}."
      )
    if self.stem not in ("cifar", "imagenet"):
      raise ValueError(f"ResNet: stem must be 'cifar' or 'imagenet', got {self.stem!r}.")
    if self.dim == 2 and self.volume_conv != "3d":
      raise ValueError(f"ResNet: volume_conv={self.volume_conv!r} is for volumes (dim=3).")
    conv_module = self._conv2d() if self.dim == 2 else functools.partial(
        Conv3D, way=self.volume_conv, impl=self.conv_impl)
    conv = functools.partial(
        conv_module, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
    )
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
        epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype,
    )
    base = max(1, int(round(64 * self.width)))
    x = x.astype(self.dtype)
    if self.stem == "cifar":
      x = conv(base, (3,) * self.dim, padding=[(1, 1)] * self.dim, name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
    else:
      x = conv(base, (7,) * self.dim, (2,) * self.dim, padding=[(3, 3)] * self.dim,
               name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
      x = max_pool(x, (3,) * self.dim, (2,) * self.dim, padding=[(1, 1)] * self.dim)
    block_cls = remat_lib.remat(self.block_cls) if self.remat else self.block_cls
    for i, blocks in enumerate(self.stage_sizes):
      for j in range(blocks):
        x = block_cls(
            filters=base * 2**i,
            strides=2 if i > 0 and j == 0 else 1,
            conv=conv,
            norm=norm,
            dim=self.dim,
            name=f"stage{i + 1}_block{j + 1}",
        )(x)
    x = jnp.mean(x, axis=tuple(range(1, 1 + self.dim)))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="head")(x)
    return x.astype(jnp.float32)

  def _conv2d(self):
    if self.kernel_grad_chunk is None:
      return nn.Conv
    return functools.partial(nn.Conv,
                             conv_general_dilated=batch_chunked(int(self.kernel_grad_chunk)))


# ResNet-10 (one block per stage) is MedicalNet's smallest 3-D backbone; it
# also trains and compiles in half ResNet-18's time, which the tests use.
ResNet10 = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock)
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
