"""Sharpness under a ρ-ball: how much the loss can rise within distance ρ of the weights.

    S_ρ(w) = max_{‖ε‖₂ ≤ ρ} L(w + ε) − L(w)

SAM minimizes ``L(w) + S_ρ(w)`` with the first-order maximizer
``ε = ρ g / ‖g‖``. Here the maximum is approached by projected normalized
gradient ascent from ``ε = 0``: ``ε ← Π_ρ(ε + (ρ / steps) ∇L(w + ε) /
‖∇L(w + ε)‖)``; one step is SAM's ``ε``. Any ``ε`` found gives a lower bound
of ``S_ρ`` (the maximum over the ball is not computable in general), and
more steps can only find a higher value, which is what is reported: the
largest rise seen along the path. Keskar et al.'s (2017) measure, a
relative box, and the ``m``-sharpness of SAM's paper are other choices;
this is the one SAM's objective names.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


class Sharpness(NamedTuple):
  value: jax.Array         # max over the path of L(w + ε) − L(w)
  loss: jax.Array          # L(w)
  perturbation: Any        # the ε that reached it


def rho_sharpness(loss: Callable[[Any], jax.Array], params: Any, rho: float, *,
                  steps: int = 5) -> Sharpness:
  """``max_{‖ε‖ ≤ rho} L(params + ε) − L(params)``, from below, by ``steps`` ascent steps."""
  if not rho >= 0:
    raise ValueError(f"rho must be >= 0, got {rho}.")
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}.")
  base = loss(params)
  shift = lambda eps: jax.tree.map(lambda w, e: w + e.astype(w.dtype), params, eps)

  def body(carry, _):
    eps, best, best_eps = carry
    g = jax.grad(loss)(shift(eps))
    step = rho / steps / (optax.global_norm(g) + 1e-12)
    eps = jax.tree.map(lambda e, gi: e + step * gi, eps, g)
    norm = optax.global_norm(eps)
    eps = jax.tree.map(lambda e: e * jnp.minimum(1.0, rho / (norm + 1e-12)), eps)
    rise = loss(shift(eps)) - base
    better = rise > best
    best_eps = jax.tree.map(lambda new, old: jnp.where(better, new, old), eps, best_eps)
    return (eps, jnp.maximum(best, rise), best_eps), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  (_, best, best_eps), _ = jax.lax.scan(body, (zeros, jnp.zeros([]), zeros), None, length=steps)
  return Sharpness(best, base, best_eps)
