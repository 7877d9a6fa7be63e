"""The pure train and eval steps, for any apply function and any optax chain.

``make_train_step`` returns ``step(state, batch, rng) -> (state, metrics)``.
One step:

1. augments the ``uint8`` batch on the device (or just normalizes it);
2. runs the model in train mode at the clean weights: loss, logits and the
   new BatchNorm statistics, and the clean gradient ``g``;
3. hands the optimizer ``g`` and a ``grad_fn`` that re-runs the model on the
   *same* batch with the *same* dropout key at other weights, in train mode
   (so it normalizes with batch statistics) but discarding the statistics it
   computes;
4. applies the optimizer's update to the clean weights, and keeps the
   BatchNorm statistics of the clean pass only.

Nothing in the step depends on the method: SAM's two passes and CR-SAM's
three are whatever the transformation asks ``grad_fn`` for.

Data parallelism (``axis_name`` set by the wrappers in
:mod:`sam_jax.train.parallel`): each device holds a shard of the batch.

* ``perturbation="per_device"`` (default, the original SAM code's
  m-sharpness): a sharpness transformation gets the local gradient and
  ``axis_name`` and averages its own direction; a plain chain gets the
  averaged gradient.
* ``perturbation="synchronized"``: the gradient and every ``grad_fn``
  evaluation are averaged across devices before the optimizer sees them, so
  the step equals the single-device step on the global batch (for models
  without BatchNorm; BatchNorm normalizes each shard with its own
  statistics).

The BatchNorm running statistics and the metrics are averaged across devices
either way.

Gradient accumulation (``accumulation_steps=k``): the step's batch is split
into ``k`` micro-batches that run one after another, so
activations are held for one micro-batch at a time. Every gradient the
optimizer sees is the mean over the micro-batches at the *same* weights: the
clean gradient, and each ``grad_fn`` evaluation. So a sharpness method
perturbs with the whole batch's gradient and its adversarial gradient is the
whole batch's too: for a model without BatchNorm the step equals one step on
the whole batch. Micro-batches are treated as devices are: BatchNorm
normalizes each with its own statistics and the running statistics are their
mean; an objective's per-example state is updated by each micro-batch from
the same old state and the changes are added (pairwise AUC terms pair
examples within a micro-batch).

Non-finite values: the step checks the loss and, leaf by leaf, the gradient
and the update. A step with a non-finite value is not applied (the state
comes back unchanged) and its metrics say so: ``finite`` is false and
``nonfinite_leaves`` flags the offending parameters (in
``jax.tree.leaves(params)`` order). With ``nonfinite="error"`` the loop
raises :class:`NonFiniteError` naming the step and the parameter paths; with
``"skip"`` it counts the step as skipped and goes on.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from sam_jax import optimizers
from sam_jax.data import augment as augment_lib
from sam_jax.data import dataset as ds
from sam_jax.train import objectives
from sam_jax.train.losses import LossFn, masked_mean, probabilities
from sam_jax.train.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
AugmentFn = Callable[..., jax.Array]
PERTURBATIONS = ("per_device", "synchronized")
NONFINITE_POLICIES = ("error", "skip")


class NonFiniteError(FloatingPointError):
  """Training produced NaN or infinity; the message names the step and where."""


def _floating(x: Any) -> bool:
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def _mean_floats(tree: Any, axis_name: Optional[str]) -> Any:
  if axis_name is None:
    return tree
  return jax.tree.map(lambda x: jax.lax.pmean(x, axis_name) if _floating(x) else x, tree)


def _all_finite(x: jax.Array) -> jax.Array:
  return jnp.all(jnp.isfinite(x)) if _floating(x) else jnp.asarray(True)


def accuracy(task: str, logits: jax.Array, labels: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  if task == ds.MULTILABEL:
    correct = jnp.mean(((logits > 0).astype(jnp.int32) == labels).astype(jnp.float32), axis=-1)
  else:
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return masked_mean(correct, mask)


def make_train_step(
    apply_fn: Callable[..., tuple[jax.Array, Any]],
    loss_fn: LossFn | objectives.Objective,
    tx: optax.GradientTransformation,
    *,
    task: str = ds.MULTICLASS,
    augment_fn: Optional[AugmentFn] = None,
    axis_name: Optional[str] = None,
    perturbation: str = "per_device",
    vary: Optional[Callable[[Any], Any]] = None,
    accumulation_steps: int = 1,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
  """Builds the pure train step.

  Args:
    apply_fn: ``(params, model_state, inputs, *, train, rng) -> (logits,
      new_model_state)`` (see :mod:`sam_jax.models.adapters`).
    loss_fn: ``(logits, labels, mask) -> scalar``, or an
      :class:`~sam_jax.train.objectives.Objective` (variables and per-example
      state; the state computed by the clean pass is kept, the perturbed
      passes' is dropped).
    tx: any optax transformation; sharpness-aware ones get ``grad_fn``.
    task: for the accuracy metric (``multilabel`` thresholds at 0).
    augment_fn: ``(key, uint8 images, train=True) -> float32``; default:
      normalization to ``[−1, 1]``.
    axis_name: the device axis, set by the parallel wrappers; ``None`` on one
      device.
    perturbation: ``"per_device"`` or ``"synchronized"`` (see module doc).
    vary: makes replicated weights device-varying before differentiation
      (``shard_map`` sums the gradient of a replicated input over the mesh
      otherwise); set by :func:`sam_jax.train.parallel.shard_map_step`.
    accumulation_steps: micro-batches per step (see module doc); the batch
      (on each device) must split evenly.

  Returns:
    ``step(state, batch, rng) -> (state, metrics)``. ``batch`` holds
    ``image`` (uint8), ``label``, and optionally ``mask`` and ``index``
    (needed by objectives with per-example state); ``rng`` is this
    step's key (the loop derives it from the seed and the step number).
  """
  if perturbation not in PERTURBATIONS:
    raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}.")
  if not (isinstance(accumulation_steps, int) and accumulation_steps >= 1):
    raise ValueError(f"accumulation_steps must be an integer >= 1, got {accumulation_steps!r}.")
  augment_fn = augment_fn or (lambda key, images, train=True: augment_lib.normalize(images))
  vary = vary or (lambda tree: tree)
  objective = objectives.as_objective(loss_fn)
  synchronized = axis_name is not None and perturbation == "synchronized"

  def step(state: TrainState, batch: Batch, rng: jax.Array):
    if axis_name is not None:
      # Each device draws its own dropout masks and augmentations.
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    dropout_rng, augment_rng = jax.random.split(rng)
    images = augment_fn(augment_rng, batch["image"], train=True)
    labels, mask, index = batch["label"], batch.get("mask"), batch.get("index")
    whole = {"images": images, "labels": labels, "mask": mask, "index": index,
             "rng": dropout_rng}

    def loss_and_aux(params, part):
      model_params, variables = objectives.split_params(params)
      logits, new_model_state = apply_fn(
          model_params, state.model_state, part["images"], train=True, rng=part["rng"]
      )
      value, new_objective_state = objective.loss(
          variables, state.objective_state, logits, part["labels"], part["index"], part["mask"])
      return value, (logits, new_model_state, new_objective_state)

    value_and_grad_of = jax.value_and_grad(loss_and_aux, has_aux=True)
    if accumulation_steps == 1:
      value_and_grads = lambda params: value_and_grad_of(vary(params), whole)
    else:
      parts = micro_batches(whole, accumulation_steps)
      value_and_grads = lambda params: accumulated(value_and_grad_of, vary(params), parts,
                                                   state)

    (loss, (logits, new_model_state, new_objective_state)), grads = value_and_grads(state.params)

    def grad_fn(params):
      # Same batch, same dropout key; this pass's BatchNorm statistics and
      # objective state are dropped: only the clean pass's are kept.
      (value, _), g = value_and_grads(params)
      if synchronized:
        g, value = jax.lax.pmean((g, value), axis_name)
      return g, {"loss": value}

    sharpness_aware = optimizers.is_sharpness_aware(state.opt_state)
    extra = {}
    if objective.decomposable and accumulation_steps == 1 and optimizers.selects_examples(
        state.opt_state):
      extra["examples"] = _examples(objective, apply_fn, state, whole, logits,
                                    value_and_grad_of, vary, axis_name if synchronized else None)
    if axis_name is not None:
      if synchronized or not sharpness_aware:
        grads = jax.lax.pmean(grads, axis_name)
      else:
        extra["axis_name"] = axis_name
    updates, opt_state, adversarial = optimizers.update_with_aux(
        tx, grads, state.opt_state, state.params, grad_fn=grad_fn, **extra
    )
    new_params = optax.apply_updates(state.params, updates)
    new_model_state = _mean_floats(new_model_state, axis_name)
    new_objective_state = objectives.merge_across_devices(
        state.objective_state, new_objective_state, axis_name)

    leaf_ok = jnp.stack([
        _all_finite(g) & _all_finite(u)
        for g, u in zip(jax.tree.leaves(grads), jax.tree.leaves(updates))
    ])
    finite = jnp.all(leaf_ok) & jnp.isfinite(loss)
    if axis_name is not None:
      leaf_ok = jax.lax.pmin(leaf_ok.astype(jnp.int32), axis_name).astype(bool)
      finite = jax.lax.pmin(finite.astype(jnp.int32), axis_name).astype(bool)

    candidate = TrainState(state.step + 1, new_params, new_model_state, opt_state,
                           new_objective_state)
    kept = state._replace(step=state.step + 1)
    new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), candidate, kept)

    metrics = {
        "loss": loss,
        "accuracy": accuracy(task, logits, labels, mask),
        "grad_norm": optimizers.global_norm(grads),
        "update_norm": optimizers.global_norm(updates),
    }
    if "perturbed" in adversarial:
      metrics["perturbed_loss"] = adversarial["perturbed"]["loss"]
      metrics["sharpness"] = metrics["perturbed_loss"] - loss
    metrics = _mean_floats(metrics, axis_name)
    metrics["finite"] = finite
    metrics["nonfinite_leaves"] = ~leaf_ok
    return new_state, metrics

  return step


def _examples(objective: objectives.Objective, apply_fn: Callable, state: TrainState,
              whole: dict[str, Any], clean_logits: jax.Array, value_and_grad_of: Callable,
              vary: Callable, mean_axis: Optional[str]) -> optimizers.Examples:
  """The batch example by example, for a method that selects examples (ESAM).

  Per-example losses come from logits of the whole batch (BatchNorm with the
  batch's statistics), so the clean ones are the clean pass's, at no cost; a
  subset's gradient runs the model on the subset alone, with the same dropout
  key. ``mean_axis``: average the subset's gradient across devices
  (synchronized perturbation).
  """

  def per_example(params, logits):
    _, variables = objectives.split_params(params)

    def one(logit, label):
      value, _ = objective.loss(variables, state.objective_state, logit[None], label[None],
                                None, None)
      return value

    return jax.vmap(one)(logits, whole["labels"])

  def losses_fn(params):
    model_params, _ = objectives.split_params(params)
    logits, _ = apply_fn(model_params, state.model_state, whole["images"], train=True,
                         rng=whole["rng"])
    return per_example(params, logits)

  def subset_grad_fn(params, indices):
    part = {name: value if value is None or name == "rng" else jnp.take(value, indices, axis=0)
            for name, value in whole.items()}
    (value, _), g = value_and_grad_of(vary(params), part)
    if mean_axis is not None:
      g, value = jax.lax.pmean((g, value), mean_axis)
    return g, {"loss": value}

  mask = whole["mask"]
  return optimizers.Examples(losses_fn, subset_grad_fn,
                             losses=per_example(state.params, clean_logits),
                             valid=None if mask is None else mask > 0)


def micro_batches(whole: dict[str, Any], k: int) -> dict[str, Any]:
  """``whole``'s arrays as ``k`` micro-batches on a leading axis, each with its
  own dropout key and its weight in the batch mean (its share of unmasked
  examples)."""
  size = whole["labels"].shape[0]
  if size % k:
    raise ValueError(f"a batch of {size} examples does not split into {k} micro-batches "
                     "(accumulation_steps); choose a batch size divisible by it "
                     "(per device, when training in parallel).")
  split = lambda x: None if x is None else x.reshape((k, size // k) + x.shape[1:])
  parts = {name: split(whole[name]) for name in ("images", "labels", "mask", "index")}
  parts["rng"] = jax.random.split(whole["rng"], k)
  if whole["mask"] is None:
    parts["weight"] = jnp.full((k,), 1.0 / k, jnp.float32)
  else:
    counts = jnp.sum(parts["mask"].astype(jnp.float32), axis=1)
    parts["weight"] = counts / jnp.maximum(jnp.sum(counts), 1.0)
  return parts


def accumulated(value_and_grad_of: Callable, params: Any, parts: dict[str, Any],
                state: TrainState):
  """``value_and_grad_of(params, part)`` over the micro-batches in turn, as one
  batch: the weighted mean of values and gradients; the logits in batch order;
  the BatchNorm statistics averaged; the objective state's per-example changes
  added (see the module doc).

  The loop is unrolled, not a ``lax.scan``: XLA:CPU ran the convolutions of a
  scan's body many times slower (a 28^3 ResNet-18 3D step of 9 s did not
  finish in 9 minutes as a scan of 4). Each micro-batch's images get ``0 *``
  (an element of every gradient summed so far) added, which ties its pass to
  the end of the previous one's backward pass, so the passes cannot be
  scheduled side by side and hold one micro-batch's activations at a time.
  """
  # The sums start from the first micro-batch's values, which are device-varying
  # under shard_map like every later term.
  k = parts["weight"].shape[0]
  total, outputs = None, []
  for i in range(k):
    part = jax.tree.map(lambda x: x[i], parts)
    if total is not None:
      done = sum(jnp.ravel(g)[0].astype(jnp.float32) for g in jax.tree.leaves(total[1]))
      part["images"] = part["images"] + (0 * done).astype(part["images"].dtype)
    (value, aux), grads = value_and_grad_of(params, part)
    term = jax.tree.map(lambda x: (part["weight"] * x).astype(x.dtype), (value, grads))
    total = term if total is None else jax.tree.map(jnp.add, total, term)
    outputs.append(aux)
  value, grads = total
  logits, model_states, objective_states = jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)
  logits = logits.reshape((-1,) + logits.shape[2:])
  model_state = jax.tree.map(
      lambda x: jnp.mean(x, axis=0) if _floating(x) else x[-1], model_states)
  objective_state = objectives.merge_parts(state.objective_state, objective_states)
  return (value, (logits, model_state, objective_state)), grads


def make_eval_step(
    apply_fn: Callable[..., tuple[jax.Array, Any]],
    loss_fn: LossFn,
    *,
    task: str,
    augment_fn: Optional[AugmentFn] = None,
) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
  """``eval_step(state, batch) -> {"scores", "loss"}`` per example, eval mode."""
  augment_fn = augment_fn or (lambda key, images, train=False: augment_lib.normalize(images))

  def eval_step(state: TrainState, batch: Batch):
    images = augment_fn(jax.random.key(0), batch["image"], train=False)
    logits, _ = apply_fn(objectives.model_params(state.params), state.model_state, images,
                         train=False, rng=None)
    per_example = jax.vmap(lambda lg, lb: loss_fn(lg[None], lb[None], None))(logits, batch["label"])
    return {"scores": probabilities(task, logits), "loss": per_example}

  return eval_step


def nonfinite_message(step: int, metrics: Metrics, params: Any) -> str:
  """Names the parameters whose gradient or update was not finite."""
  flags = [bool(f) for f in jax.device_get(metrics["nonfinite_leaves"]).reshape(-1)]
  paths = [jax.tree_util.keystr(path, simple=True, separator="/")
           for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  bad = [p for p, f in zip(paths, flags) if f]
  loss = float(jax.device_get(metrics["loss"]))
  where = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
  if bad:
    return (f"non-finite gradient or update at step {step} in {len(bad)} parameter(s): "
            f"{where} (loss {loss}).")
  return f"non-finite loss at step {step} (loss {loss}); gradients and updates were finite."
