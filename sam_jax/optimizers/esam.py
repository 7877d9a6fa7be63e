"""ESAM: stochastic weight perturbation and sharpness-sensitive data selection (Du et al., ICLR 2022)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from sam_jax.optimizers import _base


@_base.sharpness_state
class ESAMState(NamedTuple):
  """State of :func:`esam`.

  Attributes:
    count: number of updates so far (int32); step ``t``'s weight mask is
      keyed by it.
  """

  count: jax.Array


def esam(
    rho: _base.ScalarOrSchedule = 0.05,
    beta: float = 0.6,
    gamma: float = 0.5,
    *,
    adaptive: bool = False,
    seed: int = 0,
    eps: float = 1e-12,
) -> optax.GradientTransformationExtraArgs:
  r"""Efficient SAM: perturb a random subset of the weights, descend on the sharpest examples.

  Two changes to SAM, each with its own knob::

      g = ∇L(w)                                (the ``grads`` given to update)
      m_l ~ Bernoulli(β), one per leaf l       (SWP; keyed by seed and step)
      ε = ρ · (m ⊙ g) / (β · (‖m ⊙ g‖ + eps))   (leaves with m_l = 0 stay put)
      γ = 1:  direction = ∇L(w + ε)            (one call of grad_fn)
      γ < 1:  s_i = ℓ_i(w + ε) − ℓ_i(w)        (SDS: a forward pass, per example)
              S  = the k = max(1, ⌊γ·B⌋) examples of largest s_i
              direction = ∇ (1/k) Σ_{i∈S} ℓ_i(w + ε)   (forward/backward on k examples)

  ``ℓ_i`` is example ``i``'s loss and ``B`` the batch (on each device under
  data parallelism). The ``examples`` keyword of update (an
  :class:`~sam_jax.optimizers._base.Examples`) provides the per-example
  losses and the gradient of a subset; the train step passes one for losses
  that are a mean over examples (cross-entropy). ``k`` is fixed at trace
  time, so the subset's pass has a static shape under ``jit``: its cost is
  ``γ`` of a full pass, plus one forward pass of the whole batch to rank the
  examples; with the clean pass, about ``1 + 1/3 + γ`` SGD steps.
  BatchNorm in train mode normalizes the subset with its own statistics, as
  in the authors' code.

  ``adaptive=True`` scales the ascent element-wise as the authors' ASAM
  switch does: ``ε = ρ·m⊙w²⊙g / (β(‖m⊙|w|⊙g‖ + eps))``.

  Differences from the authors' PyTorch code (dydjw9/Efficient_SAM): there
  the weight mask of step ``t`` is drawn (per tensor, as here) at the end of
  step ``t − 1`` and the first step perturbs every tensor; here every step's
  mask is drawn from ``seed`` and the step, so a resumed run and every
  device draw the same one. There the kept examples are those whose
  sharpness is *strictly* above the ``⌊γB⌋``-th largest, which is ``⌊γB⌋ −
  1`` examples without ties (a variable count); here exactly ``k``. There
  ``γ ≥ 0.99`` keeps the whole batch; here ``γ = 1``. The paper's saving
  from SWP (no weight gradient for the unmasked tensors in the clean
  backward pass) does not carry over: the caller computes the whole clean
  gradient, which a plain optax chain needs anyway.

  Under data parallelism (``axis_name``) each device perturbs with its own
  gradient (the mask is the same everywhere) and ranks its own examples;
  the direction is averaged across devices.

  Args:
    rho: SAM's radius (float or schedule). The paper's CIFAR runs use 0.05.
    beta: ``β`` in (0, 1], the chance that a leaf is perturbed; 1 turns SWP
      off. The authors' ResNet-18 runs use 0.6, their wider models 0.5.
    gamma: ``γ`` in (0, 1], the share of the batch the adversarial gradient
      is computed on; 1 turns SDS off (and needs no ``examples``). The
      authors use 0.5. A Python float: it fixes ``k``.
    adaptive: the element-wise (ASAM-style) ascent of the authors' code.
    seed: the seed of the weight masks.
    eps: added to the gradient norm.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose update needs
    ``params``, ``grad_fn`` and, when ``gamma < 1``, ``examples``. With
    ``gamma < 1`` the aux handed to ``aux_sink`` as ``"perturbed"`` is
    ``{"loss": ...}``, the whole batch's mean loss at ``w + ε`` (from the
    ranking pass, so the perturbed loss means what it means for SAM), and
    the subset's aux comes as ``"selected"``.

  References:
    Du, Yan, Feng, Zhou, Zhen, Goh, Tan. Efficient Sharpness-aware
    Minimization for Improved Training of Neural Networks. ICLR 2022.
  """
  _base.check_hyperparameter("rho", rho, minimum=0.0)
  _base.check_hyperparameter("beta", beta, minimum=0.0, maximum=1.0, min_inclusive=False)
  _base.check_hyperparameter("eps", eps, minimum=0.0, min_inclusive=False)
  _base.check_integer("esam", "seed", seed, minimum=-2**63)
  if callable(gamma) or isinstance(gamma, jax.Array):
    raise ValueError(f"esam: gamma must be a Python float (it fixes the size of the selected "
                     f"subset at trace time), got {gamma!r}; under optax.inject_hyperparams "
                     f"pass static_args=('gamma',).")
  _base.check_hyperparameter("gamma", gamma, minimum=0.0, maximum=1.0, min_inclusive=False)

  def init_fn(params: Any) -> ESAMState:
    del params
    return ESAMState(count=_base.zero_count())

  def update_fn(
      updates: Any,
      state: ESAMState,
      params: Any = None,
      *,
      grad_fn: Optional[_base.GradFn] = None,
      aux_sink: Optional[_base.AuxSink] = None,
      axis_name: Optional[str] = None,
      examples: Optional[_base.Examples] = None,
      **extra_args: Any,
  ):
    del extra_args
    grad_fn = _base.require_grad_fn(grad_fn, params, "esam")
    if gamma < 1 and examples is None:
      raise ValueError(
          "esam with gamma < 1 selects examples: update needs the keyword examples= (a "
          "sam_jax.optimizers.Examples, see examples_from_loss). The train step passes one "
          "for a loss that is a mean over examples (cross-entropy); use gamma=1 otherwise.")
    rho_t = _base.value_at(rho, state.count)
    masks = weight_mask(seed, state.count, beta, updates)
    masked = jax.tree.map(lambda g, m: g * m.astype(g.dtype), updates, masks)
    perturbation = _base.sam_perturbation(masked, params, rho_t / beta, eps, adaptive)
    perturbed = _base.perturb(params, perturbation)
    if gamma >= 1:
      adversarial = _base.evaluate(grad_fn, perturbed, name=_base.PERTURBED,
                                   aux_sink=aux_sink, who="esam")
    else:
      assert examples is not None
      adversarial = _selected_gradient(examples, params, perturbed, gamma, aux_sink)
    adversarial = jax.tree.map(lambda a, g: a.astype(g.dtype), adversarial, updates)
    direction = _base.cross_device_mean(adversarial, axis_name)
    return direction, ESAMState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def selects_examples(opt_state: optax.OptState) -> bool:
  """Whether an optimizer state holds ESAM's, whose update takes ``examples``."""
  is_esam = lambda x: isinstance(x, ESAMState)
  return any(is_esam(x) for x in jax.tree.leaves(opt_state, is_leaf=is_esam))


