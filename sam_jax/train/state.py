"""The train state: everything a step reads and writes, as one pytree."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from sam_jax.train import objectives


class TrainState(NamedTuple):
  """Attributes:
    step: updates applied so far (int32); the RNG of step ``t`` is derived
      from the run's seed and ``t``, so the state holds no key.
    params: what the optimizer updates: the model's parameters, or
      :class:`~sam_jax.train.objectives.ObjectiveParams` ``(model,
      objective)`` when the objective has trainable variables (AUC-M).
    model_state: non-trainable model variables (BatchNorm statistics).
    opt_state: the optimizer's state.
    objective_state: the objective's non-trainable state (the AP and
      partial-AUC losses' per-example buffers), or ``None``.
  """

  step: jax.Array
  params: Any
  model_state: Any
  opt_state: optax.OptState
  objective_state: Any = None


def create_train_state(
    params: Any, model_state: Any, tx: optax.GradientTransformation,
    objective: Optional[objectives.Objective] = None,
) -> TrainState:
  """A fresh state; with an ``objective``, its variables join the parameters."""
  variables, objective_state = objective.init() if objective is not None else (None, None)
  params = objectives.join_params(params, variables)
  return TrainState(
      step=jnp.zeros([], jnp.int32),
      params=params,
      model_state=model_state,
      opt_state=tx.init(params),
      objective_state=objective_state,
  )


def for_evaluation(state: TrainState) -> TrainState:
  """``state`` with the weights to evaluate: a one-pass method that trains
  perturbed weights (:func:`sam_jax.momentum_sam`) has its offset removed;
  any other state comes back as it is. Works on stacked (vmapped-seed) states."""
  from sam_jax.optimizers.momentum_sam import evaluation_params

  return state._replace(params=evaluation_params(state.params, state.opt_state))
