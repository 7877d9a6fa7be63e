"""SOAP: the optimizer of the AP loss (stochastic optimization of AUPRC)."""

from __future__ import annotations

from typing import Sequence

import optax

from sam_jax.auc import _dam
from sam_jax.optimizers import _base


def soap(
    learning_rate: _base.ScalarOrSchedule = 1e-3,
    *,
    mode: str = "adam",
    clip_value: float | None = 1.0,
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
  r"""SOAP's model update for :func:`sam_jax.auc.ap_loss` (whose buffers carry the method).

  On every tensor ``θ``::

      d = clip(g, −c, c) + λ₀·(θ − θ_ref) + λ·θ
      adam mode:  θ ← θ − η·m̂/(√v̂ + eps)     (bias-corrected Adam on d)
      sgd mode:   buf ← μ·buf + (1 − dampening)·d;  θ ← θ − η·buf   (buf = d at first)

  ``g`` is the gradient of the AP loss, which already weights each pair by
  the moving-average ratio ``p_ij``; the optimizer itself is Adam or
  SGD-momentum after element-wise clipping. Defaults are LibAUC's ``SOAP``;
  stages via a learning-rate schedule and ``reference_resets`` as in
  :func:`sam_jax.auc.pesg`.

  References:
    Qi, Luo, Xu, Ji, Yang. Stochastic Optimization of Areas Under
    Precision-Recall Curves with Provable Convergence. NeurIPS 2021.
  """
  # Every argument of this factory is one of the shared update's (see _dam).
  return _dam.dam_optimizer("soap", momentum_convention="heavy_ball", **locals())
