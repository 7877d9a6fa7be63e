"""Surrogates of the 0-1 ranking loss ``1(h_j ≥ h_i)``, as in LibAUC.

Each surrogate is ``ℓ(t)`` with ``t = h_i − h_j`` the score difference of a
positive ``i`` and another example ``j``; small (ideally zero) when the
positive is ranked above by at least the margin ``m``:

=================  =======================================================
``squared_hinge``  ``max(m − t, 0)²``  (LibAUC's default)
``squared``        ``(m − t)²``
``hinge``          ``max(m − t, 0)``
``logistic``       ``log(1 + exp(−s·t))``  (``s`` = ``scale``; no margin)
``barrier_hinge``  ``max(−s(m + t) + m, max(m − t, s(t − m)))``
=================  =======================================================

The barrier hinge is Charoenphakdee, Lee and Sugiyama (ICML 2019); their
``s = 200`` is our default ``scale`` for it. (LibAUC's own barrier hinge
cannot run: it refers to an undefined name ``rm``; we implement its
documented formula.) The logistic one is computed as ``softplus(−s·t)``,
which does not overflow for large ``|t|``.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

Surrogate = Callable[[jax.Array], jax.Array]


def squared_hinge(t: jax.Array, margin: float = 1.0) -> jax.Array:
  return jnp.square(jnp.maximum(margin - t, 0.0))


def squared(t: jax.Array, margin: float = 1.0) -> jax.Array:
  return jnp.square(margin - t)


def hinge(t: jax.Array, margin: float = 1.0) -> jax.Array:
  return jnp.maximum(margin - t, 0.0)


def logistic(t: jax.Array, scale: float = 1.0) -> jax.Array:
  return jax.nn.softplus(-scale * t)


def barrier_hinge(t: jax.Array, margin: float = 1.0, scale: float = 200.0) -> jax.Array:
  return jnp.maximum(-scale * (margin + t) + margin,
                     jnp.maximum(margin - t, scale * (t - margin)))


SURROGATES = ("squared_hinge", "squared", "hinge", "logistic", "barrier_hinge")


def get_surrogate(name: str, margin: float = 1.0, scale: Optional[float] = None) -> Surrogate:
  """``t -> ℓ(t)`` for a surrogate ``name`` with its margin (and scale).

  ``logistic`` takes ``scale`` (default: ``margin``, as LibAUC passes its
  margin argument as the scale); ``barrier_hinge`` takes both.
  """
  if name not in SURROGATES:
    raise ValueError(f"unknown surrogate loss {name!r}; known: {', '.join(SURROGATES)}.")
  if not margin >= 0:
    raise ValueError(f"margin must be >= 0, got {margin}.")
  if name == "squared_hinge":
    return lambda t: squared_hinge(t, margin)
  if name == "squared":
    return lambda t: squared(t, margin)
  if name == "hinge":
    return lambda t: hinge(t, margin)
  if name == "logistic":
    s = margin if scale is None else scale
    return lambda t: logistic(t, s)
  s = 200.0 if scale is None else scale
  return lambda t: barrier_hinge(t, margin, s)
