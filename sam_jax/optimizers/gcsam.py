"""GCSAM: Gradient-Centralized SAM (Hassan, Vakanski, Zhang, Xian, arXiv 2501.11584)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from sam_jax.optimizers import _base


def default_kernel_mask(path: tuple[Any, ...], leaf: jax.Array) -> bool:
  """Whether gradient centralization applies to a leaf.

  Conv and dense kernels: leaves named ``kernel`` with ``ndim > 1``. Biases,
  normalization scales and other named leaves (position embeddings, class
  tokens) are left alone. A leaf without a name is centralized if
  ``ndim > 1``.
  """
  name = _base.leaf_name(path)
  return leaf.ndim > 1 and (name is None or name == "kernel")


def centralize(x: jax.Array) -> jax.Array:
  """Gradient centralization of one Flax kernel.

  Flax kernels put the output features last (``(in, out)``,
  ``(kh, kw, in, out)``, ``(kd, kh, kw, in, out)``): subtract the mean over all
  axes but the last, i.e. over everything that feeds one output unit.
  """
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(_base.wide(x), axis=axes, keepdims=True)
  return (_base.wide(x) - mean).astype(x.dtype)


@_base.sharpness_state
class GCSAMState(NamedTuple):
  """State of :func:`gcsam`.

  Attributes:
    count: number of updates so far (int32); schedules are evaluated at it.
  """

  count: jax.Array


def gcsam(
    rho: _base.ScalarOrSchedule = 0.05,
    *,
    centralize_descent: bool = False,
    norm_before_centralization: bool = False,
    mask: _base.MaskOrFn = None,
    eps: float = 1e-12,
) -> optax.GradientTransformationExtraArgs:
  r"""Gradient-Centralized Sharpness-Aware Minimization.

  Gradient centralization (Yong et al., 2020) of the ascent gradient before
  SAM's perturbation. For each kernel ``W`` (see ``mask``),
  ``GC(g_W) = g_W − mean(g_W over all axes but the output axis)``; other
  leaves are unchanged::

      g    = ∇L(w)
      g_GC = GC(g)
      ε    = ρ · g_GC / (‖g_GC‖ + eps)
      g_p  = ∇L(w + ε)
      direction = g_p        (GC(g_p) with centralize_descent=True)

  Two passes per step; the centralization costs one mean per kernel. A model
  whose leaves are all 1-D is plain SAM.

  The equations are the paper's (``‖ε‖ = ρ``). The authors' released script
  takes the norm of the *uncentralized* gradient, ``ε = ρ·g_GC/‖g‖`` (so
  ``‖ε‖ ≤ ρ``); ``norm_before_centralization=True`` reproduces it. Whether the
  descent gradient is centralized too is not settled by the sources (the
  script and kozistr/pytorch_optimizer do not); ``centralize_descent`` adds
  it.

  Args:
    rho: radius, a float or schedule. The authors' script uses 0.05 with Adam
      at lr 1e-4.
    centralize_descent: also centralize the direction returned.
    norm_before_centralization: normalize by ``‖g‖`` instead of ``‖g_GC‖``.
    mask: leaves to centralize: a pytree of bools like the params, or a
      function of the params returning one. Default
      :func:`default_kernel_mask`. Flax ``DenseGeneral`` kernels with several
      output axes (``(in, heads, head_dim)``) are not "output last" in one axis;
      mask them out or use dense layers with one output axis (our models do).
    eps: added to the norm.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose update needs
    ``params`` and ``grad_fn``.

  References:
    Hassan, Vakanski, Zhang, Xian. GCSAM: Gradient Centralized Sharpness
    Aware Minimization. arXiv 2501.11584 (IEEE Access 2025).
    Yong, Huang, Hua, Zhang. Gradient Centralization. ECCV 2020.
  """
  _base.check_hyperparameter("rho", rho, minimum=0.0)
  _base.check_hyperparameter("eps", eps, minimum=0.0, min_inclusive=False)

  def init_fn(params: Any) -> GCSAMState:
    del params
    return GCSAMState(count=_base.zero_count())

  def update_fn(
      updates: Any,
      state: GCSAMState,
      params: Any = None,
      *,
      grad_fn: Optional[_base.GradFn] = None,
      aux_sink: Optional[_base.AuxSink] = None,
      axis_name: Optional[str] = None,
      **extra_args: Any,
  ):
    del extra_args
    grad_fn = _base.require_grad_fn(grad_fn, params, "gcsam")
    rho_t = _base.value_at(rho, state.count)
    is_kernel = _base.resolve_mask(
        mask, params, default_kernel_mask, "gcsam", "the kernels (named kernel, ndim > 1)")

    def gc(tree):
      return jax.tree.map(lambda x, m: centralize(x) if m else x, tree, is_kernel)

    g_gc = gc(updates)
    norm = _base.global_norm(updates if norm_before_centralization else g_gc)
    scale = rho_t / (norm + eps)
    perturbation = jax.tree.map(lambda x: _base.wide(x) * scale, g_gc)
    g_p = _base.evaluate(
        grad_fn,
        _base.perturb(params, perturbation),
        name=_base.PERTURBED,
        aux_sink=aux_sink,
        who="gcsam",
    )
    direction = gc(g_p) if centralize_descent else g_p
    direction = _base.cross_device_mean(direction, axis_name)
    return direction, GCSAMState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
