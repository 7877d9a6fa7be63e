"""The update shared by PESG, SOAP, SOPA and SOPA-s (LibAUC's optimizers).

Every primal tensor ``θ`` moves along::

    d = clip(g, −c, c) + λ₀·(θ − θ_ref) + λ·θ

(element-wise clipping *before* the decay terms; ``λ₀`` the epoch decay
toward a reference point, ``λ`` coupled L2 weight decay), followed by either
SGD with momentum or Adam on ``d``. The reference point is reset to the
average of the iterates since the last reset at given steps (LibAUC's
``update_regularizer``), and the learning rate is an optax schedule, so the
stage-wise recipe needs no call on an optimizer object.

Momentum conventions (``sgd`` mode), ``buf`` set to ``d`` on the first step:

* ``"heavy_ball"`` (PyTorch SGD): ``buf ← μ·buf + (1 − dampening)·d``, the
  step is ``buf`` (or ``d + μ·buf`` with Nesterov);
* ``"libauc"`` (LibAUC's PESG code): ``buf ← (1 − μ)·buf + μ·d``, so ``μ``
  weights the *new* direction.

``adam`` mode is bias-corrected Adam (PyTorch's ``Adam``, no AMSGrad) on
``d``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sam_jax.optimizers import _base

MODES = ("sgd", "adam")
MOMENTUM_CONVENTIONS = ("heavy_ball", "libauc")
REFERENCE_INITS = ("params", "noise")
DUAL_KEYS = ("a", "b", "alpha")


class DAMState(NamedTuple):
  """State of the LibAUC-style optimizers.

  Attributes:
    count: updates so far (int32); the schedules are evaluated at it.
    reference: ``θ_ref`` of every leaf (the epoch-decay anchor).
    iterate_sum: sum of the iterates since the last reset of ``reference``.
    iterate_count: how many iterates ``iterate_sum`` holds (int32).
    mu: momentum buffer (``sgd``) or first moment (``adam``).
    nu: second moment (``adam``; zeros otherwise).
  """

  count: jax.Array
  reference: Any
  iterate_sum: Any
  iterate_count: jax.Array
  mu: Any
  nu: Any


def dual_mask(params: Any) -> Any:
  """``True`` at every ``alpha`` leaf that sits beside ``a`` and ``b`` (an AUC-M dual variable)."""

  def visit(node: Any) -> Any:
    if isinstance(node, dict):
      is_aucm = all(k in node for k in DUAL_KEYS)
      return {k: (visit(v) if not (is_aucm and k == "alpha")
                  else jax.tree.map(lambda _: True, v)) for k, v in node.items()}
    if isinstance(node, tuple) and hasattr(node, "_fields"):  # a NamedTuple
      return type(node)(*(visit(v) for v in node))
    if isinstance(node, (list, tuple)):
      return type(node)(visit(v) for v in node)
    return jax.tree.map(lambda _: False, node)

  return visit(params)


def _map_aucm(fn: Callable[[dict, dict], Any], params: Any, new_params: Any) -> Any:
  """Applies ``fn(old, new)`` to every AUC-M variable dict; returns ``{path: result}``."""
  out = {}

  def visit(old, new, path):
    if isinstance(old, dict):
      if all(k in old for k in DUAL_KEYS):
        out[path] = fn(old, new)
        return
      for k in old:
        visit(old[k], new[k], path + (k,))
    elif isinstance(old, (list, tuple)):
      for i, (o, n) in enumerate(zip(old, new)):
        visit(o, n, path + (i,))

  visit(params, new_params, ())
  return out


def _set_alpha(updates: Any, alpha_updates: dict) -> Any:
  def visit(node, path):
    if path in alpha_updates:
      return {**node, "alpha": alpha_updates[path]}
    if isinstance(node, dict):
      return {k: visit(v, path + (k,)) for k, v in node.items()}
    if isinstance(node, tuple) and hasattr(node, "_fields"):
      return type(node)(*(visit(v, path + (i,)) for i, v in enumerate(node)))
    if isinstance(node, (list, tuple)):
      return type(node)(visit(v, path + (i,)) for i, v in enumerate(node))
    return node

  return visit(updates, ())


def dam_optimizer(
    who: str,
    learning_rate: _base.ScalarOrSchedule,
    *,
    mode: str,
    clip_value: Optional[float],
    weight_decay: float,
    epoch_decay: float,
    momentum: float,
    momentum_convention: str,
    nesterov: bool,
    dampening: float,
    b1: float,
    b2: float,
    eps: float,
    reference_resets: Sequence[int],
    reference_init: str,
    seed: int,
    dual_margin: Optional[float] = None,
    alpha_max: float = 999.0,
) -> optax.GradientTransformation:
  """The shared transformation; ``dual_margin`` turns on PESG's closed-form ascent on ``alpha``."""
  if mode not in MODES:
    raise ValueError(f"{who}: mode must be one of {MODES}, got {mode!r}.")
  if momentum_convention not in MOMENTUM_CONVENTIONS:
    raise ValueError(f"{who}: momentum_convention must be one of {MOMENTUM_CONVENTIONS}, got "
                     f"{momentum_convention!r}.")
  if reference_init not in REFERENCE_INITS:
    raise ValueError(f"{who}: reference_init must be one of {REFERENCE_INITS}, got "
                     f"{reference_init!r}.")
  _base.check_hyperparameter(f"{who}: learning_rate", learning_rate, minimum=0.0)
  _base.check_hyperparameter(f"{who}: clip_value", clip_value, minimum=0.0, min_inclusive=False)
  _base.check_hyperparameter(f"{who}: weight_decay", weight_decay, minimum=0.0)
  _base.check_hyperparameter(f"{who}: epoch_decay", epoch_decay, minimum=0.0)
  _base.check_hyperparameter(f"{who}: momentum", momentum, minimum=0.0, maximum=1.0,
                             max_inclusive=False)
  _base.check_hyperparameter(f"{who}: dampening", dampening, minimum=0.0, maximum=1.0)
  _base.check_hyperparameter(f"{who}: b1", b1, minimum=0.0, maximum=1.0, max_inclusive=False)
  _base.check_hyperparameter(f"{who}: b2", b2, minimum=0.0, maximum=1.0, max_inclusive=False)
  _base.check_hyperparameter(f"{who}: eps", eps, minimum=0.0)
  if dual_margin is not None:
    _base.check_hyperparameter(f"{who}: margin", dual_margin, minimum=0.0)
  resets = np.asarray(sorted(set(int(r) for r in reference_resets)), np.int32)
  if resets.size and resets.min() < 1:
    raise ValueError(f"{who}: reference_resets are step counts >= 1, got {resets.tolist()}.")

  def init_fn(params: Any) -> DAMState:
    # Fresh buffers for every field: a train step donates its state, and
    # one buffer appearing twice in it cannot be donated.
    if reference_init == "params":
      reference = jax.tree.map(lambda x: jnp.array(x, jnp.float32, copy=True), params)
    else:  # LibAUC: N(0, 0.01²) noise, not the initial weights
      leaves, treedef = jax.tree.flatten(params)
      keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
      reference = jax.tree.unflatten(treedef, [
          0.01 * jax.random.normal(k, jnp.shape(x), jnp.float32) for k, x in zip(keys, leaves)])
    zeros = lambda: jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.float32), params)
    return DAMState(count=_base.zero_count(), reference=reference, iterate_sum=zeros(),
                    iterate_count=_base.zero_count(), mu=zeros(),
                    nu=zeros() if mode == "adam" else jax.tree.map(lambda _: jnp.zeros([]), params))

  def update_fn(grads: Any, state: DAMState, params: Any = None, **extra_args: Any):
    del extra_args
    if params is None:
      raise ValueError(f"{who}.update needs params (its decay terms act on the weights).")
    count = state.count
    lr = _base.value_at(learning_rate, count)
    dual = dual_mask(params) if dual_margin is not None else jax.tree.map(lambda _: False, params)

    # update_regularizer: at a reset step the anchor moves to the average iterate.
    reset = jnp.isin(count, jnp.asarray(resets)) & (state.iterate_count > 0) if resets.size \
        else jnp.asarray(False)
    denom = jnp.maximum(state.iterate_count, 1).astype(jnp.float32)
    reference = jax.tree.map(lambda r, s: jnp.where(reset, s / denom, r),
                             state.reference, state.iterate_sum)
    iterate_sum = jax.tree.map(lambda s: jnp.where(reset, 0.0, s), state.iterate_sum)
    iterate_count = jnp.where(reset, 0, state.iterate_count)

    def direction(g, w, r, is_dual):
      if is_dual:
        return jnp.zeros(jnp.shape(w), jnp.float32)
      g = g.astype(jnp.float32)
      if clip_value is not None:
        g = jnp.clip(g, -clip_value, clip_value)
      w = w.astype(jnp.float32)
      return g + epoch_decay * (w - r) + weight_decay * w

    d = jax.tree.map(direction, grads, params, reference, dual)
    first = count == 0
    if mode == "sgd":
      if momentum == 0:
        mu, step = state.mu, d
      elif momentum_convention == "libauc":
        mu = jax.tree.map(lambda b, x: jnp.where(first, x, (1 - momentum) * b + momentum * x),
                          state.mu, d)
        step = mu
      else:
        mu = jax.tree.map(lambda b, x: jnp.where(first, x, momentum * b + (1 - dampening) * x),
                          state.mu, d)
        step = jax.tree.map(lambda x, b: x + momentum * b, d, mu) if nesterov else mu
      nu = state.nu
      updates = jax.tree.map(lambda s: -lr * s, step)
    else:
      t = (count + 1).astype(jnp.float32)
      mu = jax.tree.map(lambda m, x: b1 * m + (1 - b1) * x, state.mu, d)
      nu = jax.tree.map(lambda v, x: b2 * v + (1 - b2) * jnp.square(x), state.nu, d)
      bias1, bias2 = 1 - b1 ** t, 1 - b2 ** t
      updates = jax.tree.map(lambda m, v: -lr * (m / bias1) / (jnp.sqrt(v / bias2) + eps), mu, nu)
    updates = jax.tree.map(lambda u, is_dual: jnp.zeros_like(u) if is_dual else u, updates, dual)

    if dual_margin is not None:
      # PESG's dual ascent, closed form, at the just-updated a and b (LibAUC).
      new_params = jax.tree.map(lambda w, u: w.astype(jnp.float32) + u, params, updates)

      def ascend(old, new):
        alpha = old["alpha"].astype(jnp.float32)
        grad_alpha = 2 * (dual_margin + new["b"] - new["a"]) - 2 * alpha
        return jnp.clip(alpha + lr * grad_alpha, 0.0, alpha_max) - alpha

      updates = _set_alpha(updates, _map_aucm(ascend, params, new_params))

    new_iterates = jax.tree.map(lambda w, u: w.astype(jnp.float32) + u, params, updates)
    if epoch_decay > 0:
      iterate_sum = jax.tree.map(jnp.add, iterate_sum, new_iterates)
      iterate_count = iterate_count + 1
    updates = jax.tree.map(lambda u, w: u.astype(jnp.asarray(w).dtype), updates, params)
    return updates, DAMState(count=optax.safe_increment(count), reference=reference,
                             iterate_sum=iterate_sum, iterate_count=iterate_count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)
