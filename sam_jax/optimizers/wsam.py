"""WSAM: Weighted SAM (Yue et al., KDD 2023, arXiv 2305.15817)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from sam_jax.optimizers import _base


@_base.sharpness_state
class WSAMState(NamedTuple):
  """State of :func:`wsam`.

  Attributes:
    count: number of updates so far (int32); schedules are evaluated at it.
    base_state: state of the wrapped base optimizer (decoupled mode), or
      ``None`` (coupled mode).
  """

  count: jax.Array
  base_state: Any


def _clip_by_global_norm(tree: Any, max_norm: Optional[float]) -> Any:
  if max_norm is None:
    return tree
  norm = _base.global_norm(tree)
  factor = jnp.minimum(1.0, max_norm / jnp.maximum(norm, max_norm))
  return jax.tree.map(lambda x: (_base.wide(x) * factor).astype(x.dtype), tree)


def wsam(
    rho: _base.ScalarOrSchedule = 0.05,
    gamma: _base.ScalarOrSchedule = 0.9,
    *,
    decouple: bool = True,
    base_optimizer: Optional[optax.GradientTransformation] = None,
    learning_rate: Optional[_base.ScalarOrSchedule] = None,
    adaptive: bool = False,
    max_norm: Optional[float] = None,
    eps: float = 1e-12,
) -> optax.GradientTransformationExtraArgs:
  r"""Weighted Sharpness-Aware Minimization.

  WSAM adds the sharpness to the loss as a weighted regularizer::

      L_WSAM(w) = L(w) + α·[L(w + ε̂) − L(w)],      α = γ / (1 − γ)

  so ``γ = 0`` is plain training and ``γ = 0.5`` (α = 1) is SAM. With
  ``g = ∇L(w)``, ``ε = ρ·g/(‖g‖ + eps)`` and ``g_p = ∇L(w + ε)``:

  coupled (``decouple=False``), a direction for the base optimizer that
  follows in the chain::

      direction = α·g_p + (1 − α)·g  =  g + α·(g_p − g)   (computed in the second form)

  decoupled (``decouple=True``, the paper's recommendation and the official
  default): the base optimizer sees only ``g`` and the sharpness term bypasses
  its preconditioner (momentum, Adam), as decoupled weight decay does::

      u = BaseOpt(g)                      (the wrapped ``base_optimizer``)
      update = u − lr_t · α · (g_p − g)

  Decoupled mode therefore wraps the base optimizer and returns an *update*,
  not a direction: put it last in ``optax.chain`` (after clipping, say) and
  pass the base optimizer's learning rate (a float or the same schedule; it
  is evaluated at this transformation's step count, which advances with the
  base optimizer's). Two passes per step.

  ``max_norm`` reproduces the official class's optional clipping of ``g`` and
  of ``g_p``, each by global norm after the cross-device mean; it is off by
  default, as in the official README's usage (``max_norm=None``): it is
  gradient clipping, not part of the method.

  Args:
    rho: radius; a float or schedule. Official default 0.05; the CIFAR-10
      demo uses 0.2.
    gamma: weight ``γ ∈ [0, 1)``; official default 0.9 (class docstring and
      README; an early commit said 0.88); the useful range is about 0.8-0.95.
    decouple: decoupled (True) or coupled (False) mode.
    base_optimizer: the optimizer WSAM wraps in decoupled mode, e.g.
      ``optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(lr, 0.9))``.
    learning_rate: that optimizer's learning rate, float or schedule.
    adaptive: element-wise perturbation ``ε = ρ·w²⊙g / ‖|w|⊙g‖``.
    max_norm: clip ``g`` and ``g_p`` to this global norm, or ``None``.
    eps: added to the gradient norm (official 1e-12).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose update needs
    ``params`` and ``grad_fn``.

  References:
    Yue, Jiang, Ye, Gao, Liu, Zhang. Sharpness-Aware Minimization Revisited:
    Weighted Sharpness as a Regularization Term. KDD 2023.
    Official code: intelligent-machine-learning/dlrover
    ``atorch/atorch/optimizers/wsam.py``.
  """
  _base.check_hyperparameter("rho", rho, minimum=0.0)
  _base.check_hyperparameter("gamma", gamma, minimum=0.0, maximum=1.0, max_inclusive=False)
  _base.check_hyperparameter("learning_rate", learning_rate, minimum=0.0)
  _base.check_hyperparameter("max_norm", max_norm, minimum=0.0, min_inclusive=False)
  _base.check_hyperparameter("eps", eps, minimum=0.0, min_inclusive=False)
  if decouple and (base_optimizer is None or learning_rate is None):
    raise ValueError(
        "wsam(decouple=True) wraps its base optimizer: pass base_optimizer "
        "(e.g. optax.sgd(lr, momentum=0.9)) and its learning_rate. To place "
        "wsam before the base optimizer in optax.chain, use decouple=False."
    )
  if not decouple and (base_optimizer is not None or learning_rate is not None):
    raise ValueError(
        "wsam(decouple=False) is a direction for the rest of the chain: it "
        "takes no base_optimizer or learning_rate; put the base optimizer "
        "after it in optax.chain."
    )
  base = None if base_optimizer is None else optax.with_extra_args_support(base_optimizer)

  def init_fn(params: Any) -> WSAMState:
    return WSAMState(
        count=_base.zero_count(),
        base_state=None if base is None else base.init(params),
    )

  def update_fn(
      updates: Any,
      state: WSAMState,
      params: Any = None,
      *,
      grad_fn: Optional[_base.GradFn] = None,
      aux_sink: Optional[_base.AuxSink] = None,
      axis_name: Optional[str] = None,
      **extra_args: Any,
  ):
    grad_fn = _base.require_grad_fn(grad_fn, params, "wsam")
    rho_t = _base.value_at(rho, state.count)
    gamma_t = _base.value_at(gamma, state.count)
    alpha = gamma_t / (1.0 - gamma_t)
    perturbation = _base.sam_perturbation(updates, params, rho_t, eps, adaptive)
    g_p = _base.evaluate(
        grad_fn,
        _base.perturb(params, perturbation),
        name=_base.PERTURBED,
        aux_sink=aux_sink,
        who="wsam",
    )
    # The official code all-reduces g and g_p before clipping and combining;
    # ε above was built from the local g (m-sharpness).
    g = _clip_by_global_norm(_base.cross_device_mean(updates, axis_name), max_norm)
    g_p = _clip_by_global_norm(_base.cross_device_mean(g_p, axis_name), max_norm)
    count = optax.safe_increment(state.count)
    # α g_p + (1 − α) g written as g + α (g_p − g): the same sum, without the
    # cancellation of two large terms when α > 1, and exactly g when ρ = 0.
    sharpness_grad = jax.tree.map(
        lambda a, b: _base.wide(a) - _base.wide(b), g_p, g)
    if not decouple:
      direction = _base.tree_combine((1.0, g), (alpha, sharpness_grad), like=g)
      return direction, WSAMState(count=count, base_state=None)
    base_updates, base_state = base.update(g, state.base_state, params, **extra_args)
    lr_t = _base.value_at(learning_rate, state.count)
    update = _base.tree_combine((1.0, base_updates), (-lr_t * alpha, sharpness_grad),
                                like=base_updates)
    return update, WSAMState(count=count, base_state=base_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
