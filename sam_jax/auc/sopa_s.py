"""SOPA-s: the optimizer of the one-way partial AUC loss in KL-DRO form."""

from __future__ import annotations

from typing import Sequence

import optax

from sam_jax.auc import _dam
from sam_jax.optimizers import _base


def sopa_s(
    learning_rate: _base.ScalarOrSchedule = 1e-3,
    *,
    mode: str = "adam",
    clip_value: float | None = 2.0,
    weight_decay: float = 1e-5,
    epoch_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
    dampening: float = 0.1,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    reference_resets: Sequence[int] = (),
    reference_init: str = "params",
    seed: int = 0,
) -> optax.GradientTransformation:
  r"""SOPA-s's model update for :func:`sam_jax.auc.pauc_kl_loss` (and the two-way KL loss).

  The moving averages ``u_i`` live in the loss's state; the gradient of the
  loss is ``mean_ij p_ij ∇L_ij`` with ``p_ij = exp(L_ij/λ)/u_i``. The model
  step is the same as :func:`sam_jax.auc.soap`'s: Adam (default) or
  SGD-momentum on ``clip(g, −c, c) + λ₀(θ − θ_ref) + λθ``, with LibAUC's
  ``SOPAs`` defaults (``clip_value=2``, ``weight_decay=1e-5``,
  ``dampening=0.1``).

  References:
    Zhu, Li, Guo, Zhang, Yang. When AUC meets DRO. ICML 2022.
  """
  # Every argument of this factory is one of the shared update's (see _dam).
  return _dam.dam_optimizer("sopa_s", momentum_convention="heavy_ball", **locals())
