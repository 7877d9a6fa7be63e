"""Rematerialization of a Flax block that saves memory on every backend.

``remat(Block)`` is a Linen module class like ``nn.remat(Block)``: same
parameter names, same outputs. In the backward pass the block's
activations are recomputed from its saved inputs instead of being kept from
the forward pass, so a network holds one block's activations at a time
(plus every block's input).

Why not ``nn.remat`` / ``jax.checkpoint``: on XLA:CPU they save nothing.
``jax.checkpoint`` guards the recomputation with optimization barriers, but
XLA:CPU expands those early, common-subexpression elimination then merges
the recomputation back into the forward pass, and even with CSE disabled the
scheduler computes it before it is needed. Measured on a chain of 8 blocks
of 4 ``tanh(x @ w)`` layers (16384x1024 float32 activations): peak
2112 MB without, 2560 MB with ``jax.checkpoint`` (the HLO had the same 95
dots either way), 768 MB here (BUILD_NOTES.md).

How: a ``jax.custom_vjp`` whose forward runs the block and keeps only its
inputs (variables and arguments), and whose backward recomputes it with
``jax.vjp`` after adding ``0 * cotangent[0]`` to the inputs. That zero ties
the recomputation to the incoming cotangent, so no compiler can hoist it
into the forward pass or merge it with it.

Limit: forward-mode differentiation (``jax.jvp``, e.g. Hessian-vector
products) is not defined for a ``custom_vjp``; build the model without
``remat`` for that (evaluation and the landscape tools do).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import lift
from flax.linen import transforms


def _floating(x: Any) -> bool:
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)


def tied_checkpoint(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn`` whose backward pass recomputes it from its inputs after its cotangent is known."""

  @jax.custom_vjp
  def checkpointed(*args):
    return fn(*args)

  def forward(*args):
    return fn(*args), args

  def backward(args, cotangent):
    floats = [leaf for leaf in jax.tree.leaves(cotangent) if _floating(leaf) and leaf.size]
    tie = jnp.ravel(floats[0])[0] * 0 if floats else jnp.zeros([], jnp.float32)
    tied = jax.tree.map(lambda a: a + tie.astype(a.dtype) if _floating(a) else a, args)
    _, vjp = jax.vjp(fn, *tied)
    return vjp(cotangent)

  checkpointed.defvjp(forward, backward)
  return checkpointed


def _lifted(fn: Callable[..., Any], static_argnums: Sequence[int] = ()) -> Callable[..., Any]:
  """:func:`tied_checkpoint` lifted over a Flax scope (as ``flax.core.lift.checkpoint``
  lifts ``jax.checkpoint``): variables in and (mutated) variables out."""

  def inner(scope_fn, repack_fn, variable_groups, rng_groups, *args):
    static = {i: args[i] for i in static_argnums}
    dynamic = [a for i, a in enumerate(args) if i not in static]

    def pure(variable_groups, *dynamic_args):
      given = iter(dynamic_args)
      full = [static[i] if i in static else next(given) for i in range(len(args))]
      scope = scope_fn(variable_groups, rng_groups)
      return fn(scope, *full), repack_fn(scope)

    return tied_checkpoint(pure)(variable_groups, *dynamic)

  return lift.pack(inner, (True,), (True,), (True,), name="remat")


def remat(target: type[nn.Module], static_argnums: Sequence[int] = ()) -> type[nn.Module]:
  """``target`` with its ``__call__`` rematerialized.

  Args:
    target: a Linen module class.
    static_argnums: positions of Python-valued arguments of ``__call__``
      (``self`` is 0), e.g. ``(2,)`` for ``__call__(self, x, train)``.
  """
  shifted = tuple(i - 1 for i in static_argnums)  # the lifted function does not get self
  return transforms.lift_transform(_lifted, target, static_argnums=shifted)
