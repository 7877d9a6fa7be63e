"""ASAM: Adaptive SAM (Kwon, Kim, Park, Choi, ICML 2021, arXiv 2102.11600)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from sam_jax.optimizers import _base

#: Leaf names that the official code's test ``'weight' in name`` selects, in
#: Flax's naming: conv/dense kernels, BatchNorm/LayerNorm scales, embeddings.
WEIGHT_LEAF_NAMES = ("kernel", "scale", "embedding")


def default_weight_mask(path: tuple[Any, ...], leaf: jax.Array) -> bool:
  """Whether a leaf is a "weight" that ASAM rescales.

  Flax names: ``kernel``, ``scale`` and ``embedding`` are weights; ``bias``
  and anything else named (position embeddings, class tokens) is not, as in
  the official code where only tensors whose name contains ``weight`` are
  rescaled. A name containing ``weight`` (a tree converted from PyTorch)
  counts too. Leaves without any name (a bare array) are weights.
  """
  del leaf
  name = _base.leaf_name(path)
  if name is None:
    return True
  return name in WEIGHT_LEAF_NAMES or "weight" in name


@_base.sharpness_state
class ASAMState(NamedTuple):
  """State of :func:`asam`.

  Attributes:
    count: number of updates so far (int32); schedules are evaluated at it.
  """

  count: jax.Array


def asam(
    rho: _base.ScalarOrSchedule = 0.5,
    eta: _base.ScalarOrSchedule = 0.01,
    *,
    mask: _base.MaskOrFn = None,
    eps: float = 1e-12,
) -> optax.GradientTransformationExtraArgs:
  r"""Adaptive Sharpness-Aware Minimization, in its official form.

  ASAM measures sharpness in a neighbourhood that scales with the weights, so
  that it is invariant to the rescalings that leave a ReLU network unchanged.
  With the normalization operator ``T_w``::

      T_w = diag(|w| + η)   on weight tensors (see ``mask``)
      T_w = I               on the other tensors (biases)
      g   = ∇L(w)
      ε   = ρ · T_w² g / (‖T_w g‖₂ + eps)
      g_p = ∇L(w + ε)
      direction = g_p

  The neighbourhood is the ellipsoid ``‖T_w⁻¹ ε‖ ≤ ρ``. Two passes per step.

  Args:
    rho: radius; a float or schedule. Official default 0.5 (CIFAR-10; 1.0 for
      CIFAR-100): ASAM needs a ``ρ`` about ten times SAM's.
    eta: offset that keeps zero weights perturbable; official default 0.01.
      (The official example script overrides it with 0.0.)
    mask: which leaves are weights: a pytree of bools with the structure of
      the params, or a function of the params returning one. By default, the
      Flax leaves named ``kernel``, ``scale`` or ``embedding``
      (:func:`default_weight_mask`). Under ``optax.inject_hyperparams`` a
      callable mask must be listed in ``static_args``.
    eps: added to the norm (the official code adds 1e-16).

  Example: weights (``kernel``) are rescaled, biases are not::

      >>> import jax.numpy as jnp, sam_jax
      >>> params = {"kernel": jnp.array([[1.0, -2.0]]), "bias": jnp.zeros(2)}
      >>> loss = lambda p: jnp.sum((p["kernel"] @ jnp.ones((2, 1))) ** 2) + jnp.sum(p["bias"] ** 2)
      >>> grad_fn = sam_jax.grad_fn_from_loss(loss)
      >>> tx = sam_jax.asam(rho=0.5, eta=0.01)
      >>> direction, _ = tx.update(grad_fn(params)[0], tx.init(params), params, grad_fn=grad_fn)
      >>> print(direction["kernel"].round(3), direction["bias"])
      [[-4.249 -4.249]] [0. 0.]

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose update needs
    ``params`` and ``grad_fn``.

  References:
    Kwon, Kim, Park, Choi. ASAM: Adaptive Sharpness-Aware Minimization for
    Scale-Invariant Learning of Deep Neural Networks. ICML 2021.
    Official code: SamsungLabs/ASAM (``asam.py``).
  """
  _base.check_hyperparameter("rho", rho, minimum=0.0)
  _base.check_hyperparameter("eta", eta, minimum=0.0)
  _base.check_hyperparameter("eps", eps, minimum=0.0, min_inclusive=False)

  def init_fn(params: Any) -> ASAMState:
    del params
    return ASAMState(count=_base.zero_count())

  def update_fn(
      updates: Any,
      state: ASAMState,
      params: Any = None,
      *,
      grad_fn: Optional[_base.GradFn] = None,
      aux_sink: Optional[_base.AuxSink] = None,
      axis_name: Optional[str] = None,
      **extra_args: Any,
  ):
    del extra_args
    grad_fn = _base.require_grad_fn(grad_fn, params, "asam")
    rho_t = _base.value_at(rho, state.count)
    eta_t = _base.value_at(eta, state.count)
    is_weight = _base.resolve_mask(
        mask, params, default_weight_mask, "asam", "the weights (kernel, scale, embedding)")
    # T_w as a tree; 1 on the leaves that are not weights.
    t_w = jax.tree.map(
        lambda w, m: (jnp.abs(_base.wide(w)) + eta_t)
        if m
        else jnp.ones(w.shape, _base.wide_dtype(w.dtype)),
        params,
        is_weight,
    )
    t_g = jax.tree.map(lambda t, g: t * _base.wide(g), t_w, updates)
    scale = rho_t / (_base.global_norm(t_g) + eps)
    perturbation = jax.tree.map(lambda t, tg: t * tg * scale, t_w, t_g)
    adversarial = _base.evaluate(
        grad_fn,
        _base.perturb(params, perturbation),
        name=_base.PERTURBED,
        aux_sink=aux_sink,
        who="asam",
    )
    direction = _base.cross_device_mean(adversarial, axis_name)
    return direction, ASAMState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
