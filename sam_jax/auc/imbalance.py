"""Non-AUC baselines for class imbalance: focal loss and class-weighted cross-entropy.

Both take logits (softmax over classes, as the rest of the library's
cross-entropy) and integer labels, and follow the ``(logits, labels, mask)
-> scalar`` form of :mod:`sam_jax.train.losses`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """``n / (K·n_c)`` per class (scikit-learn's "balanced"); a class absent from ``labels`` is an error."""
  labels = np.asarray(labels).reshape(-1)
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  if np.any(counts == 0):
    raise ValueError(f"class weights: classes {np.flatnonzero(counts == 0).tolist()} have no "
                     "training example.")
  return (len(labels) / (num_classes * counts)).astype(np.float32)


def weighted_cross_entropy(
    logits: jax.Array, labels: jax.Array, class_weights: Sequence[float],
    mask: Optional[jax.Array] = None,
) -> jax.Array:
  r"""``Σ_i w_{y_i}·CE_i / Σ_i w_{y_i}``: PyTorch's ``CrossEntropyLoss(weight=w)`` (mean reduction)."""
  logits = logits.astype(jnp.float32)
  weights = jnp.asarray(class_weights, jnp.float32)
  if weights.shape != logits.shape[-1:]:
    raise ValueError(f"weighted_cross_entropy: {weights.shape[0]} class weights for "
                     f"{logits.shape[-1]} classes.")
  per_example = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], -1)[:, 0]
  w = weights[labels]
  if mask is not None:
    w = w * mask.astype(jnp.float32)
  return jnp.sum(w * per_example) / jnp.maximum(jnp.sum(w), 1e-12)


def focal_loss(
    logits: jax.Array, labels: jax.Array, *, gamma: float = 2.0,
    class_weights: Optional[Sequence[float]] = None, mask: Optional[jax.Array] = None,
) -> jax.Array:
  r"""Focal loss (Lin et al., ICCV 2017): ``mean_i −α_{y_i}·(1 − p_{y_i})^γ·log p_{y_i}``.

  ``p`` is the softmax probability of the true class; ``γ = 0`` with no
  ``class_weights`` (the ``α_c``) is cross-entropy. The mean is over
  (unmasked) examples.
  """
  if not gamma >= 0:
    raise ValueError(f"focal_loss: gamma must be >= 0, got {gamma}.")
  log_p = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)),
                              labels[:, None], -1)[:, 0]
  per_example = -jnp.power(1 - jnp.exp(log_p), gamma) * log_p
  if class_weights is not None:
    per_example = per_example * jnp.asarray(class_weights, jnp.float32)[labels]
  if mask is None:
    return jnp.mean(per_example)
  m = mask.astype(jnp.float32)
  return jnp.sum(per_example * m) / jnp.maximum(jnp.sum(m), 1.0)
