"""Training objectives: a loss with its own trainable variables and per-example state.

The train step minimizes an :class:`Objective`. Cross-entropy has neither
variables nor state; AUC-M has trainable ``a``, ``b`` and a dual ``alpha``;
the AP and partial-AUC losses keep moving averages per training example.
One shape serves them all:

``init() -> (variables, state)``
    ``variables``: trainable, optimized by the optimizer chain together with
    the model's parameters, or ``None``. ``state``: not differentiated,
    updated by the loss itself (like BatchNorm statistics), or ``None``.
``loss(variables, state, logits, labels, index, mask) -> (value, new_state)``
    ``index`` is each example's position in the training set (the rows of
    per-example state).

How the pieces sit in the train state (decision and alternatives in
BUILD_NOTES.md):

* The optimizer's parameters are the model's params alone when the objective
  has no variables (every cross-entropy run is unchanged), and
  :class:`ObjectiveParams` ``(model, objective)`` when it has. So
  ``optax.chain(sam_jax.sam(rho), sam_jax.auc.pesg(...))`` perturbs and
  updates ``a`` and ``b`` with the weights, and ``grad_fn`` returns their
  gradient at the perturbed point.
* AUC-M's dual ``alpha`` is among the variables (PESG finds it beside ``a``
  and ``b`` and ascends in closed form), but the loss sees it through
  ``stop_gradient``: its gradient is zero, so a sharpness method neither
  perturbs it nor counts it in its norm. SAM's ascent is a primal notion.
* ``state`` is ``TrainState.objective_state``. The step keeps the state
  computed by the *clean* pass; the perturbed passes compute their own (from
  the same old state, as BatchNorm normalizes with its own batch statistics
  there) and drop it.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax import auc
from sam_jax.data import dataset as ds
from sam_jax.train import losses as losses_lib

LossValue = tuple[jax.Array, Any]


class ObjectiveParams(NamedTuple):
  """What the optimizer sees when the objective has trainable variables."""

  model: Any
  objective: Any


class Objective(NamedTuple):
  """A training objective (see the module docstring)."""

  name: str
  init: Callable[[], tuple[Any, Any]]
  loss: Callable[..., LossValue]
  # A mean over examples, so one example's loss is the loss of a batch of one
  # (what ESAM ranks examples by); pairwise and weighted objectives are not.
  decomposable: bool = False


def join_params(model_params: Any, variables: Any) -> Any:
  return model_params if variables is None else ObjectiveParams(model_params, variables)


def split_params(params: Any) -> tuple[Any, Any]:
  """``(model params, objective variables or None)``."""
  if isinstance(params, ObjectiveParams):
    return params.model, params.objective
  return params, None


def model_params(params: Any) -> Any:
  return split_params(params)[0]


def as_objective(loss: Any) -> Objective:
  """An :class:`Objective` as it is, or a plain ``(logits, labels, mask) -> scalar`` wrapped."""
  if isinstance(loss, Objective):
    return loss
  if not callable(loss):
    raise TypeError(f"expected an Objective or a loss function, got {type(loss).__name__}.")

  def value(variables, state, logits, labels, index, mask):
    del variables, index
    return loss(logits, labels, mask), state

  return Objective(getattr(loss, "__name__", "loss"), lambda: (None, None), value,
                   decomposable=True)


def merge_parts(old: Any, stacked: Any) -> Any:
  """One objective state from micro-batches' updates (stacked on a leading axis),
  each from ``old``: per-example changes added, scalar averages averaged, as
  :func:`merge_across_devices` does across devices."""

  def merge(o, n):
    if jnp.ndim(o) == 0:
      return jnp.mean(n, axis=0)
    return o + jnp.sum(n - o, axis=0)

  return jax.tree.map(merge, old, stacked)


def merge_across_devices(old: Any, new: Any, axis_name: Optional[str]) -> Any:
  """One objective state from each device's update of its own batch shard.

  Per-example buffers (arrays with a leading example axis) change only in the
  rows of a device's own examples, so the deltas add up: ``old + Σ_d (new_d
  − old)``. Scalar running averages are averaged.
  """
  if axis_name is None:
    return new

  def merge(o, n):
    if jnp.ndim(o) == 0:
      return jax.lax.pmean(n, axis_name)
    return o + jax.lax.psum(n - o, axis_name)

  return jax.tree.map(merge, old, new)


# ----------------------------------------------------------------------------
# Scores from logits.


def scores_from_logits(logits: jax.Array, task: str) -> jax.Array:
  """Scores in ``[0, 1]`` for the AUC losses.

  Binary models here have two logits (MedMNIST's convention, so that a
  cross-entropy model can be fine-tuned with an AUC loss): the score is the
  positive class's softmax probability, ``sigmoid(l₁ − l₀)``; one logit gives
  its sigmoid (LibAUC's models). Multi-label: the sigmoid of each logit.
  """
  logits = logits.astype(jnp.float32)
  if task == ds.MULTILABEL or logits.shape[-1] == 1:
    scores = jax.nn.sigmoid(logits)
    return scores if task == ds.MULTILABEL else scores[..., 0]
  return jax.nn.softmax(logits, axis=-1)[..., 1]


# ----------------------------------------------------------------------------
# The objectives by name.


def _nothing() -> tuple[None, None]:
  """``init`` of an objective with neither variables nor state."""
  return None, None


def cross_entropy(task: str, label_smoothing: float = 0.0) -> Objective:
  return as_objective(losses_lib.loss_for_task(task, label_smoothing))._replace(name="ce")


def weighted_ce(class_weights: np.ndarray) -> Objective:
  weights = np.asarray(class_weights, np.float32)

  def loss(variables, state, logits, labels, index, mask):
    return auc.weighted_cross_entropy(logits, labels, weights, mask), state

  return Objective("weighted_ce", _nothing, loss)


def focal(gamma: float, class_weights: Optional[np.ndarray] = None) -> Objective:
  def loss(variables, state, logits, labels, index, mask):
    return auc.focal_loss(logits, labels, gamma=gamma, class_weights=class_weights,
                          mask=mask), state

  return Objective("focal", _nothing, loss)


def aucm(task: str, num_labels: Optional[int], *, margin: float, version: str,
         imratio: Optional[float] = None, libauc_v2_negative_mean: bool = False) -> Objective:
  def init():
    return auc.aucm_variables(num_labels), None

  def loss(variables, state, logits, labels, index, mask):
    variables = {**variables, "alpha": jax.lax.stop_gradient(variables["alpha"])}
    value = auc.aucm_loss(scores_from_logits(logits, task), labels, variables, margin=margin,
                          version=version, imratio=imratio, mask=mask,
                          libauc_v2_negative_mean=libauc_v2_negative_mean)
    return value, state

  return Objective("aucm" if version == "v2" else "aucm_v1", init, loss)


def _indexed(name: str, task: str, make_state: Callable[[], Any], fn: Callable) -> Objective:
  """An objective whose state is per-example buffers, updated by ``fn``."""

  def loss(variables, state, logits, labels, index, mask):
    if index is None:
      raise ValueError(f"the {name} loss keeps per-example state: batches need 'index'.")
    return fn(scores_from_logits(logits, task), labels, index, state, mask=mask)

  return Objective(name, lambda: (None, make_state()), loss)


def ap(task: str, num_examples: int, *, margin: float, gamma: float, surrogate: str) -> Objective:
  return _indexed("ap", task, lambda: auc.ap_state(num_examples), functools.partial(
      auc.ap_loss, margin=margin, gamma=gamma, surrogate=surrogate))


def pauc_cvar(task: str, num_examples: int, *, beta: float, eta: float, margin: float,
              surrogate: str, num_positives: Optional[int]) -> Objective:
  return _indexed("pauc_cvar", task, lambda: auc.pauc_cvar_state(num_examples), functools.partial(
      auc.pauc_cvar_loss, beta=beta, eta=eta, margin=margin, surrogate=surrogate,
      num_positives=num_positives))


def pauc_kl(task: str, num_examples: int, *, gamma: float, lmbda: float, margin: float,
            surrogate: str) -> Objective:
  return _indexed("pauc_kl", task, lambda: auc.pauc_kl_state(num_examples), functools.partial(
      auc.pauc_kl_loss, gamma=gamma, lmbda=lmbda, margin=margin, surrogate=surrogate))


def tpauc_kl(task: str, num_examples: int, *, tau: float, lmbda: float,
             gammas: tuple[float, float], margin: float, surrogate: str) -> Objective:
  return _indexed("tpauc_kl", task, lambda: auc.tpauc_kl_state(num_examples), functools.partial(
      auc.tpauc_kl_loss, tau=tau, lmbda=lmbda, gammas=gammas, margin=margin, surrogate=surrogate))


# name -> tasks it accepts; the pairing with optimizers is checked in train/optim.py.
LOSSES: dict[str, tuple[str, ...]] = {
    "ce": ds.TASKS,
    "weighted_ce": (ds.BINARY, ds.MULTICLASS, ds.ORDINAL),
    "focal": (ds.BINARY, ds.MULTICLASS, ds.ORDINAL),
    "aucm": (ds.BINARY, ds.MULTILABEL),
    "aucm_v1": (ds.BINARY, ds.MULTILABEL),
    "ap": (ds.BINARY,),
    "pauc_cvar": (ds.BINARY,),
    "pauc_kl": (ds.BINARY,),
    "tpauc_kl": (ds.BINARY,),
}
# The losses that are a mean over examples (Objective.decomposable).
EXAMPLE_LOSSES = ("ce",)
AUC_LOSSES = ("aucm", "aucm_v1", "ap", "pauc_cvar", "pauc_kl", "tpauc_kl")


def check_loss(name: str, task: str, dataset_name: str = "the dataset") -> None:
  if name not in LOSSES:
    raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}.")
  if task not in LOSSES[name]:
    raise ValueError(f"loss {name!r} needs a {' or '.join(LOSSES[name])} task, but "
                     f"{dataset_name} is {task}.")


def positive_count(labels: np.ndarray) -> int:
  return int(np.sum(np.asarray(labels) == 1))
