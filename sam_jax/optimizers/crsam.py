"""CR-SAM: Curvature-Regularized SAM (Wu, Luo, Wunsch, AAAI 2024, arXiv 2312.13555)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from sam_jax.optimizers import _base


@_base.sharpness_state
class CRSAMState(NamedTuple):
  """State of :func:`crsam`.

  Attributes:
    count: number of updates so far (int32); schedules are evaluated at it.
  """

  count: jax.Array


def crsam(
    rho: _base.ScalarOrSchedule = 0.1,
    gamma: _base.ScalarOrSchedule = 0.1,
    beta: _base.ScalarOrSchedule = 0.1,
    *,
    batched: Optional[bool] = None,
    eps: float = 1e-12,
) -> optax.GradientTransformationExtraArgs:
  r"""Curvature-Regularized Sharpness-Aware Minimization.

  One-step ascent approximates the inner maximization of SAM less and less
  well as the landscape grows non-linear. CR-SAM regularizes the curvature
  along the ascent direction, estimated by finite differences of gradients at
  ``w ± ε`` (official code, class ``CRSAM``)::

      g₀ = ∇L(w)
      ε  = ρ · g₀ / (‖g₀‖ + eps)
      g₊ = ∇L(w + ε),   g₋ = ∇L(w − ε)        (independent of each other)
      direction = g₊ + γ·(g₊ + g₋ − 2·g₀) + β·(g₊ − g₋)

  With ``ε`` held fixed this is the gradient of
  ``L(w+ε) + γ·[L(w+ε) + L(w−ε) − 2L(w)] + β·[L(w+ε) − L(w−ε)]``: the middle
  term ≈ ``ρ²·ĝᵀHĝ`` (curvature along ĝ), the last ≈ ``2ρ‖g‖`` (a gradient-norm
  penalty). ``γ = β = 0`` is SAM. Three passes per step; the two perturbed
  gradients do not depend on each other, so they can be evaluated in one
  ``jax.vmap`` over the sign of ``ε`` (``batched``).

  Args:
    rho: radius; a float or schedule (official default 0.1).
    gamma: weight of the curvature term (official default 0.1).
    beta: weight of the gradient-difference term (class default 0.1; the
      training script uses 0.01).
    batched: evaluate ``g₊`` and ``g₋`` in one vmapped call (True) or in two
      calls (False; less peak memory). ``None`` (default) chooses by backend:
      two calls on CPU, one vmapped call on accelerators. Measured on a
      2-core CPU (``benchmarks/results/step_time_cpu.md``), the vmapped call
      made a ResNet step about 4x slower than two calls: vmapping over
      weights turns each convolution into a grouped one, which XLA:CPU runs
      poorly.
    eps: added to the gradient norm (official 1e-12).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose update needs
    ``params`` and ``grad_fn``. The aux of ``w + ε`` is reported as
    ``"perturbed"`` and that of ``w − ε`` as ``"perturbed_minus"``.

  References:
    Wu, Luo, Wunsch. CR-SAM: Curvature Regularized Sharpness-Aware
    Minimization. AAAI 2024. Official code: TrustAIoT/CR-SAM
    ``utils/crsam.py``.
  """
  _base.check_hyperparameter("rho", rho, minimum=0.0)
  _base.check_hyperparameter("gamma", gamma, minimum=0.0)
  _base.check_hyperparameter("beta", beta, minimum=0.0)
  _base.check_hyperparameter("eps", eps, minimum=0.0, min_inclusive=False)

  def init_fn(params: Any) -> CRSAMState:
    del params
    return CRSAMState(count=_base.zero_count())

  def update_fn(
      updates: Any,
      state: CRSAMState,
      params: Any = None,
      *,
      grad_fn: Optional[_base.GradFn] = None,
      aux_sink: Optional[_base.AuxSink] = None,
      axis_name: Optional[str] = None,
      **extra_args: Any,
  ):
    del extra_args
    grad_fn = _base.require_grad_fn(grad_fn, params, "crsam")
    rho_t = _base.value_at(rho, state.count)
    gamma_t = _base.value_at(gamma, state.count)
    beta_t = _base.value_at(beta, state.count)
    g0 = updates
    perturbation = _base.sam_perturbation(g0, params, rho_t, eps)
    plus = _base.perturb(params, perturbation, +1.0)
    minus = _base.perturb(params, perturbation, -1.0)
    names = (_base.PERTURBED, _base.PERTURBED_MINUS)
    if batched if batched is not None else jax.default_backend() != "cpu":
      stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), plus, minus)
      both = _base.evaluate_batched(
          grad_fn, stacked, names=names, aux_sink=aux_sink, who="crsam"
      )
      g_plus = jax.tree.map(lambda x: x[0], both)
      g_minus = jax.tree.map(lambda x: x[1], both)
    else:
      g_plus, g_minus = (
          _base.evaluate(grad_fn, point, name=name, aux_sink=aux_sink, who="crsam")
          for point, name in zip((plus, minus), names)
      )
    direction = _base.tree_combine(
        (1.0 + gamma_t + beta_t, g_plus),
        (gamma_t - beta_t, g_minus),
        (-2.0 * gamma_t, g0),
        like=g0,
    )
    direction = _base.cross_device_mean(direction, axis_name)
    return direction, CRSAMState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
