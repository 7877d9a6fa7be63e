"""Vision Transformer (Dosovitskiy et al., 2021), timm's layout, in Flax Linen.

Patch embedding (a convolution with stride = patch size), a class token and
learned position embeddings, pre-norm encoder blocks (multi-head
self-attention with one fused ``qkv`` dense layer, an MLP with GELU), a final
LayerNorm and a dense head on the class token. At 224 px, patch 16 and 1000
classes, ViT-B/16 has timm's 86,567,656 parameters.

Every dense kernel has a single output axis last (``qkv`` is ``(D, 3D)``),
which is what gradient centralization (GCSAM) and ASAM's weight test expect.
The class token and position embeddings are named ``cls`` and
``pos_embedding``: neither is a "weight" for ASAM or a kernel for GCSAM.

Works at 28 px with patch 4 (49 tokens) and at 224 px with patch 16.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.models import remat as remat_lib

VIT_VARIANTS = {
    "ti": dict(hidden_size=192, depth=12, num_heads=3),
    "s": dict(hidden_size=384, depth=12, num_heads=6),
    "b": dict(hidden_size=768, depth=12, num_heads=12),
}


class SelfAttention(nn.Module):
  num_heads: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    n, tokens, dim = x.shape
    if dim % self.num_heads:
      raise ValueError(f"hidden size {dim} is not divisible by num_heads {self.num_heads}.")
    head_dim = dim // self.num_heads
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    qkv = dense(3 * dim, name="qkv")(x).reshape(n, tokens, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k).astype(jnp.float32) / jnp.sqrt(head_dim)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.dropout_rate, deterministic=not train)(weights)
    out = jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, tokens, dim)
    return dense(dim, name="proj")(out)


class EncoderBlock(nn.Module):
  num_heads: int
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    dim = x.shape[-1]
    norm = functools.partial(nn.LayerNorm, epsilon=1e-6, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)
    y = SelfAttention(self.num_heads, self.attention_dropout_rate, self.dtype,
                      self.param_dtype, name="attention")(norm(name="norm1")(x), train)
    x = x + drop(y)
    y = dense(int(dim * self.mlp_ratio), name="fc1")(norm(name="norm2")(x))
    y = dense(dim, name="fc2")(drop(nn.gelu(y, approximate=False)))
    return x + drop(y)


class ViT(nn.Module):
  """Vision Transformer classifier.

  Attributes:
    num_classes: number of logits.
    patch_size: side of the square patches; must divide the image size.
    hidden_size, depth, num_heads, mlp_ratio: the transformer's shape.
    dropout_rate, attention_dropout_rate: dropout (0 in the ViT-B config).
    dtype, param_dtype: computation and parameter dtypes.
    remat: rematerialize each encoder block (:mod:`sam_jax.models.remat`): less memory, about
      one more forward pass; parameter names and results do not change.
  """

  num_classes: int
  patch_size: int = 16
  hidden_size: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4:
      raise ValueError(f"ViT expects inputs (N, H, W, C), got shape {x.shape}.")
    h, w = x.shape[1:3]
    if h % self.patch_size or w % self.patch_size:
      raise ValueError(
          f"ViT: image size {h}x{w} is not divisible by patch_size {self.patch_size}."
      )
    x = nn.Conv(self.hidden_size, (self.patch_size,) * 2, (self.patch_size,) * 2,
                padding="VALID", dtype=self.dtype, param_dtype=self.param_dtype,
                name="patch_embed")(x.astype(self.dtype))
    n = x.shape[0]
    x = x.reshape(n, -1, self.hidden_size)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, self.hidden_size), self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, self.hidden_size)).astype(self.dtype), x], 1)
    pos = self.param("pos_embedding", nn.initializers.normal(0.02),
                     (1, x.shape[1], self.hidden_size), self.param_dtype)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x + pos.astype(self.dtype))
    # ``train`` is a Python bool: static for the rematerialized call (self is 0).
    block_cls = remat_lib.remat(EncoderBlock, static_argnums=(2,)) if self.remat else EncoderBlock
    for i in range(self.depth):
      x = block_cls(self.num_heads, self.mlp_ratio, self.dropout_rate,
                       self.attention_dropout_rate, self.dtype, self.param_dtype,
                       name=f"block{i + 1}")(x, train)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="norm")(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="head")(x[:, 0])
    return logits.astype(jnp.float32)
