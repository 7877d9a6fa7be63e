"""SSAM: Stable SAM by renormalization (Tan et al., JMLR 2025, arXiv 2401.07250)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import optax

from sam_jax.optimizers import _base
from sam_jax.optimizers.sam import sam


@_base.sharpness_state
class StableSAMState(NamedTuple):
  """State of :func:`stable_sam`.

  Attributes:
    base_state: state of the sharpness transformation it renormalizes.
  """

  base_state: Any


def stable_sam(
    rho: Optional[_base.ScalarOrSchedule] = None,
    *,
    base: Optional[optax.GradientTransformationExtraArgs] = None,
    normalize: bool = True,
    eps: float = 1e-12,
) -> optax.GradientTransformationExtraArgs:
  r"""Stable SAM: renormalize every adversarial gradient to the clean norm.

  SAM is prone to saddle points and helps only in a narrow learning-rate
  range; rescaling the adversarial gradient so that its norm is the clean
  gradient's removes the extra step length SAM takes::

      g   = ∇L(w),   g_p = ∇L(w + ε)
      ĝ_p = (‖g‖ / (‖g_p‖ + eps)) · g_p
      direction = ĝ_p                     (on top of SAM)

  It works on top of any sharpness transformation: ``base`` receives a
  ``grad_fn`` whose gradients are renormalized this way, so every point it
  evaluates (both of CR-SAM's, say) is rescaled to ``‖g‖``. No extra pass and
  no extra hyperparameter.

  Not to be confused with Sparse SAM, also abbreviated SSAM.

  Args:
    rho: radius of the SAM it wraps when ``base`` is not given (default
      0.05). Give either ``rho`` or ``base``.
    base: the sharpness transformation to stabilize, e.g. ``gsam(...)``.
    normalize: with ``rho``: stabilize SAM (True) or the authors' other base,
      unnormalized SAM, ``ε = ρ·g`` (False; ``sam(rho, normalize=False)``).
    eps: added to ``‖g_p‖``.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose update needs
    ``params`` and ``grad_fn``.

  References:
    Tan, Zhang, Lin, Zhou, Yang, Wang. Stabilizing Sharpness-Aware
    Minimization Through A Simple Renormalization Strategy. JMLR 2025.
  """
  _base.check_hyperparameter("eps", eps, minimum=0.0, min_inclusive=False)
  if base is not None and not normalize:
    raise ValueError("stable_sam: normalize=False chooses USAM as the base; with base= "
                     "pass sam(rho, normalize=False) as that base instead.")
  if base is not None and rho is not None:
    raise ValueError(
        "stable_sam: give rho (to stabilize plain SAM) or base (to stabilize "
        "another transformation, configured with its own rho), not both."
    )
  if base is None:
    base = sam(0.05 if rho is None else rho, normalize=normalize, eps=eps)
  inner = optax.with_extra_args_support(base)

  def init_fn(params: Any) -> StableSAMState:
    return StableSAMState(base_state=inner.init(params))

  def update_fn(
      updates: Any,
      state: StableSAMState,
      params: Any = None,
      *,
      grad_fn: Optional[_base.GradFn] = None,
      **extra_args: Any,
  ):
    grad_fn = _base.require_grad_fn(grad_fn, params, "stable_sam")
    clean_norm = _base.global_norm(updates)

    def renormalized_grad_fn(p):
      grads, aux = grad_fn(p)
      factor = clean_norm / (_base.global_norm(grads) + eps)
      rescaled = jax.tree.map(
          lambda x: (_base.wide(x) * factor).astype(x.dtype), grads
      )
      return rescaled, aux

    direction, base_state = inner.update(
        updates, state.base_state, params, grad_fn=renormalized_grad_fn, **extra_args
    )
    return direction, StableSAMState(base_state=base_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
