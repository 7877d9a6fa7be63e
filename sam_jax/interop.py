"""Sharpness methods in your own Flax training code: NNX and ``TrainState``.

Both need one thing the usual update does not pass: the ``grad_fn`` that
evaluates the same minibatch loss at other weights. These two helpers make it.

NNX, with ``nnx.Optimizer`` (which forwards extra arguments to the chain)::

    optimizer = nnx.Optimizer(model, optax.chain(sam_jax.sam(0.05), optax.sgd(0.1)),
                              wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
      grad_fn = sam_jax.interop.nnx_grad_fn(model, loss_fn, x, y)   # before the clean pass
      loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)        # updates BatchNorm
      optimizer.update(model, grads, grad_fn=grad_fn)
      return loss

Linen, with ``flax.training.train_state.TrainState`` (whose
``apply_gradients`` cannot pass ``grad_fn``)::

    state, aux = sam_jax.interop.apply_gradients(state, grads=grads, grad_fn=grad_fn)

In both, BatchNorm statistics come from the clean pass only: the
perturbed evaluations run on a copy whose statistics updates are dropped.
"""

from __future__ import annotations

from typing import Any, Callable

import optax

from sam_jax.optimizers import _base


def nnx_grad_fn(model: Any, loss_fn: Callable[..., Any], *args: Any, wrt: Any = None,
                **kwargs: Any) -> _base.GradFn:
  """The ``grad_fn`` of ``loss_fn(model, *args, **kwargs)`` over the model's ``wrt``
  variables (``nnx.Param`` by default), for ``nnx.Optimizer.update(..., grad_fn=...)``.

  Make it before the clean pass changes the model's BatchNorm statistics, so that
  the perturbed passes see the same statistics the clean one did. Each call
  merges a fresh copy of the model with the given parameters; whatever the
  copy mutates (running statistics, counters) is discarded.
  """
  import jax
  from flax import nnx

  graphdef, _, rest = nnx.split(model, nnx.Param if wrt is None else wrt, ...)
  rest = nnx.as_pure(rest)  # plain arrays: each merge then makes variables of its own trace

  def loss_at(params, rest):
    return loss_fn(nnx.merge(graphdef, params, rest), *args, **kwargs)

  def grad_fn(params):
    value, grads = jax.value_and_grad(loss_at)(params, rest)
    return grads, {"loss": value}

  return grad_fn


def apply_gradients(state: Any, *, grads: Any, grad_fn: _base.GradFn, **changes: Any):
  """``state.apply_gradients`` for a ``flax.training.train_state.TrainState`` whose
  ``tx`` holds a sharpness method: returns ``(new state, adversarial aux)``.

  ``changes`` replace other fields of the state (``batch_stats=...`` from the
  clean pass), as ``apply_gradients`` does.
  """
  updates, opt_state, aux = _base.update_with_aux(state.tx, grads, state.opt_state,
                                                  state.params, grad_fn=grad_fn)
  params = optax.apply_updates(state.params, updates)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state, **changes), aux
