"""AE-SAM: SAM only where the gradient norm says the loss is sharp (Jiang et al., ICLR 2023)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from sam_jax.optimizers import _base


@_base.sharpness_state
class AESAMState(NamedTuple):
  """State of :func:`ae_sam`.

  Attributes:
    count: number of updates so far (int32).
    mean: ``μ``, the moving average of ``‖g‖²`` (float32).
    variance: ``σ²``, the moving average of ``(‖g‖² − μ)²`` (float32).
    sam_steps: how many updates computed the second pass (int32).
  """

  count: jax.Array
  mean: jax.Array
  variance: jax.Array
  sam_steps: jax.Array


def ae_sam(
    rho: _base.ScalarOrSchedule = 0.05,
    threshold: _base.ScalarOrSchedule = 0.0,
    ema_decay: float = 0.9,
    *,
    eps: float = 1e-12,
    skip: str = "auto",
) -> optax.GradientTransformationExtraArgs:
  r"""Adaptive policy to employ SAM: SAM where ``‖g‖²`` is high, the clean gradient elsewhere.

  The squared norm of the stochastic gradient is large in sharp regions;
  AE-SAM tracks its mean and variance with moving averages and takes the SAM
  step only when the current value is high for the run so far::

      g = ∇L(w),   n = ‖g‖²
      c = threshold, δ = ema_decay
      μ  ← δ·μ  + (1 − δ)·n                   (μ = σ² = 0 before the first step)
      σ² ← δ·σ² + (1 − δ)·(n − μ)²            (with the new μ)
      if n ≥ μ + c·σ:  direction = ∇L(w + ρ·g/(‖g‖ + eps))   (one call of grad_fn)
      else:            direction = g                          (no second pass)

  With ``skip="cond"`` (the default, except for convolutions on CPU: see ``skip``) the
  choice is a :func:`jax.lax.cond`: a step without SAM costs one
  forward/backward pass. ``threshold`` (``c``) sets the fraction of SAM steps (about half
  for ``c = 0`` if ``n`` is roughly Gaussian, fewer for larger ``c``); the
  paper moves it linearly during training, which a schedule does here, e.g.
  ``threshold=optax.linear_schedule(-1.0, 1.0, total_steps)``. The state's
  ``sam_steps`` counts the steps that took SAM.

  Under data parallelism (``axis_name``) ``n`` is the mean over devices of
  the local squared norms, so that every device takes the same decision and
  keeps the same ``μ``, ``σ²`` (a scalar all-reduce per step); the
  perturbation is then per-device, as in :func:`sam`. A non-finite ``n``
  takes the SAM branch, which spreads it to every leaf.

  Args:
    rho: SAM's radius (float or schedule).
    threshold: ``c``, in standard deviations (float or schedule; any sign).
    ema_decay: ``δ``, the decay of the moving averages, in [0, 1).
    eps: added to the gradient norm in the perturbation.
    skip: ``"cond"`` (the second pass not computed), ``"select"`` (computed,
      discarded) or ``"auto"``: :func:`sam_jax.optimizers._base.branch`.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose update needs
    ``params`` and ``grad_fn``. The perturbed evaluation's aux is not handed
    to ``aux_sink`` (it exists on some steps only).

  References:
    Jiang, Yang, Zhang, Kwok. An Adaptive Policy to Employ Sharpness-Aware
    Minimization. ICLR 2023.
  """
  _base.check_hyperparameter("rho", rho, minimum=0.0)
  _base.check_hyperparameter("threshold", threshold)
  _base.check_hyperparameter("ema_decay", ema_decay, minimum=0.0, maximum=1.0,
                             max_inclusive=False)
  _base.check_hyperparameter("eps", eps, minimum=0.0, min_inclusive=False)
  _base.check_skip("ae_sam", skip)

  def init_fn(params: Any) -> AESAMState:
    del params
    # Distinct arrays: a train step donates the state, and one buffer cannot be donated twice.
    return AESAMState(count=_base.zero_count(), mean=jnp.zeros([], jnp.float32),
                      variance=jnp.zeros([], jnp.float32), sam_steps=_base.zero_count())

  def update_fn(
      updates: Any,
      state: AESAMState,
      params: Any = None,
      *,
      grad_fn: Optional[_base.GradFn] = None,
      aux_sink: Optional[_base.AuxSink] = None,
      axis_name: Optional[str] = None,
      **extra_args: Any,
  ):
    del extra_args, aux_sink
    grad_fn = _base.require_grad_fn(grad_fn, params, "ae_sam")
    rho_t = _base.value_at(rho, state.count)
    c_t = _base.value_at(threshold, state.count).astype(jnp.float32)
    norm_sq = jnp.square(_base.global_norm(updates)).astype(jnp.float32)
    norm_sq = _base.cross_device_mean(norm_sq, axis_name)
    mean = ema_decay * state.mean + (1.0 - ema_decay) * norm_sq
    variance = (ema_decay * state.variance
                + (1.0 - ema_decay) * jnp.square(norm_sq - mean))
    # Written as "not below" so that a NaN norm takes SAM (see _base.take_if_nonfinite).
    take = ~(norm_sq < mean + c_t * jnp.sqrt(variance))
    direction, take = _base.sam_or_clean(take, updates, params, rho_t, eps, grad_fn, "ae_sam",
                                         skip, axis_name)
    return direction, AESAMState(
        count=optax.safe_increment(state.count), mean=mean, variance=variance,
        sam_steps=state.sam_steps + take.astype(jnp.int32))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
