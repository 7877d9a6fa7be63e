"""The train state: everything a step reads and writes, as one pytree."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class TrainState(NamedTuple):
  """Attributes:
    step: updates applied so far (int32); the RNG of step ``t`` is derived
      from the run's seed and ``t``, so the state holds no key.
    params: trainable parameters.
    model_state: non-trainable model variables (BatchNorm statistics).
    opt_state: the optimizer's state.
  """

  step: jax.Array
  params: Any
  model_state: Any
  opt_state: optax.OptState


def create_train_state(params: Any, model_state: Any, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(
      step=jnp.zeros([], jnp.int32),
      params=params,
      model_state=model_state,
      opt_state=tx.init(params),
  )
