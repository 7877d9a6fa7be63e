"""SOPA: the optimizer of the one-way partial AUC loss in CVaR form."""

from __future__ import annotations

from typing import Sequence

import optax

from sam_jax.auc import _dam
from sam_jax.optimizers import _base


def sopa(
    learning_rate: _base.ScalarOrSchedule = 1e-3,
    *,
    mode: str = "adam",
    clip_value: float | None = 1.0,
    weight_decay: float = 0.0,
    epoch_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
    dampening: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    reference_resets: Sequence[int] = (),
    reference_init: str = "params",
    seed: int = 0,
) -> optax.GradientTransformation:
  r"""SOPA's model update for :func:`sam_jax.auc.pauc_cvar_loss`.

  The documented algorithm::

      s_i ← s_i − (η₂/n₊)·(1 − Σ_j p_ij/(β|B₋|))          (in the loss's state)
      ∇_t = (1/(β|B₊||B₋|)) Σ_ij p_ij ∇L_ij                (the loss's gradient)
      w   ← w − η₁·∇_t

  The thresholds ``s`` move inside the loss (their step ``η₂`` is the loss's
  ``eta``); this transformation is the ``w`` step: Adam (default) or
  SGD-momentum on ``clip(g, −c, c) + λ₀(θ − θ_ref) + λθ``, with LibAUC's
  ``SOPA`` defaults (``clip_value=1``, no weight decay).

  References:
    Zhu, Li, Guo, Zhang, Yang. When AUC meets DRO: Optimizing Partial AUC
    for Deep Learning with Non-Convex Convergence Guarantee. ICML 2022.
  """
  # Every argument of this factory is one of the shared update's (see _dam).
  return _dam.dam_optimizer("sopa", momentum_convention="heavy_ball", **locals())
