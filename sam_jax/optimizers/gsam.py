"""GSAM: Surrogate Gap Guided SAM (Zhuang et al., ICLR 2022, arXiv 2203.08065)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from sam_jax.optimizers import _base


@_base.sharpness_state
class GSAMState(NamedTuple):
  """State of :func:`gsam`.

  Attributes:
    count: number of updates so far (int32); the learning-rate schedule that
      ``ρ`` follows is evaluated at it.
  """

  count: jax.Array


def gsam_rho(
    lr: jax.Array,
    rho_max: jax.Array,
    rho_min: jax.Array,
    lr_max: jax.Array,
    lr_min: jax.Array,
) -> jax.Array:
  """``ρ_t`` proportional to the learning rate, clamped to ``[ρ_min, ρ_max]``.

  ``ρ_t = ρ_min + (ρ_max − ρ_min)·(lr_t − lr_min)/(lr_max − lr_min)``. The clamp
  matters during warm-up, where ``lr_t < lr_min`` would make ``ρ_t`` negative
  (google-research/big_vision issue #80). With ``lr_max == lr_min``,
  ``ρ_t = ρ_max``.
  """
  span = lr_max - lr_min
  safe_span = jnp.where(span == 0, 1.0, span)
  fraction = jnp.where(span == 0, 1.0, (lr - lr_min) / safe_span)
  rho = rho_min + (rho_max - rho_min) * fraction
  return jnp.clip(rho, rho_min, rho_max)


def gsam(
    rho_max: _base.ScalarOrSchedule = 0.04,
    rho_min: Optional[_base.ScalarOrSchedule] = None,
    alpha: _base.ScalarOrSchedule = 0.01,
    *,
    learning_rate: Optional[_base.ScalarOrSchedule] = None,
    lr_max: Optional[float] = None,
    lr_min: Optional[float] = None,
    minimize_fp: bool = True,
    adaptive: bool = False,
    adaptive_perturbation: bool = False,
    eps: float = 1e-12,
) -> optax.GradientTransformationExtraArgs:
  r"""Surrogate Gap Guided Sharpness-Aware Minimization.

  GSAM minimizes the perturbed loss ``f_p = L(w+ε)`` and, without hurting
  that, the surrogate gap ``h = f_p − L(w)``. Paper, Algorithm 1::

      ρ_t = ρ_min + (ρ_max − ρ_min)·(lr_t − lr_min)/(lr_max − lr_min)
                                          (clamped to [ρ_min, ρ_max])
      g   = ∇L(w)
      ε   = ρ_t · g / (‖g‖ + eps)         (adaptive_perturbation: ε ← ε ⊙ |w|;
                                           adaptive: ε = ρ_t·w²⊙g/‖|w|⊙g‖, as in sam)
      g_p = ∇L(w + ε)

      minimize_fp=True (the paper's GSAM, min(f_p, h)):
        ĝ_p = g_p / (‖g_p‖ + eps)
        g_⊥ = g − ⟨g, ĝ_p⟩ ĝ_p                (g's component orthogonal to g_p)
        direction = g_p − α · g_⊥

      minimize_fp=False (big_vision's min(f, h) alternative):
        ĝ = g / (‖g‖ + eps)
        direction = g + α · (g_p − ⟨g_p, ĝ⟩ ĝ)

  Two passes per step. ``alpha = 0`` with a constant ``ρ`` is SAM.

  ``ρ`` follows the learning rate when ``learning_rate``, ``lr_max`` and
  ``lr_min`` are all given; ``learning_rate`` is the base optimizer's own (a
  float or the same schedule), evaluated at this transformation's step
  count. Without them ``ρ = ρ_max`` throughout. Under
  ``optax.inject_hyperparams`` pass the schedule as ``learning_rate``: it is
  evaluated by the injector and reaches this factory as the current value.

  Paper defaults (Table 4): ResNet-50/101 ρ_max 0.04, ρ_min 0.02, α 0.01
  (SGD, lr 1.6 → 0.016); ViT-B/32 ρ_max 0.6, ρ_min 0.1, α 0.6 (AdamW, lr
  3e-3 → 3e-5). The defaults here are the ResNet row with a constant ρ.

  Under data parallelism with ``axis_name``, the whole direction is computed
  per device and then averaged, as big_vision does.

  Args:
    rho_max: largest radius (the radius when ρ is not coupled).
    rho_min: smallest radius; defaults to ``rho_max``. A different value needs
      ``learning_rate``, ``lr_max`` and ``lr_min``.
    alpha: weight of the surrogate-gap term, ``α ≥ 0``.
    learning_rate: the base optimizer's learning rate (float or schedule).
    lr_max: learning rate at which ``ρ = ρ_max`` (peak after warm-up).
    lr_min: learning rate at which ``ρ = ρ_min`` (end of decay).
    minimize_fp: the paper's form (True) or big_vision's min(f, h) (False).
    adaptive: the element-wise perturbation of :func:`sam_jax.sam`,
      ``ε = ρ·w²⊙g / ‖|w|⊙g‖`` (davda54's form, the official GSAM code's
      ``adaptive``): the flag means the same in every method here.
    adaptive_perturbation: big_vision's form instead, ``ε`` of the plain
      ball scaled by ``|w|`` element-wise (its ``adaptive_perturbation``;
      it tolerates a ``ρ`` about ten times larger). Not with ``adaptive``.
    eps: added to every norm (big_vision's projection onto ``g_p`` has none).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose update needs
    ``params`` and ``grad_fn``.

  References:
    Zhuang, Gong, Yuan, Cui, Adam, Dvornek, Tatikonda, Duncan, Liu. Surrogate
    Gap Minimization Improves Sharpness-Aware Training. ICLR 2022.
    google-research/big_vision ``trainers/proj/gsam/gsam.py``.
  """
  _base.check_hyperparameter("rho_max", rho_max, minimum=0.0)
  _base.check_hyperparameter("rho_min", rho_min, minimum=0.0)
  if adaptive and adaptive_perturbation:
    raise ValueError("gsam: adaptive (sam's w²⊙g form) and adaptive_perturbation "
                     "(big_vision's |w|⊙ε form) are two perturbations; choose one.")
  _base.check_hyperparameter("alpha", alpha, minimum=0.0)
  _base.check_hyperparameter("learning_rate", learning_rate, minimum=0.0)
  _base.check_hyperparameter("lr_max", lr_max, minimum=0.0)
  _base.check_hyperparameter("lr_min", lr_min, minimum=0.0)
  _base.check_hyperparameter("eps", eps, minimum=0.0, min_inclusive=False)
  coupled = learning_rate is not None
  if coupled != (lr_max is not None) or coupled != (lr_min is not None):
    raise ValueError(
        "gsam: learning_rate, lr_max and lr_min go together (ρ follows the "
        "learning rate between lr_min and lr_max); got "
        f"learning_rate={learning_rate!r}, lr_max={lr_max!r}, lr_min={lr_min!r}."
    )
  r_max, r_min = _base.concrete_float(rho_max), _base.concrete_float(rho_min)
  if r_max is not None and r_min is not None:
    if r_min > r_max:
      raise ValueError(f"gsam: rho_min ({r_min}) must be <= rho_max ({r_max}).")
    if r_min != r_max and not coupled:
      raise ValueError(
          f"gsam: rho_min ({r_min}) differs from rho_max ({r_max}) but ρ is not "
          "coupled to a learning rate; pass learning_rate, lr_max and lr_min."
      )
  l_max, l_min = _base.concrete_float(lr_max), _base.concrete_float(lr_min)
  if l_max is not None and l_min is not None and l_min > l_max:
    raise ValueError(f"gsam: lr_min ({l_min}) must be <= lr_max ({l_max}).")

  def current_rho(count: jax.Array) -> jax.Array:
    top = _base.value_at(rho_max, count)
    if not coupled:
      return top
    bottom = top if rho_min is None else _base.value_at(rho_min, count)
    return gsam_rho(
        _base.value_at(learning_rate, count),
        top,
        bottom,
        jnp.asarray(lr_max, jnp.result_type(float)),
        jnp.asarray(lr_min, jnp.result_type(float)),
    )

  def init_fn(params: Any) -> GSAMState:
    del params
    return GSAMState(count=_base.zero_count())

  def update_fn(
      updates: Any,
      state: GSAMState,
      params: Any = None,
      *,
      grad_fn: Optional[_base.GradFn] = None,
      aux_sink: Optional[_base.AuxSink] = None,
      axis_name: Optional[str] = None,
      **extra_args: Any,
  ):
    del extra_args
    grad_fn = _base.require_grad_fn(grad_fn, params, "gsam")
    rho_t = current_rho(state.count)
    alpha_t = _base.value_at(alpha, state.count)
    g = updates
    perturbation = _base.sam_perturbation(g, params, rho_t, eps, adaptive)
    if adaptive_perturbation:
      perturbation = jax.tree.map(
          lambda e, w: e * jnp.abs(_base.wide(w)), perturbation, params
      )
    g_p = _base.evaluate(
        grad_fn,
        _base.perturb(params, perturbation),
        name=_base.PERTURBED,
        aux_sink=aux_sink,
        who="gsam",
    )
    if minimize_fp:
      # g_⊥ = g − ⟨g, ĝ_p⟩ĝ_p; direction = g_p − α g_⊥.
      inv_norm = 1.0 / (_base.global_norm(g_p) + eps)
      coef = _base.tree_vdot(g, g_p) * inv_norm * inv_norm
      direction = _base.tree_combine(
          (1.0, g_p), (-alpha_t, g), (alpha_t * coef, g_p), like=g
      )
    else:
      # direction = g + α (g_p − ⟨g_p, ĝ⟩ĝ).
      inv_norm = 1.0 / (_base.global_norm(g) + eps)
      coef = _base.tree_vdot(g_p, g) * inv_norm * inv_norm
      direction = _base.tree_combine(
          (1.0, g), (alpha_t, g_p), (-alpha_t * coef, g), like=g
      )
    direction = _base.cross_device_mean(direction, axis_name)
    return direction, GSAMState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
