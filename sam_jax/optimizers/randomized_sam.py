"""RST: SAM on a random subset of steps (Zhao, Zhang, Hu, 2022, arXiv 2203.09962)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from sam_jax.optimizers import _base


@_base.sharpness_state
class RandomizedSAMState(NamedTuple):
  """State of :func:`randomized_sam`.

  Attributes:
    count: number of updates so far (int32); step ``t``'s draw is keyed by it.
    sam_steps: how many updates computed the second pass (int32).
  """

  count: jax.Array
  sam_steps: jax.Array


def randomized_sam(
    rho: _base.ScalarOrSchedule = 0.05,
    probability: _base.ScalarOrSchedule = 0.5,
    *,
    seed: int = 0,
    eps: float = 1e-12,
    skip: str = "auto",
) -> optax.GradientTransformationExtraArgs:
  r"""Randomized sharpness-aware training (RST): SAM with probability ``p``, else the clean gradient.

  Each step draws a Bernoulli trial; only the steps that draw 1 pay for the
  second pass::

      g = ∇L(w)
      b_t ~ Bernoulli(p_t)          (keyed by seed and the step count)
      b_t = 1:  direction = ∇L(w + ρ·g/(‖g‖ + eps))    (one call of grad_fn)
      b_t = 0:  direction = g                           (no second pass)

  With ``skip="cond"`` (the default, except for convolutions on CPU: see ``skip``) the
  choice is a :func:`jax.lax.cond`: the expected cost is ``1 + p`` SGD
  steps. The draws depend only on ``seed`` and the step, so they are the same
  on every device (and across vmapped seeds, where the ``cond`` then stays a
  real branch), and a resumed run draws what the uninterrupted one would
  have. The paper's schedules for ``p`` (constant, or growing during
  training) are optax schedules here. The state's ``sam_steps`` counts the
  steps that took SAM. A non-finite clean gradient takes the SAM branch,
  which spreads it to every leaf.

  Not to be confused with R-SAM (Liu et al. 2022, random smoothing of the
  perturbation).

  Args:
    rho: SAM's radius (float or schedule).
    probability: ``p``, the chance of a SAM step, in [0, 1] (float or
      schedule); 1 is SAM, 0 is the base optimizer.
    seed: the seed of the draws.
    eps: added to the gradient norm.
    skip: ``"cond"`` (the second pass not computed), ``"select"`` (computed,
      discarded) or ``"auto"``: :func:`sam_jax.optimizers._base.branch`.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose update needs
    ``params`` and ``grad_fn``. The perturbed evaluation's aux is not handed
    to ``aux_sink`` (it exists on some steps only).

  References:
    Zhao, Zhang, Hu. Randomized Sharpness-Aware Training for Boosting
    Computational Efficiency in Deep Learning. arXiv 2203.09962, 2022.
  """
  _base.check_hyperparameter("rho", rho, minimum=0.0)
  _base.check_hyperparameter("probability", probability, minimum=0.0, maximum=1.0)
  _base.check_hyperparameter("eps", eps, minimum=0.0, min_inclusive=False)
  _base.check_skip("randomized_sam", skip)
  _base.check_integer("randomized_sam", "seed", seed, minimum=-2**63)

  def init_fn(params: Any) -> RandomizedSAMState:
    del params
    return RandomizedSAMState(count=_base.zero_count(), sam_steps=_base.zero_count())

  def update_fn(
      updates: Any,
      state: RandomizedSAMState,
      params: Any = None,
      *,
      grad_fn: Optional[_base.GradFn] = None,
      aux_sink: Optional[_base.AuxSink] = None,
      axis_name: Optional[str] = None,
      **extra_args: Any,
  ):
    del extra_args, aux_sink
    grad_fn = _base.require_grad_fn(grad_fn, params, "randomized_sam")
    rho_t = _base.value_at(rho, state.count)
    p_t = _base.value_at(probability, state.count)
    direction, take = _base.sam_or_clean(draw(seed, state.count) < p_t, updates, params, rho_t,
                                         eps, grad_fn, "randomized_sam", skip, axis_name)
    return direction, RandomizedSAMState(
        count=optax.safe_increment(state.count),
        sam_steps=state.sam_steps + take.astype(jnp.int32))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def draw(seed: int, count: jax.Array) -> jax.Array:
  """Step ``count``'s uniform draw in [0, 1) (float32), the same wherever it runs."""
  return jax.random.uniform(jax.random.fold_in(jax.random.key(seed), count), (), jnp.float32)
