"""Momentum-SAM: SAM's perturbation from the optimizer's own step, one pass (Becker et al., 2024)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sam_jax.optimizers import _base


class MomentumSAMState(NamedTuple):
  """State of :func:`momentum_sam`.

  Attributes:
    count: number of updates so far (int32).
    offset: ``ε``, where the stored weights sit from the weights the method
      optimizes: ``stored = w + ε`` (zeros before the first update).
  """

  count: jax.Array
  offset: Any


def momentum_sam(
    rho: _base.ScalarOrSchedule = 0.3,
    *,
    eps: float = 1e-12,
) -> optax.GradientTransformation:
  r"""Momentum-SAM (MSAM): the gradient taken at weights moved along the last step, in one pass.

  SAM spends a second forward/backward pass to find its perturbation. MSAM
  perturbs along the direction the optimizer is already moving, known for
  free: with SGD and momentum ``v`` (``w ← w − η·v``) the perturbation is
  ``−ρ·v/‖v‖``. It keeps the *perturbed* weights as the model's weights, so
  the train step's one gradient is already the gradient at the perturbed
  point. Chained **after** the base optimizer, whose update ``u_t`` it
  receives (``u = −η·v`` for SGD; ``u/‖u‖ = −v/‖v‖`` whatever the learning
  rate), with ``ŵ`` the stored weights and ``ε`` the stored offset::

      g_t = ∇L(ŵ_t)                         (the train step's one pass)
      u_t = base(g_t)                       (the rest of the chain before this)
      w_{t+1} = ŵ_t − ε_t + u_t             (back to w, then the base's step)
      ε_{t+1} = ρ · u_t / (‖u_t‖ + eps)
      ŵ_{t+1} = w_{t+1} + ε_{t+1}

  so the update it returns is ``u_t − ε_t + ε_{t+1}`` and ``ε_0 = 0``. With
  ``optax.sgd(lr, momentum)`` before it this is the authors' ``MSAM``
  optimizer step for step (their weight decay, added to the gradient at the
  stored weights, is ``optax.add_decayed_weights`` before the SGD); after
  another base optimizer (Adam, ...) the perturbation follows that
  optimizer's step instead of a raw momentum, which their AdamW variant does
  not do.

  **Evaluate at w, not at the stored weights**: :func:`evaluation_params`
  removes ``ε`` (``sam-jax train`` and ``sam-jax eval`` do it; the authors'
  ``move_back_from_momentumAscent``). Checkpoints keep the stored weights
  and the offset, so a resumed run goes on exactly.

  Cost: one pass per step (an SGD step plus a few elementwise operations);
  one parameter-sized buffer (``ε``). Not a sharpness transformation in the
  ``grad_fn`` sense: it never calls ``grad_fn``, and under data parallelism
  it receives the base's step from gradients the train step has already
  averaged over devices.

  Args:
    rho: the radius (float or schedule); the authors use 0.3 to 3 with SGD
      on CIFAR and ImageNet, larger than SAM's.
    eps: added to the norm of the base's step.

  Returns:
    An :class:`optax.GradientTransformation`; put it last in the chain.

  References:
    Becker, Altrock, Risse. Momentum-SAM: Sharpness Aware Minimization
    without Computational Overhead. arXiv:2401.12033 (2024); code:
    MarlonBecker/MSAM.
  """
  _base.check_hyperparameter("rho", rho, minimum=0.0)
  _base.check_hyperparameter("eps", eps, minimum=0.0, min_inclusive=False)

  def init_fn(params: Any) -> MomentumSAMState:
    return MomentumSAMState(count=_base.zero_count(),
                            offset=jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates: Any, state: MomentumSAMState, params: Any = None):
    del params
    rho_t = _base.value_at(rho, state.count)
    scale = rho_t / (_base.global_norm(updates) + eps)
    offset = _base.tree_combine((scale, updates), like=state.offset)
    step = _base.tree_combine((1.0, updates), (-1.0, state.offset), (1.0, offset), like=updates)
    return step, MomentumSAMState(count=optax.safe_increment(state.count), offset=offset)

  return optax.GradientTransformation(init_fn, update_fn)


def evaluation_params(params: Any, opt_state: optax.OptState) -> Any:
  """The weights to evaluate: ``params`` less every :func:`momentum_sam` offset in
  ``opt_state`` (``params`` itself when the chain has none)."""
  offsets = [s.offset for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, MomentumSAMState))
             if isinstance(s, MomentumSAMState)]
  for offset in offsets:
    params = _base.perturb(params, offset, sign=-1.0)
  return params
