"""AUC-margin (AUC-M) loss: the min-max margin objective of Deep AUC Maximization.

Yuan, Yan, Sonka, Yang. Large-scale Robust Deep AUC Maximization: A New
Surrogate Loss and Empirical Studies on Medical Image Classification. ICCV
2021 (arXiv 2012.03173); LibAUC's ``AUCMLoss`` and ``MultiLabelAUCMLoss``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from sam_jax.auc import _common

VERSIONS = ("v1", "v2")


def aucm_variables(num_labels: Optional[int] = None) -> dict[str, jax.Array]:
  """The objective's variables ``a``, ``b`` (primal) and ``alpha`` (dual), all 0.

  Scalars for a binary task; vectors of ``num_labels`` for a multi-label one
  (one ``a``, ``b``, ``alpha`` per label, as ``MultiLabelAUCMLoss``).
  """
  shape = () if num_labels is None else (num_labels,)
  return {name: jnp.zeros(shape, jnp.float32) for name in ("a", "b", "alpha")}


def aucm_loss(
    scores: jax.Array,
    labels: jax.Array,
    variables: dict[str, jax.Array],
    *,
    margin: float = 1.0,
    version: str = "v2",
    imratio: Optional[float] = None,
    mask: Optional[jax.Array] = None,
    libauc_v2_negative_mean: bool = False,
) -> jax.Array:
  r"""The AUC-margin objective ``F(w, a, b, α)``, minimized in ``(w, a, b)``, maximized in ``α ≥ 0``.

  ``h`` are scores in ``[0, 1]`` (the sigmoid of a logit), ``m`` the margin.

  **v2** (prior-free; LibAUC's recommended form, to be used with a dual
  sampler)::

      F = E₊[(h − a)²] + E₋[(h − b)²] + 2α(m + E₋[h] − E₊[h]) − α²

  where ``E₊``/``E₋`` average over the positives/negatives of the batch.

  **v1** (the ICCV 2021 form), with ``p`` the positive ratio and every mean
  over the whole batch of ``N``::

      F = (1−p)·mean[(h−a)²·1(y=1)] + p·mean[(h−b)²·1(y=0)]
          + 2α(p(1−p)·m + mean[p·h·1(y=0) − (1−p)·h·1(y=1)]) − p(1−p)α²

  For fixed scores the optimum is ``a = E₊[h]``, ``b = E₋[h]``, ``α = (m +
  E₋[h] − E₊[h])₊``, where v2 equals ``Var₊(h) + Var₋(h) + (m + E₋[h] −
  E₊[h])₊²``: the class variances plus a squared hinge on the gap between the
  class means, which is smaller for well-ranked scores.

  Multi-label (``scores``/``labels`` of shape ``(B, L)`` and variables of
  shape ``(L,)``): ``F`` is computed per label and averaged over labels.

  Args:
    scores: ``(B,)`` or ``(B, L)`` in ``[0, 1]``.
    labels: 0/1, the same shape.
    variables: ``{"a", "b", "alpha"}`` (see :func:`aucm_variables`).
    margin: ``m`` (LibAUC's default 1.0).
    version: ``"v1"`` or ``"v2"``.
    imratio: v1's ``p``. ``None``: the batch's positive fraction. (LibAUC's
      code ignores its ``imratio`` unless ``auto=False`` and always uses the
      batch fraction; giving ``imratio`` here is the documented form.)
    mask: ``(B,)`` booleans; masked examples count in no mean.
    libauc_v2_negative_mean: reproduce LibAUC's binary v2 code, whose
      ``mean_nz(h·1(y=0) − mean_nz(h·1(y=1)))`` divides the negatives' sum by
      ``N`` instead of ``N₋``. Off by default: the documented formula.

  Returns:
    The scalar ``F`` (float32).
  """
  _common.check_scores(scores, labels, "aucm_loss")
  if version not in VERSIONS:
    raise ValueError(f"aucm_loss: version must be one of {VERSIONS}, got {version!r}.")
  h = scores.astype(jnp.float32)
  pos, neg = _common.pos_neg(labels, mask)
  a, b, alpha = (jnp.asarray(variables[k], jnp.float32) for k in ("a", "b", "alpha"))
  n = jnp.maximum(jnp.sum(pos + neg, axis=0), 1.0)
  if version == "v1":
    p = jnp.sum(pos, axis=0) / n if imratio is None else jnp.float32(imratio)
    value = ((1 - p) * jnp.sum(jnp.square(h - a) * pos, axis=0) / n
             + p * jnp.sum(jnp.square(h - b) * neg, axis=0) / n
             + 2 * alpha * (p * (1 - p) * margin
                            + jnp.sum(p * h * neg - (1 - p) * h * pos, axis=0) / n)
             - p * (1 - p) * jnp.square(alpha))
    return jnp.mean(value)
  n_pos = jnp.maximum(jnp.sum(pos, axis=0), 1.0)
  n_neg = jnp.maximum(jnp.sum(neg, axis=0), 1.0)
  mean_pos = jnp.sum(h * pos, axis=0) / n_pos
  mean_neg = jnp.sum(h * neg, axis=0) / (n if libauc_v2_negative_mean else n_neg)
  value = (jnp.sum(jnp.square(h - a) * pos, axis=0) / n_pos
           + jnp.sum(jnp.square(h - b) * neg, axis=0) / n_neg
           + 2 * alpha * (margin + mean_neg - mean_pos)
           - jnp.square(alpha))
  return jnp.mean(value)
