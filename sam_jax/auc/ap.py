"""AP (AUPRC) loss, the objective of SOAP.

Qi, Luo, Xu, Ji, Yang. Stochastic Optimization of Areas Under
Precision-Recall Curves with Provable Convergence. NeurIPS 2021 (arXiv
2104.08736); LibAUC's ``APLoss``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from sam_jax.auc import _common
from sam_jax.auc.surrogates import get_surrogate


class APState(NamedTuple):
  """Per-example moving averages, indexed by dataset index (LibAUC's u_all, u_pos).

  Attributes:
    u_all: ``(n,)`` estimate of ``mean_j ℓ(h_i − h_j)`` for positive ``i``.
    u_pos: ``(n,)`` estimate of ``mean_j ℓ(h_i − h_j)·1(y_j = 1)``.
  """

  u_all: jax.Array
  u_pos: jax.Array


def ap_state(num_examples: int) -> APState:
  """Zero buffers for a training set of ``num_examples``."""
  if num_examples < 1:
    raise ValueError(f"ap_state needs the training set size >= 1, got {num_examples}.")
  return APState(u_all=jnp.zeros((num_examples,), jnp.float32),
                 u_pos=jnp.zeros((num_examples,), jnp.float32))


def ap_loss(
    scores: jax.Array,
    labels: jax.Array,
    index: jax.Array,
    state: APState,
    *,
    margin: float = 1.0,
    gamma: float = 0.9,
    surrogate: str = "squared_hinge",
    mask: Optional[jax.Array] = None,
) -> tuple[jax.Array, APState]:
  r"""SOAP's stochastic AP surrogate, and the updated buffers.

  The objective is ``−(1/n₊) Σ_{y_i=1} [Σ_s 1(y_s=1) ℓ_is] / [Σ_s ℓ_is]``
  with ``ℓ_is = ℓ(m, h_i − h_s)`` a surrogate of ``1(h_s ≥ h_i)``. Its
  inner ratio is tracked per positive ``i`` by two moving averages; for
  every positive ``i`` of the batch and every ``j`` of the batch (positives
  included)::

      L_ij     = ℓ(m, h_i − h_j)
      u_all_i ← (1 − γ)·u_all_i + γ·mean_j L_ij
      u_pos_i ← (1 − γ)·u_pos_i + γ·mean_j L_ij·1(y_j = 1)
      p_ij     = (u_pos_i − u_all_i·1(y_j = 1)) / u_all_i²      (no gradient)
      loss     = mean_{i ∈ B₊, j ∈ B} p_ij·L_ij

  whose gradient is the SOAP estimate of the AP surrogate's gradient. ``γ``
  weights the *new* batch estimate (LibAUC's convention; default 0.9).

  Args:
    scores: ``(B,)`` in ``[0, 1]``.
    labels: ``(B,)`` 0/1.
    index: ``(B,)`` each example's index in the training set (the buffers'
      rows); ``-1`` rows are padding.
    state: :class:`APState` (from :func:`ap_state`).
    margin, gamma, surrogate: as in LibAUC (tips there: ``γ`` in {0.1, …,
      0.9}, margin in {0.6, 0.8, 1.0}).
    mask: ``(B,)`` booleans; masked examples take no part.

  Returns:
    ``(loss, new_state)``. A batch without a positive gives loss 0 and
    leaves the buffers unchanged; sample with a dual sampler.
  """
  _common.check_binary(scores, labels, "ap_loss")
  ell = get_surrogate(surrogate, margin)
  pos, neg = _common.pos_neg(labels, mask)
  valid = pos + neg
  n = jnp.maximum(jnp.sum(valid), 1.0)
  loss_ij = _common.pairwise(ell, scores)
  held = jax.lax.stop_gradient(loss_ij)
  u_all = (1 - gamma) * state.u_all[index] + gamma * jnp.sum(held * valid[None, :], 1) / n
  u_pos = (1 - gamma) * state.u_pos[index] + gamma * jnp.sum(held * pos[None, :], 1) / n
  safe = jnp.where(u_all > 0, u_all, 1.0)
  p = jnp.where(u_all[:, None] > 0,
                (u_pos[:, None] - u_all[:, None] * pos[None, :]) / jnp.square(safe)[:, None], 0.0)
  weights = jax.lax.stop_gradient(p) * pos[:, None] * valid[None, :]
  n_pos = jnp.maximum(jnp.sum(pos), 1.0)
  loss = jnp.sum(weights * loss_ij) / (n_pos * n)
  new_state = APState(u_all=_common.update_rows(state.u_all, index, pos, u_all),
                      u_pos=_common.update_rows(state.u_pos, index, pos, u_pos))
  return loss, new_state
