"""Swin Transformer (Liu et al., ICCV 2021), timm's layout, in Flax Linen.

Patch embedding (4x4 convolution + LayerNorm), four stages of blocks that
attend within non-overlapping windows, every second block with windows
shifted by half a window (and a mask so that tokens from opposite image
borders do not attend to each other), a learned relative position bias per
window offset and head, and patch merging (2x2 neighbours concatenated,
LayerNorm, a bias-free linear map to twice the channels) between stages. At
224 px and 1000 classes Swin-T has timm's 28,288,354 parameters.

The feature map of every stage must be divisible by the window size: 224 px
with patch 4 and window 7 gives 56, 28, 14, 7. When a stage is no larger than
the window, its windows cover it whole and are not shifted (as in timm).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def window_partition(x, window: int):
  """``(N, H, W, C)`` -> ``(N·H/w·W/w, w·w, C)``; NumPy or JAX arrays."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // window, window, w // window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: jnp.ndarray, window: int, n: int, h: int, w: int) -> jnp.ndarray:
  """Inverse of :func:`window_partition`."""
  c = windows.shape[-1]
  x = windows.reshape(n, h // window, w // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)


def relative_position_index(window: int) -> np.ndarray:
  """For each pair of tokens in a window, the index of their offset."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
  coords = coords.reshape(2, -1)
  relative = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return relative[..., 0] * (2 * window - 1) + relative[..., 1]


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> np.ndarray:
  """``(windows, w·w, w·w)`` additive mask: -100 between tokens of different regions."""
  regions = np.zeros((1, h, w, 1), np.float32)
  label = 0
  for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
    for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
      regions[:, hs, ws, :] = label
      label += 1
  windows = window_partition(regions, window)[..., 0]  # NumPy: a constant
  different = windows[:, None, :] != windows[:, :, None]
  return np.where(different, -100.0, 0.0).astype(np.float32)


class WindowAttention(nn.Module):
  num_heads: int
  window: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    b, tokens, dim = x.shape
    head_dim = dim // self.num_heads
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    qkv = dense(3 * dim, name="qkv")(x).reshape(b, tokens, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(head_dim)
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * self.window - 1) ** 2, self.num_heads), self.param_dtype)
    index = relative_position_index(self.window).reshape(-1)
    bias = table[index].reshape(tokens, tokens, self.num_heads).transpose(2, 0, 1)
    logits = logits + bias[None].astype(jnp.float32)
    if mask is not None:
      windows = mask.shape[0]
      logits = logits.reshape(b // windows, windows, self.num_heads, tokens, tokens)
      logits = (logits + mask[None, :, None]).reshape(b, self.num_heads, tokens, tokens)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, tokens, dim)
    return dense(dim, name="proj")(out)


class SwinBlock(nn.Module):
  num_heads: int
  window: int
  shift: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    window, shift = self.window, self.shift
    if min(h, w) <= window:  # the window covers the whole map: no shift
      window, shift = min(h, w), 0
    if h % window or w % window:
      raise ValueError(f"Swin: feature map {h}x{w} is not divisible by window {window}.")
    norm = functools.partial(nn.LayerNorm, epsilon=1e-5, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    y = norm(name="norm1")(x)
    if shift:
      y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
    mask = jnp.asarray(shifted_window_mask(h, w, window, shift)) if shift else None
    y = WindowAttention(self.num_heads, window, self.dtype, self.param_dtype,
                        name="attention")(window_partition(y, window), mask)
    y = window_reverse(y, window, n, h, w)
    if shift:
      y = jnp.roll(y, (shift, shift), axis=(1, 2))
    x = x + y
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    y = dense(int(c * self.mlp_ratio), name="fc1")(norm(name="norm2")(x))
    return x + dense(c, name="fc2")(nn.gelu(y, approximate=False))


class PatchMerging(nn.Module):
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    x = jnp.concatenate(
        [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="norm")(x)
    return nn.Dense(2 * c, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="reduction")(x)


class Swin(nn.Module):
  """Swin Transformer classifier (Swin-T by default).

  Attributes:
    num_classes: number of logits.
    patch_size: patch embedding stride (4).
    embed_dim: channels of the first stage (96 for Swin-T).
    depths: blocks per stage ((2, 2, 6, 2) for Swin-T).
    num_heads: heads per stage ((3, 6, 12, 24) for Swin-T).
    window: window side (7).
    dtype, param_dtype: computation and parameter dtypes.
  """

  num_classes: int
  patch_size: int = 4
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window: int = 7
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no dropout or batch statistics
    if x.ndim != 4:
      raise ValueError(f"Swin expects inputs (N, H, W, C), got shape {x.shape}.")
    x = nn.Conv(self.embed_dim, (self.patch_size,) * 2, (self.patch_size,) * 2,
                padding="VALID", dtype=self.dtype, param_dtype=self.param_dtype,
                name="patch_embed")(x.astype(self.dtype))
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="patch_norm")(x)
    for stage, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      if stage > 0:
        x = PatchMerging(self.dtype, self.param_dtype, name=f"merge{stage}")(x)
      for i in range(depth):
        x = SwinBlock(heads, self.window, 0 if i % 2 == 0 else self.window // 2,
                      self.mlp_ratio, self.dtype, self.param_dtype,
                      name=f"stage{stage + 1}_block{i + 1}")(x)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="norm")(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="head")(x).astype(jnp.float32)
