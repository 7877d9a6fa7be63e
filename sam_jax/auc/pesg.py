"""PESG: Proximal Epoch Stochastic Gradient, the optimizer of the AUC-margin loss."""

from __future__ import annotations

from typing import Sequence

import optax

from sam_jax.auc import _dam
from sam_jax.optimizers import _base


def pesg(
    learning_rate: _base.ScalarOrSchedule = 0.1,
    *,
    margin: float = 1.0,
    mode: str = "sgd",
    clip_value: float | None = 1.0,
    weight_decay: float = 1e-5,
    epoch_decay: float = 2e-3,
    momentum: float = 0.0,
    momentum_convention: str = "heavy_ball",
    nesterov: bool = False,
    dampening: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    reference_resets: Sequence[int] = (),
    reference_init: str = "params",
    seed: int = 0,
) -> optax.GradientTransformation:
  r"""PESG for min over ``v = (w, a, b)``, max over ``α ≥ 0`` of the AUC-M objective.

  The primal step, on every primal tensor ``θ`` (the model's weights and
  AUC-M's ``a``, ``b``)::

      d = clip(∇_θ F, −c, c) + λ₀·(θ − θ_ref) + λ·θ
      θ ← θ − η·d                        (sgd mode, momentum 0)

  and the dual step, in closed form at the just-updated ``a``, ``b``::

      α ← clip(α + η·(2(m + b − a) − 2α), 0, 999)

  (the gradient of the v2 objective in ``α`` with the class means replaced
  by ``a``, ``b``, which equal them at the optimum). ``α`` is found as the
  ``"alpha"`` entry of every dict in ``params`` that also holds ``"a"`` and
  ``"b"`` (see :func:`sam_jax.auc.aucm_variables`); its gradient is ignored.
  Without such a dict PESG is the primal step alone.

  Stages ("epoch-level" decay): the learning rate is any optax schedule (the
  recipe divides it by 10 at 50% and 75% of training), and at every step
  count in ``reference_resets`` the anchor ``θ_ref`` moves to the average of
  the iterates since the previous reset, as LibAUC's
  ``update_regularizer(decay_factor)`` does when called at those epochs.

  Differences from LibAUC's code (each available by an option):

  * The documented algorithm has no momentum: ``momentum=0``. LibAUC's code
    defaults to ``momentum=0.9`` with ``buf ← (1 − μ)·buf + μ·d``: pass
    ``momentum=0.9, momentum_convention="libauc"``.
  * The documented anchor starts at the initial point: ``reference_init=
    "params"``. LibAUC's code draws it from ``N(0, 0.01²)``:
    ``reference_init="noise"`` (with ``seed``).

  ``mode="adam"`` replaces the SGD step by bias-corrected Adam on ``d``.

  Args:
    learning_rate: ``η``, a float or an optax schedule.
    margin: ``m`` of the AUC-M loss (use the loss's own).
    mode: ``"sgd"`` or ``"adam"``.
    clip_value: ``c``, element-wise clipping of the gradient; ``None``: none.
    weight_decay: ``λ``, coupled L2 (LibAUC's default 1e-5).
    epoch_decay: ``λ₀`` (LibAUC's default 2e-3; its legacy ``gamma`` is ``1/λ₀``).
    momentum, momentum_convention, nesterov, dampening: SGD momentum (see
      :mod:`sam_jax.auc._dam`).
    b1, b2, eps: Adam's.
    reference_resets: step counts at which ``θ_ref`` is reset.
    reference_init: ``"params"`` or ``"noise"``.
    seed: the noise of ``reference_init="noise"``.

  Example::

      >>> import optax, sam_jax
      >>> schedule = optax.piecewise_constant_schedule(0.1, {500: 0.1, 750: 0.1})
      >>> tx = sam_jax.auc.pesg(schedule, reference_resets=(500, 750))
      >>> sharp = optax.chain(sam_jax.sam(0.05), sam_jax.auc.pesg(schedule))

  References:
    Yuan, Yan, Sonka, Yang. Large-scale Robust Deep AUC Maximization. ICCV
    2021. Guo et al. Fast Objective & Duality Gap Convergence for Nonconvex-
    Strongly-Concave Min-Max Problems. 2020. LibAUC ``libauc/optimizers/pesg.py``.
  """
  # Every argument of this factory is one of the shared update's (see _dam).
  options = dict(locals())
  return _dam.dam_optimizer("pesg", dual_margin=options.pop("margin"), **options)