def weight_mask(seed: int, count: jax.Array, beta: float, tree: Any) -> Any:
  """Step ``count``'s SWP mask: one Bernoulli(``beta``) bool per leaf of ``tree``.

  Keyed by ``seed`` and the step only, so it is the same on every device, in
  every vmapped seed and after a resume.
  """
  leaves, treedef = jax.tree.flatten(tree)
  key = jax.random.fold_in(jax.random.key(seed), count)
  draws = jax.random.bernoulli(key, beta, (len(leaves),))
  return jax.tree.unflatten(treedef, [draws[i] for i in range(len(leaves))])


def subset_size(batch: int, gamma: float) -> int:
  """``k = max(1, ⌊γ·B⌋)``, the number of examples SDS keeps."""
  return max(1, int(batch * gamma))


def _selected_gradient(examples: _base.Examples, params: Any, perturbed: Any, gamma: float,
                       aux_sink: Optional[_base.AuxSink]) -> Any:
  """The gradient at ``perturbed`` of the ``k`` examples whose loss rose most."""
  before = examples.losses if examples.losses is not None else examples.losses_fn(params)
  after = examples.losses_fn(perturbed)
  if before.ndim != 1 or after.shape != before.shape:
    raise ValueError(f"esam: per-example losses must have shape (batch,), got {before.shape} "
                     f"at the clean weights and {after.shape} at the perturbed ones.")
  sharpness = (after - before).astype(jnp.float32)
  valid = examples.valid
  if valid is not None:
    # Padding is never ranked above a real example.
    sharpness = jnp.where(valid, sharpness, -jnp.inf)
  _, indices = jax.lax.top_k(sharpness, subset_size(before.shape[0], gamma))
  grads, aux = _base._split_output(examples.subset_grad_fn(perturbed, indices), "esam")
  if aux_sink is not None:
    weights = jnp.ones_like(after) if valid is None else valid.astype(after.dtype)
    whole = jnp.sum(after * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    aux_sink(_base.PERTURBED, {"loss": whole})
    aux_sink("selected", aux)
  return grads
