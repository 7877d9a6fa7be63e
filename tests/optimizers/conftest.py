"""Fixtures for the optimizer tests: the MLP problem and a way to run updates."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sam_jax
from tests.optimizers import mlp_problem as mp


@dataclasses.dataclass
class Problem:
  params_np: dict        # flat float64
  x: np.ndarray
  y: np.ndarray
  params: Any            # nested float32 JAX tree
  grad_fn: Callable      # the contract's grad_fn on this batch

  def numpy_grad(self, flat):
    return mp.numpy_grad(flat, self.x, self.y)

  def clean_grads(self):
    return self.grad_fn(self.params)[0]


@pytest.fixture
def problem() -> Problem:
  params_np, x, y = mp.make_problem(seed=0)
  xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y)
  return Problem(
      params_np=params_np,
      x=x,
      y=y,
      params=mp.to_tree(params_np),
      grad_fn=sam_jax.grad_fn_from_loss(mp.jax_loss, xj, yj),
  )


def run_updates(tx, problem: Problem, *, jit: bool, steps: int = 1, apply: bool = False):
  """Calls ``tx.update`` ``steps`` times; returns the list of outputs.

  With ``apply`` the outputs (updates) are applied to the params between
  calls and ``(outputs, weights)`` is returned, ``weights[t]`` being the
  float64 flat params that step ``t`` saw, so that a reference can check
  each step's equations from the same point rather than accumulate float32
  drift. Without ``apply`` the params stay fixed.
  """
  def one(params, state):
    grads = problem.grad_fn(params)[0]
    return tx.update(grads, state, params, grad_fn=problem.grad_fn)

  if jit:
    one = jax.jit(one)
  params = problem.params
  state = tx.init(params)
  outputs, weights = [], []
  for _ in range(steps):
    weights.append(mp.to_flat(params))
    out, state = one(params, state)
    outputs.append(out)
    if apply:
      params = optax.apply_updates(params, out)
  return (outputs, weights) if apply else outputs
