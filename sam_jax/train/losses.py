"""Losses with a mask, for padded batches: ``loss_fn(logits, labels, mask) -> scalar``."""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from sam_jax.data import dataset as ds

LossFn = Callable[[jax.Array, jax.Array, Optional[jax.Array]], jax.Array]


def masked_mean(values: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  if mask is None:
    return jnp.mean(values)
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def softmax_cross_entropy(label_smoothing: float = 0.0) -> LossFn:
  """Cross-entropy over classes (binary tasks use two logits, as MedMNIST)."""

  def loss_fn(logits, labels, mask=None):
    logits = logits.astype(jnp.float32)
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
      targets = optax.smooth_labels(targets, label_smoothing)
    return masked_mean(optax.softmax_cross_entropy(logits, targets), mask)

  return loss_fn


def sigmoid_cross_entropy(label_smoothing: float = 0.0) -> LossFn:
  """Per-label binary cross-entropy, averaged over labels (multi-label tasks)."""

  def loss_fn(logits, labels, mask=None):
    logits = logits.astype(jnp.float32)
    targets = labels.astype(jnp.float32)
    if label_smoothing:
      targets = targets * (1 - label_smoothing) + 0.5 * label_smoothing
    per_example = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets), axis=-1)
    return masked_mean(per_example, mask)

  return loss_fn


def loss_for_task(task: str, label_smoothing: float = 0.0) -> LossFn:
  if task == ds.MULTILABEL:
    return sigmoid_cross_entropy(label_smoothing)
  return softmax_cross_entropy(label_smoothing)


def probabilities(task: str, logits: jax.Array) -> jax.Array:
  """Scores the metrics use: softmax, or sigmoid for multi-label tasks."""
  logits = logits.astype(jnp.float32)
  if task == ds.MULTILABEL:
    return jax.nn.sigmoid(logits)
  return jax.nn.softmax(logits, axis=-1)
