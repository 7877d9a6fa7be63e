"""SAM: Sharpness-Aware Minimization (Foret et al., ICLR 2021, arXiv 2010.01412)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import optax

from sam_jax.optimizers import _base


@_base.sharpness_state
class SAMState(NamedTuple):
  """State of :func:`sam`.

  Attributes:
    count: number of updates so far (int32); a ``rho`` schedule is evaluated
      at it.
  """

  count: jax.Array


def sam(
    rho: _base.ScalarOrSchedule = 0.05,
    *,
    adaptive: bool = False,
    normalize: bool = True,
    eps: float = 1e-12,
) -> optax.GradientTransformationExtraArgs:
  r"""Sharpness-Aware Minimization.

  SAM minimizes the worst loss in a ball of radius ``ρ`` around the weights,
  using one ascent step to find the worst point::

      g   = ∇L(w)                         (the ``grads`` given to update)
      ε   = ρ · g / (‖g‖₂ + eps)
      g_p = ∇L(w + ε)                     (one call of grad_fn)
      direction = g_p

  The base optimizer that follows in the chain applies ``direction`` at the
  clean weights ``w``. Two forward/backward passes per step.

  With ``adaptive=True`` the ball is replaced by the element-wise ellipsoid of
  davda54/sam (``ε = ρ·w²⊙g / ‖|w|⊙g‖``); it uses no ``η`` and treats every
  tensor alike, so it is *not* the official ASAM, which is :func:`asam`.
  Adaptive SAM needs a ``ρ`` about 10x larger.

  With ``normalize=False`` the ascent step is not normalized: ``ε = ρ·g``
  (adaptive: ``ρ·w²⊙g``), the unnormalized SAM (USAM) of Andriushchenko &
  Flammarion (ICML 2022), which Stable SAM's authors also stabilize. Its
  ``ρ`` is a step size, not a radius.

  Under data parallelism (``axis_name`` passed to update) each device builds
  ``ε`` from its own gradient, so ``m`` of the paper's m-sharpness is the
  per-device batch, and ``direction`` is averaged across devices; see
  :mod:`sam_jax.optimizers._base` for the whole contract.

  Args:
    rho: radius of the neighbourhood, a float or an optax schedule of the
      step. The paper searches {0.01, 0.02, 0.05, 0.1, 0.2, 0.5}; 0.05 is the
      official CIFAR setting.
    adaptive: use the element-wise (davda54-style) perturbation.
    normalize: divide the ascent step by the gradient norm (SAM); ``False``
      is USAM.
    eps: added to the gradient norm; the official code uses none, which turns
      a zero gradient into NaN.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose update needs
    ``params`` and ``grad_fn``.

  Example::

      >>> import jax, jax.numpy as jnp, optax, sam_jax
      >>> loss = lambda w: jnp.sum((w - 1.0) ** 2)
      >>> tx = optax.chain(sam_jax.sam(rho=0.05), optax.sgd(0.1))
      >>> w = jnp.zeros(3); state = tx.init(w)
      >>> grad_fn = lambda p: (jax.grad(loss)(p), None)
      >>> updates, state = tx.update(jax.grad(loss)(w), state, w, grad_fn=grad_fn)
      >>> w = optax.apply_updates(w, updates)
      >>> print(w.round(4))  # the gradient at w + eps is steeper: more than SGD's 0.2
      [0.2058 0.2058 0.2058]

  References:
    Foret, Kleiner, Mobahi, Neyshabur. Sharpness-Aware Minimization for
    Efficiently Improving Generalization. ICLR 2021.
  """
  _base.check_hyperparameter("rho", rho, minimum=0.0)
  _base.check_hyperparameter("eps", eps, minimum=0.0, min_inclusive=False)

  def init_fn(params: Any) -> SAMState:
    del params
    return SAMState(count=_base.zero_count())

  def update_fn(
      updates: Any,
      state: SAMState,
      params: Any = None,
      *,
      grad_fn: Optional[_base.GradFn] = None,
      aux_sink: Optional[_base.AuxSink] = None,
      axis_name: Optional[str] = None,
      **extra_args: Any,
  ):
    del extra_args
    grad_fn = _base.require_grad_fn(grad_fn, params, "sam")
    rho_t = _base.value_at(rho, state.count)
    perturbation = _base.sam_perturbation(updates, params, rho_t, eps, adaptive, normalize)
    adversarial = _base.evaluate(
        grad_fn,
        _base.perturb(params, perturbation),
        name=_base.PERTURBED,
        aux_sink=aux_sink,
        who="sam",
    )
    direction = _base.cross_device_mean(adversarial, axis_name)
    return direction, SAMState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
