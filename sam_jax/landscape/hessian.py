"""The top eigenvalue of the Hessian of a loss, by power iteration on Hessian-vector products.

For a twice-differentiable ``loss(params)``, ``H v`` is the derivative of
the gradient along ``v``: forward-over-reverse, ``jvp(grad(loss), (w,),
(v,))``, at the cost of about two gradients and without forming ``H``.
Power iteration, ``v ← H v / ‖H v‖``, converges to the eigenvector of the
eigenvalue of largest magnitude, ``λ = vᵀ H v`` (the Rayleigh quotient), at
a rate ``|λ₂ / λ₁|`` per iteration. At a trained minimum the largest
eigenvalue is positive and dominant, and it is the usual "sharpness" of
Keskar et al. (2017) and of the SAM papers; a result with a negative ``λ``
says that the point is not near a minimum along that direction.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


class Eigen(NamedTuple):
  value: jax.Array       # the Rayleigh quotient at the last iterate
  vector: Any            # unit-norm eigenvector estimate, shaped like params
  history: jax.Array     # the estimate after each iteration
  converged: jax.Array   # relative change of the last iteration below tol


def hvp(loss: Callable[[Any], jax.Array], params: Any, vector: Any) -> Any:
  """The Hessian of ``loss`` at ``params`` times ``vector`` (a pytree like params)."""
  return jax.jvp(jax.grad(loss), (params,), (vector,))[1]


def _dot(a: Any, b: Any) -> jax.Array:
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _scale(tree: Any, s: jax.Array) -> Any:
  return jax.tree.map(lambda x: x * s.astype(x.dtype), tree)


def top_eigenvalue(loss: Callable[[Any], jax.Array], params: Any, key: jax.Array, *,
                   num_iterations: int = 20, tol: float = 1e-3) -> Eigen:
  """The Hessian eigenvalue of largest magnitude at ``params`` (power iteration).

  Args:
    loss: a scalar function of the parameters (e.g. the mean training loss
      over a fixed set of examples, in eval mode so that it is a function of
      the weights alone).
    params: where to take the Hessian.
    key: draws the random start.
    num_iterations: Hessian-vector products (a fixed count, so it jits).
    tol: ``converged`` reports whether the last relative change was below it.
  """
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  start = treedef.unflatten([jax.random.normal(k, jnp.shape(x), jnp.result_type(x))
                             for k, x in zip(keys, leaves)])
  start = _scale(start, 1.0 / optax.global_norm(start))

  def body(carry, _):
    v, previous = carry
    hv = hvp(loss, params, v)
    value = _dot(v, hv)
    v = _scale(hv, 1.0 / (optax.global_norm(hv) + 1e-30))
    return (v, value), value

  (vector, value), history = jax.lax.scan(body, (start, jnp.zeros([])), None,
                                          length=num_iterations)
  change = jnp.abs(history[-1] - history[-2]) / (jnp.abs(history[-1]) + 1e-30) \
      if num_iterations > 1 else jnp.asarray(jnp.inf)
  return Eigen(value, vector, history, change < tol)
