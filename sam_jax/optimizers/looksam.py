"""LookSAM: SAM every k steps, its sharpness component reused between (Liu et al., CVPR 2022)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from sam_jax.optimizers import _base


@_base.sharpness_state
class LookSAMState(NamedTuple):
  """State of :func:`looksam`.

  Attributes:
    count: number of updates so far (int32).
    orthogonal: ``g_v``, the part of the last SAM gradient orthogonal to
      that step's clean gradient (zeros before the first SAM step).
    sam_steps: how many updates computed the second pass (int32).
  """

  count: jax.Array
  orthogonal: Any
  sam_steps: jax.Array


def looksam(
    rho: _base.ScalarOrSchedule = 0.05,
    period: int = 5,
    alpha: _base.ScalarOrSchedule = 0.7,
    *,
    eps: float = 1e-12,
    skip: str = "auto",
) -> optax.GradientTransformationExtraArgs:
  r"""LookSAM: the SAM gradient every ``k`` steps, a cheap surrogate in between.

  The SAM gradient differs from the clean one mostly by a component
  orthogonal to it, which changes slowly; LookSAM computes it on every
  ``k``-th step and adds it back, rescaled, on the others::

      g = ∇L(w)                                 (the ``grads`` given to update)
      every k-th step, k = period (t mod k = 0, the first step included):
          g_s = ∇L(w + ρ·g/(‖g‖ + eps))         (one call of grad_fn)
          g_v = g_s − (⟨g, g_s⟩ / (‖g‖² + eps)) · g
          direction = g_s
      other steps (no second pass):
          direction = g + α · (‖g‖ / (‖g_v‖ + eps)) · g_v

  ``g_v`` is the paper's ``g_s − ‖g_s‖ cos θ · g/‖g‖`` written without the
  angle; a SAM step at ``ρ = 0`` sets it to zero (it would be rounding noise),
  so a radius schedule that reaches 0 leaves the base optimizer.

  With ``skip="cond"`` (the default, except for convolutions on CPU: see ``skip``) the choice
  between the branches is a :func:`jax.lax.cond`, so the steps in between
  cost one forward/backward pass: about ``(1 + 1/k)`` SGD steps on average.
  One parameter-sized buffer (``g_v``) is kept.

  Under data parallelism (``axis_name``) each device perturbs with its own
  gradient, as :func:`sam` does; ``g_v`` is then averaged across devices so
  that the state stays the same everywhere (one all-reduce every
  ``period`` steps). A non-finite clean gradient always takes the SAM branch, which
  spreads it to every leaf.

  Args:
    rho: SAM's radius (float or schedule).
    period: ``k``, the period of SAM steps, an int ≥ 1 (1 is SAM). The paper
      uses 5.
    alpha: the weight of the reused component (float or schedule); the
      paper's ViT runs use 0.7.
    eps: added to every norm.
    skip: ``"cond"`` (the second pass not computed), ``"select"`` (computed,
      discarded) or ``"auto"``: :func:`sam_jax.optimizers._base.branch`.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose update needs
    ``params`` and ``grad_fn``. The perturbed evaluation's aux is not handed
    to ``aux_sink`` (it exists on some steps only).

  References:
    Liu, Mai, Chen, Hsieh, You. Towards Efficient and Scalable
    Sharpness-Aware Minimization. CVPR 2022 (Algorithm 1).
  """
  _base.check_hyperparameter("rho", rho, minimum=0.0)
  _base.check_hyperparameter("alpha", alpha, minimum=0.0)
  _base.check_hyperparameter("eps", eps, minimum=0.0, min_inclusive=False)
  _base.check_skip("looksam", skip)
  _base.check_integer("looksam", "period", period, minimum=1)

  def init_fn(params: Any) -> LookSAMState:
    return LookSAMState(count=_base.zero_count(),
                        orthogonal=jax.tree.map(jnp.zeros_like, params),
                        sam_steps=_base.zero_count())

  def update_fn(
      updates: Any,
      state: LookSAMState,
      params: Any = None,
      *,
      grad_fn: Optional[_base.GradFn] = None,
      aux_sink: Optional[_base.AuxSink] = None,
      axis_name: Optional[str] = None,
      **extra_args: Any,
  ):
    del extra_args, aux_sink
    grad_fn = _base.require_grad_fn(grad_fn, params, "looksam")
    rho_t = _base.value_at(rho, state.count)
    alpha_t = _base.value_at(alpha, state.count)
    g = updates
    g_norm = _base.global_norm(g)
    take = _base.take_if_nonfinite(state.count % period == 0, g, axis_name)

    def sam_step():
      perturbation = _base.sam_perturbation(g, params, rho_t, eps)
      g_s = _base.evaluate(grad_fn, _base.perturb(params, perturbation),
                           name=_base.PERTURBED, aux_sink=None, who="looksam")
      parallel = _base.tree_vdot(g, g_s) / (jnp.square(g_norm) + eps)
      # At ρ = 0, g_s = g and g_v would be rounding noise, which the reuse step
      # normalizes to a random direction of length α‖g‖: kept at zero instead, so
      # that a radius decayed to 0 is the base optimizer on every step.
      keep = (rho_t > 0).astype(parallel.dtype)
      g_v = _base.tree_combine((keep, g_s), (-parallel * keep, g), like=state.orthogonal)
      g_v = _base.cross_device_mean(g_v, axis_name)
      return _base.tree_combine((1.0, g_s), like=g), g_v

    def reuse_step():
      scale = alpha_t * g_norm / (_base.global_norm(state.orthogonal) + eps)
      return _base.tree_combine((1.0, g), (scale, state.orthogonal), like=g), state.orthogonal

    direction, orthogonal = _base.branch(take, sam_step, reuse_step, skip)
    direction = _base.cross_device_mean(direction, axis_name)
    return direction, LookSAMState(
        count=optax.safe_increment(state.count),
        orthogonal=orthogonal,
        sam_steps=state.sam_steps + take.astype(jnp.int32),
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
