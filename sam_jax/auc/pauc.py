"""Partial-AUC losses: one-way (CVaR form for SOPA, KL-DRO form for SOPA-s) and two-way (KL).

Zhu, Li, Guo, Zhang, Yang. When AUC meets DRO: Optimizing Partial AUC for
Deep Learning with Non-Convex Convergence Guarantee. ICML 2022 (arXiv
2203.00176); LibAUC's ``pAUC_CVaR_Loss``, ``pAUC_DRO_Loss`` and
``tpAUC_KL_Loss``.

Every loss keeps its per-positive variables in arrays indexed by dataset
index and returns them updated with the loss: ``(loss, new_state)``. Only
positive-negative pairs ``(i ∈ B₊, j ∈ B₋)`` enter, with ``L_ij = ℓ(m, h_i −
h_j)``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from sam_jax.auc import _common
from sam_jax.auc.surrogates import get_surrogate


def _pairs(scores, labels, mask, surrogate, margin, who):
  _common.check_binary(scores, labels, who)
  pos, neg = _common.pos_neg(labels, mask)
  loss_ij = _common.pairwise(get_surrogate(surrogate, margin), scores)
  pair = pos[:, None] * neg[None, :]
  n_pos = jnp.maximum(jnp.sum(pos), 1.0)
  n_neg = jnp.maximum(jnp.sum(neg), 1.0)
  return pos, pair, loss_ij, n_pos, n_neg


def _zeros(num_examples: int, who: str) -> jax.Array:
  if num_examples < 1:
    raise ValueError(f"{who} needs the training set size >= 1, got {num_examples}.")
  return jnp.zeros((num_examples,), jnp.float32)


def pauc_cvar_state(num_examples: int) -> jax.Array:
  """The thresholds ``s`` (one per training example, 0 at start)."""
  return _zeros(num_examples, "pauc_cvar_state")


def pauc_cvar_loss(
    scores: jax.Array,
    labels: jax.Array,
    index: jax.Array,
    s: jax.Array,
    *,
    beta: float = 0.2,
    eta: float = 0.1,
    margin: float = 1.0,
    surrogate: str = "squared_hinge",
    num_positives: Optional[int] = None,
    mask: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array]:
  r"""One-way partial AUC for FPR in ``[0, β]``, CVaR form (SOPA), and the updated ``s``.

  Objective: ``F(w, s) = (1/n₊) Σ_{i∈S₊} (s_i + (1/(β n₋)) Σ_{j∈S₋} (L_ij − s_i)₊)``,
  whose minimization over ``s_i`` picks, for every positive, the top ``β``
  fraction of negatives. Per step, with ``p_ij = 1(L_ij > s_i)`` computed at
  the old ``s``::

      s_i ← s_i − η'·(1 − Σ_j p_ij / (β·|B₋|))
      loss = mean_{i ∈ B₊, j ∈ B₋}(p_ij·L_ij) / β

  ``η' = η / n₊`` with ``n₊`` the training set's positives, the documented
  SOPA update (and LibAUC 1.4.0); ``num_positives=None`` gives ``η' = η``,
  LibAUC 2.0.1's code (its tips, η in {10, 1, 0.1, 0.01}, are for that).

  Args:
    scores, labels: ``(B,)``; scores in ``[0, 1]``, labels 0/1.
    index: ``(B,)`` dataset indices of the examples (``-1``: padding).
    s: ``(n,)`` thresholds (:func:`pauc_cvar_state`).
    beta: the FPR range ``(0, 1]``.
    eta: ``η``, the step size of ``s``.
    margin, surrogate: the pairwise surrogate.
    num_positives: ``n₊`` for the documented ``η/n₊``; ``None``: LibAUC 2.0.1.
    mask: ``(B,)`` booleans.

  Returns:
    ``(loss, new_s)``.
  """
  if not 0 < beta <= 1:
    raise ValueError(f"pauc_cvar_loss: beta must be in (0, 1], got {beta}.")
  pos, pair, loss_ij, n_pos, n_neg = _pairs(scores, labels, mask, surrogate, margin,
                                            "pauc_cvar_loss")
  s_batch = s[index]
  p = (jax.lax.stop_gradient(loss_ij) > s_batch[:, None]).astype(jnp.float32) * pair
  step = eta if num_positives is None else eta / num_positives
  s_new = s_batch - step * (1 - jnp.sum(p, 1) / (beta * n_neg))
  loss = jnp.sum(p * loss_ij) / (n_pos * n_neg) / beta
  return loss, _common.update_rows(s, index, pos, s_new)


def pauc_kl_state(num_examples: int) -> jax.Array:
  """The moving averages ``u`` of SOPA-s (one per training example, 0 at start)."""
  return _zeros(num_examples, "pauc_kl_state")


def pauc_kl_loss(
    scores: jax.Array,
    labels: jax.Array,
    index: jax.Array,
    u: jax.Array,
    *,
    gamma: float = 0.9,
    lmbda: float = 1.0,
    margin: float = 1.0,
    surrogate: str = "squared_hinge",
    mask: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array]:
  r"""One-way partial AUC, KL-DRO form (SOPA-s), and the updated ``u``.

  Objective: ``(1/n₊) Σ_{i∈S₊} λ·log((1/n₋) Σ_{j∈S₋} exp(L_ij/λ))``, a soft
  maximum over the negatives that weights the hard ones. Per step::

      E_ij = exp(L_ij / λ)
      u_i ← (1 − γ)·u_i + γ·mean_{j ∈ B₋} E_ij
      p_ij = E_ij / u_i                              (no gradient)
      loss = mean_{i ∈ B₊, j ∈ B₋} p_ij·L_ij

  Args:
    scores, labels, index, mask: as :func:`pauc_cvar_loss`.
    u: ``(n,)`` (:func:`pauc_kl_state`).
    gamma: weight of the new batch estimate (LibAUC's convention).
    lmbda: the KL temperature ``λ > 0`` (LibAUC's ``Lambda``).
    margin, surrogate: the pairwise surrogate.

  Returns:
    ``(loss, new_u)``.
  """
  if not lmbda > 0:
    raise ValueError(f"pauc_kl_loss: lmbda must be > 0, got {lmbda}.")
  pos, pair, loss_ij, n_pos, n_neg = _pairs(scores, labels, mask, surrogate, margin,
                                            "pauc_kl_loss")
  exp_loss = jnp.exp(jax.lax.stop_gradient(loss_ij) / lmbda) * pair
  u_batch = (1 - gamma) * u[index] + gamma * jnp.sum(exp_loss, 1) / n_neg
  p = jnp.where(pair > 0, exp_loss / jnp.where(u_batch > 0, u_batch, 1.0)[:, None], 0.0)
  loss = jnp.sum(p * loss_ij) / (n_pos * n_neg)
  return loss, _common.update_rows(u, index, pos, u_batch)


class TwoWayKLState(NamedTuple):
  """State of :func:`tpauc_kl_loss`.

  Attributes:
    u: ``(n,)`` per-positive moving averages, indexed by dataset index.
    w: scalar moving average of ``mean_i u_i^{λ/τ}``.
  """

  u: jax.Array
  w: jax.Array


def tpauc_kl_state(num_examples: int) -> TwoWayKLState:
  return TwoWayKLState(u=_zeros(num_examples, "tpauc_kl_state"), w=jnp.zeros([], jnp.float32))


def tpauc_kl_loss(
    scores: jax.Array,
    labels: jax.Array,
    index: jax.Array,
    state: TwoWayKLState,
    *,
    tau: float = 1.0,
    lmbda: float = 1.0,
    gammas: tuple[float, float] = (0.9, 0.9),
    margin: float = 1.0,
    surrogate: str = "squared_hinge",
    mask: Optional[jax.Array] = None,
) -> tuple[jax.Array, TwoWayKLState]:
  r"""Two-way partial AUC (TPR ≥ α and FPR ≤ β), KL form (SOTA-s), and the new state.

  Objective: ``τ·log((1/n₊) Σ_i ((1/n₋) Σ_j exp(L_ij/λ))^{λ/τ})``: KL-DRO
  over the negatives (temperature ``λ``) inside KL-DRO over the positives
  (``τ``). Per step::

      u_i ← (1 − γ₀)·u_i + γ₀·mean_{j ∈ B₋} exp(L_ij/λ)
      w  ← (1 − γ₁)·w  + γ₁·mean_{i ∈ B₊} u_i^{λ/τ}
      p_ij = u_i^{λ/τ − 1}·exp(L_ij/λ) / w            (no gradient)
      loss = mean_{i ∈ B₊, j ∈ B₋} p_ij·L_ij

  Args:
    scores, labels, index, mask: as :func:`pauc_cvar_loss`.
    state: :class:`TwoWayKLState` (:func:`tpauc_kl_state`).
    tau, lmbda: the temperatures ``τ, λ > 0``.
    gammas: ``(γ₀, γ₁)``.
    margin, surrogate: the pairwise surrogate.

  Returns:
    ``(loss, new_state)``.
  """
  if not (tau > 0 and lmbda > 0):
    raise ValueError(f"tpauc_kl_loss: tau and lmbda must be > 0, got {tau}, {lmbda}.")
  gamma0, gamma1 = gammas
  pos, pair, loss_ij, n_pos, n_neg = _pairs(scores, labels, mask, surrogate, margin,
                                            "tpauc_kl_loss")
  exp_loss = jnp.exp(jax.lax.stop_gradient(loss_ij) / lmbda) * pair
  u_batch = (1 - gamma0) * state.u[index] + gamma0 * jnp.sum(exp_loss, 1) / n_neg
  u_safe = jnp.where(pos > 0, jnp.maximum(u_batch, 1e-30), 1.0)
  power = lmbda / tau
  w = (1 - gamma1) * state.w + gamma1 * jnp.sum(jnp.power(u_safe, power) * pos) / n_pos
  w = jnp.where(jnp.sum(pos) > 0, w, state.w)  # no positive: nothing to average
  p = jnp.power(u_safe, power - 1)[:, None] * exp_loss / jnp.where(w > 0, w, 1.0)
  loss = jnp.sum(p * pair * loss_ij) / (n_pos * n_neg)
  return loss, TwoWayKLState(u=_common.update_rows(state.u, index, pos, u_batch), w=w)
