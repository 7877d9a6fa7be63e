"""VGG-16 with BatchNorm (Simonyan & Zisserman, 2015), torchvision's layout.

13 3x3 convolutions (with bias) each followed by BatchNorm and ReLU, five
2x2 max-pools, then one of two heads:

* ``head="torchvision"``: adaptive average pooling to 7x7 and the
  25088-4096-4096-classes MLP with dropout; at 224 px and 1000 classes the
  parameter count is torchvision's ``vgg16_bn`` (138,365,992).
* ``head="global_pool"``: global average pooling and one dense layer, the
  usual choice for small inputs and narrow CPU runs.

A max-pool is skipped when the feature map is already 1 pixel, so the
network also runs on 28 px inputs (28 → 14 → 7 → 3 → 1).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from sam_jax.models.pooling import max_pool

# Channels per convolution; "M" is a max-pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                512, 512, 512, "M", 512, 512, 512, "M")


def adaptive_avg_pool(x: jnp.ndarray, output_size: Sequence[int]) -> jnp.ndarray:
  """PyTorch's ``AdaptiveAvgPool2d`` on ``(N, H, W, C)``.

  Output cell ``i`` averages input rows ``floor(i·H/o) .. ceil((i+1)·H/o)``;
  shapes are static, so the bins are computed in Python.
  """
  for axis, out in zip((1, 2), output_size):
    size = x.shape[axis]
    cells = []
    for i in range(out):
      start, stop = (i * size) // out, -((-(i + 1) * size) // out)
      cells.append(jnp.mean(jnp.take(x, jnp.arange(start, stop), axis=axis),
                            axis=axis, keepdims=True))
    x = jnp.concatenate(cells, axis=axis)
  return x


class VGG(nn.Module):
  """VGG with BatchNorm.

  Attributes:
    num_classes: number of logits.
    layout: channels per convolution and ``"M"`` for max-pools.
    width: multiplier on every convolution's channels.
    head: ``"torchvision"`` or ``"global_pool"`` (see the module docstring).
    dropout_rate: dropout in the torchvision head (0.5 there).
    dtype, param_dtype: computation and parameter dtypes.
  """

  num_classes: int
  layout: Sequence[Any] = VGG16_LAYOUT
  width: float = 1.0
  head: str = "torchvision"
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4:
      raise ValueError(f"VGG expects inputs (N, H, W, C), got shape {x.shape}.")
    if self.head not in ("torchvision", "global_pool"):
      raise ValueError(f"VGG: head must be 'torchvision' or 'global_pool', got {self.head!r}.")
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    conv_index = 0
    for item in self.layout:
      if item == "M":
        if x.shape[1] > 1 and x.shape[2] > 1:
          x = max_pool(x, (2, 2), (2, 2))
        continue
      conv_index += 1
      channels = max(1, int(round(item * self.width)))
      x = nn.Conv(channels, (3, 3), padding=[(1, 1), (1, 1)], dtype=self.dtype,
                  param_dtype=self.param_dtype, name=f"conv{conv_index}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                       epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype,
                       name=f"bn{conv_index}")(x)
      x = nn.relu(x)
    if self.head == "global_pool":
      x = jnp.mean(x, axis=(1, 2))
      return dense(self.num_classes, name="head")(x).astype(jnp.float32)
    x = adaptive_avg_pool(x, (7, 7)).reshape(x.shape[0], -1)
    hidden = max(1, int(round(4096 * self.width)))
    for i in (1, 2):
      x = nn.relu(dense(hidden, name=f"fc{i}")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return dense(self.num_classes, name="head")(x).astype(jnp.float32)


VGG16BN = functools.partial(VGG, layout=VGG16_LAYOUT)
