"""The model contract of the train step, and adapters from Linen and NNX.

A train step in :mod:`sam_jax.train` needs three things from a model:

``apply_fn(params, model_state, inputs, *, train, rng) -> (logits, new_model_state)``
    A pure function. ``params`` are the trainable parameters (what the
    optimizer sees), ``model_state`` everything else that the model carries
    (BatchNorm running statistics, RNG counters), ``rng`` a key for dropout
    or ``None``. In train mode ``new_model_state`` holds the updated
    statistics; in eval mode it is ``model_state`` unchanged.
``params`` and ``model_state``
    The initial pytrees.

:func:`from_linen` builds the triple for a Flax Linen module (our models),
:func:`from_nnx` for a Flax NNX module through ``nnx.split``/``nnx.merge``,
so either kind of model trains with the same step.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax

ApplyFn = Callable[..., tuple[jax.Array, Any]]


@functools.partial(jax.jit, static_argnums=0)
def _init_variables(module: nn.Module, rngs: dict, example_inputs: jax.Array) -> Any:
  """``module.init`` as one compiled program, reused for equal modules.

  Run eagerly, each initializer compiles on its own, once per parameter shape
  and never cached on disk (each is under the persistent cache's threshold);
  jitted, one program compiles once per module and shape (a run's seeds, the
  runs a landscape command restores), and the disk cache keeps it.
  """
  return module.init(rngs, example_inputs, train=False)


def from_linen(
    module: nn.Module, rng: jax.Array, example_inputs: jax.Array
) -> tuple[ApplyFn, Any, Any]:
  """``(apply_fn, params, model_state)`` for a Linen module.

  The module's ``__call__`` must take ``(inputs, train: bool)``. Variable
  collections other than ``params`` (``batch_stats``) form ``model_state``;
  dropout uses the ``"dropout"`` RNG stream.
  """
  params_rng, dropout_rng = jax.random.split(rng)
  rngs = {"params": params_rng, "dropout": dropout_rng}
  try:
    hash(module)
  except TypeError:  # a field holds a list or dict: jit this call alone
    variables = jax.jit(functools.partial(module.init, train=False))(rngs, example_inputs)
  else:
    variables = _init_variables(module, rngs, example_inputs)
  variables = dict(variables)
  params = variables.pop("params")
  model_state = variables
  mutable = tuple(model_state)

  def apply_fn(params, model_state, inputs, *, train: bool, rng: Optional[jax.Array] = None):
    rngs = {} if rng is None else {"dropout": rng}
    variables = {"params": params, **model_state}
    if train and mutable:
      logits, updates = module.apply(variables, inputs, train=True, rngs=rngs,
                                     mutable=list(mutable))
      return logits, {**model_state, **updates}
    return module.apply(variables, inputs, train=train, rngs=rngs), model_state

  return apply_fn, params, model_state


def from_nnx(module: Any) -> tuple[ApplyFn, Any, Any]:
  """``(apply_fn, params, model_state)`` for a Flax NNX module.

  ``params`` are the module's ``nnx.Param`` variables; ``model_state`` is the
  rest (BatchNorm statistics, RNG keys and counts). ``apply_fn`` merges a
  copy of the module (a copy, so that it can run under ``jax.grad`` without
  mutating variables of another trace level), switches it to train or eval
  mode, reseeds its ``dropout`` stream from ``rng``, calls it, and splits the
  new state out again. The module's ``__call__`` takes the inputs only.
  """
  from flax import nnx  # imported here: Linen users need not load NNX

  graphdef, params, model_state = nnx.split(module, nnx.Param, ...)

  def apply_fn(params, model_state, inputs, *, train: bool, rng: Optional[jax.Array] = None):
    model = nnx.merge(graphdef, params, model_state, copy=True)
    if train:
      model.train()
    else:
      model.eval()
    if rng is not None:
      nnx.reseed(model, dropout=rng)
    logits = model(inputs)
    if not train:
      return logits, model_state
    _, _, new_state = nnx.split(model, nnx.Param, ...)
    return logits, new_state

  return apply_fn, params, model_state
