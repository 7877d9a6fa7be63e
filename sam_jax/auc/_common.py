"""What the AUC objectives share: masks, label checks, pairwise surrogate matrices."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def pos_neg(labels: jax.Array, mask: Optional[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """float32 indicators of positive and negative examples (masked ones: neither).

  ``labels`` is ``(B,)`` or ``(B, L)``; ``mask`` is ``(B,)`` or ``None``.
  """
  labels = jnp.asarray(labels)
  valid = jnp.ones(labels.shape[:1], bool) if mask is None else jnp.asarray(mask, bool)
  valid = valid.reshape(valid.shape + (1,) * (labels.ndim - 1))
  pos = (labels == 1) & valid
  neg = (labels == 0) & valid
  return pos.astype(jnp.float32), neg.astype(jnp.float32)


def check_scores(scores: jax.Array, labels: jax.Array, who: str) -> None:
  """Shapes must agree: one score per label."""
  if jnp.shape(scores) != jnp.shape(labels):
    raise ValueError(f"{who}: scores of shape {jnp.shape(scores)} do not match labels of "
                     f"shape {jnp.shape(labels)}; give one score in [0, 1] per label "
                     "(the sigmoid of a logit).")


def check_binary(scores: jax.Array, labels: jax.Array, who: str) -> None:
  check_scores(scores, labels, who)
  if jnp.ndim(scores) != 1:
    raise ValueError(f"{who} takes a binary task: scores and labels of shape (batch,), got "
                     f"{jnp.shape(scores)}.")


def pairwise(surrogate, scores: jax.Array) -> jax.Array:
  """``L[i, j] = ℓ(h_i − h_j)`` for every pair of the batch."""
  scores = scores.astype(jnp.float32)
  return surrogate(scores[:, None] - scores[None, :])


def update_rows(buffer: jax.Array, index: jax.Array, rows: jax.Array,
                values: jax.Array) -> jax.Array:
  """``buffer[index[i]] = values[i]`` where ``rows[i]``; other rows untouched.

  ``index`` holds dataset indices (``-1`` for padding). An index repeated in
  one batch (the dual sampler can draw a small class twice) keeps one of its
  values, as LibAUC's indexed assignment does.
  """
  target = jnp.where(rows > 0, index, buffer.shape[0])  # out of range: dropped
  return buffer.at[target].set(values.astype(buffer.dtype), mode="drop")
