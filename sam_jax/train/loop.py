"""The training loop: epochs, evaluation, model selection, checkpoints, records.

``train_and_evaluate(config, workdir)`` runs one configuration and writes, in
``workdir``:

* ``config.json``: the configuration (the record of what was run);
* ``metrics.jsonl``: one JSON line per epoch (train loss/accuracy/sharpness,
  learning rate, val and test metrics, times);
* ``checkpoints/last``, ``checkpoints/best``: orbax checkpoints;
* ``results.json``: configuration, package versions, device, the selected
  epoch with its val and test metrics, time per step;
* ``curves.png``: train/val loss and val/test AUC per epoch.

Model selection follows the MedMNIST protocol: val and test are evaluated
every epoch and the reported test metrics are those of the epoch with the best
validation AUC (or loss). With ``resume=True`` the run continues from the
newest checkpoint and produces the same records as an uninterrupted run with
the same seed: the batch order and every key are functions of the seed, the
epoch and the step only.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import math
import pathlib
import platform
import statistics
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax import data as data_lib
from sam_jax import models
from sam_jax.data import augment as augment_lib
from sam_jax.data import batches as batches_lib
from sam_jax.data import dataset as ds
from sam_jax.train import metrics as metrics_lib
from sam_jax.train import parallel
from sam_jax.train.checkpoint import Checkpointer
from sam_jax.train.config import TrainConfig
from sam_jax.train.losses import loss_for_task
from sam_jax.train.optim import build_optimizer, check_names
from sam_jax.train.state import create_train_state
from sam_jax.train.step import NonFiniteError, make_eval_step, make_train_step, nonfinite_message

PARALLEL_MODES = ("none", "pmap", "shard_map")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_TRAIN_KEYS = ("loss", "accuracy", "perturbed_loss", "sharpness", "grad_norm")


# ----------------------------------------------------------------------------
# Building the pieces.


def load_data(config: TrainConfig) -> ds.Dataset:
  if config.dataset.endswith(".npz"):
    return data_lib.medmnist.load(config.dataset)
  return data_lib.load_dataset(config.dataset, config.data_dir, size=config.size,
                               download=config.download)


def check_config(config: TrainConfig) -> None:
  """Raises ``ValueError`` naming every option that cannot work."""
  check_names(config)
  models.model_entry(config.model)
  choices = {"parallel": PARALLEL_MODES, "dtype": tuple(DTYPES),
             "augment": ("none", "standard"), "select_by": ("auc", "loss"),
             "perturbation": ("per_device", "synchronized"), "nonfinite": ("error", "skip")}
  for field, allowed in choices.items():
    if getattr(config, field) not in allowed:
      raise ValueError(f"{field} must be one of {allowed}, got {getattr(config, field)!r}.")
  if config.checkpoint_every_steps is not None and config.checkpoint_every_steps < 1:
    raise ValueError(f"checkpoint_every_steps must be >= 1, got {config.checkpoint_every_steps}.")
  positive = {"epochs": config.epochs, "batch_size": config.batch_size,
              "eval_batch_size": config.eval_batch_size, "m_sharpness": config.m_sharpness,
              "learning_rate": config.learning_rate}
  for field, value in positive.items():
    if not value > 0:
      raise ValueError(f"{field} must be > 0, got {value}.")
  if config.parallel != "none" and config.m_sharpness > 1:
    raise ValueError("m_sharpness > 1 splits the batch on one device; with parallel "
                     f"{config.parallel!r} each device's batch already sets m.")
  if config.batch_size % config.m_sharpness:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by m_sharpness "
                     f"{config.m_sharpness}.")


def build_model(config: TrainConfig, dataset: ds.Dataset):
  entry = models.model_entry(config.model)
  if entry.spatial_dims != dataset.spatial_dims:
    kind = {2: "2D images", 3: "3D volumes"}
    raise ValueError(
        f"model {config.model!r} takes {kind[entry.spatial_dims]} but {dataset.name} has "
        f"{kind[dataset.spatial_dims]} of shape {dataset.image_shape}; choose a "
        f"{'3D model (resnet18_3d, resnet50_3d)' if dataset.spatial_dims == 3 else '2D model'}."
    )
  kwargs: dict[str, Any] = {"dtype": DTYPES[config.dtype]}
  if config.width != 1.0 or config.model.startswith(("resnet", "vgg")):
    kwargs["width"] = config.width
  if config.patch_size is not None:
    kwargs["patch_size"] = config.patch_size
  if config.stem is not None:
    kwargs["stem"] = config.stem
  try:
    return models.create_model(config.model, dataset.num_classes, **kwargs)
  except TypeError as error:
    raise ValueError(f"model {config.model!r} does not take one of {sorted(kwargs)}: {error}")


def augment_config(config: TrainConfig, spatial_dims: int) -> augment_lib.AugmentConfig:
  if config.augment == "none":
    return augment_lib.AugmentConfig()
  if spatial_dims == 3:
    return augment_lib.AugmentConfig.standard_3d()
  return augment_lib.AugmentConfig.standard_2d()


def versions() -> dict[str, str]:
  out = {"python": sys.version.split()[0]}
  for package in ("sam-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
    try:
      out[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      out[package] = "not installed"
  return out


def device_info() -> dict[str, Any]:
  device = jax.devices()[0]
  return {"platform": device.platform, "kind": device.device_kind,
          "count": jax.device_count(), "host": platform.platform()}


# ----------------------------------------------------------------------------
# Evaluation.


def evaluate_split(eval_step, state, split: ds.Split, task: str, batch_size: int) -> dict:
  scores, losses = [], []
  for batch in batches_lib.eval_batches(split, batch_size):
    out = jax.device_get(eval_step(state, batch))
    valid = batch["mask"]
    scores.append(out["scores"][valid])
    losses.append(out["loss"][valid])
  scores = np.concatenate(scores)
  result = metrics_lib.evaluate(task, split.labels, scores)
  result["loss"] = float(np.mean(np.concatenate(losses)))
  return result


# ----------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class _EpochSums:
  """Running sums of one epoch's train metrics (saved in checkpoints)."""

  sums: dict = dataclasses.field(default_factory=dict)
  steps: int = 0
  skipped: int = 0

  def add(self, metrics: dict) -> None:
    self.steps += 1
    if not bool(metrics["finite"]):
      self.skipped += 1  # not applied; its non-finite values stay out of the means
      return
    for key in _TRAIN_KEYS:
      if key in metrics:
        self.sums[key] = self.sums.get(key, 0.0) + float(metrics[key])

  def means(self) -> dict:
    counted = max(self.steps - self.skipped, 1)
    return {f"train_{k}": v / counted for k, v in self.sums.items()}


def _truncate_jsonl(path: pathlib.Path, epochs_done: int) -> None:
  """Drops the records of epochs after the checkpoint (1-based epoch numbers)."""
  if not path.exists():
    return
  lines = [line for line in path.read_text().splitlines()
           if line.strip() and json.loads(line)["epoch"] <= epochs_done]
  path.write_text("".join(line + "\n" for line in lines))


def _selection_value(record: dict, select_by: str) -> float:
  value = record["val"]["auc"] if select_by == "auc" else -record["val"]["loss"]
  return -math.inf if value is None or np.isnan(value) else value


def train_and_evaluate(
    config: TrainConfig, workdir: str | pathlib.Path, *, resume: bool = False,
    log=print,
) -> dict:
  """Runs ``config``, writing its records in ``workdir``; returns the results."""
  start_time = time.perf_counter()
  check_config(config)
  workdir = pathlib.Path(workdir)
  dataset = load_data(config)
  train_split = dataset["train"]
  model = build_model(config, dataset)

  if config.batch_size > len(train_split):
    raise ValueError(f"batch size {config.batch_size} is larger than the {len(train_split)} "
                     f"training examples of {dataset.name}.")
  devices = {"none": 1, "pmap": jax.local_device_count(), "shard_map": jax.device_count()}
  num_devices = devices[config.parallel]
  if config.batch_size % num_devices:
    raise ValueError(f"batch size {config.batch_size} does not split over {num_devices} devices.")
  steps_per_epoch = batches_lib.num_train_batches(train_split, config.batch_size)
  tx, schedule = build_optimizer(config, steps_per_epoch)

  seed_key = jax.random.key(config.seed)
  init_key, step_key = jax.random.split(seed_key)
  apply_fn, params, model_state = models.from_linen(model, init_key, train_split.images[:1])
  state = create_train_state(params, model_state, tx)
  loss_fn = loss_for_task(dataset.task, config.label_smoothing)
  augmentation = augment_config(config, dataset.spatial_dims)
  augment_fn = augment_lib.augment_fn(augmentation)
  build = functools.partial(make_train_step, apply_fn, loss_fn, tx, task=dataset.task,
                            augment_fn=augment_fn, perturbation=config.perturbation)
  eval_step = jax.jit(make_eval_step(apply_fn, loss_fn, task=dataset.task, augment_fn=augment_fn))

  workdir.mkdir(parents=True, exist_ok=True)
  checkpointer = Checkpointer(workdir / "checkpoints", config.keep_checkpoints)
  metrics_path = workdir / "metrics.jsonl"
  start_epoch, start_batch, sums = 0, 0, _EpochSums()
  best = {"value": -math.inf, "epoch": None, "record": None}
  stale = 0
  if resume and checkpointer.latest_step() is not None:
    state, meta = checkpointer.restore(state)
    start_epoch, start_batch = meta["epoch"], meta["batch"]
    sums = _EpochSums(**meta["sums"])
    best, stale = meta["best"], meta["stale"]
    best["value"] = -math.inf if best["value"] is None else best["value"]
    _truncate_jsonl(metrics_path, start_epoch)
    log(f"resumed from step {int(state.step)} (epoch {start_epoch + 1}, batch {start_batch + 1})")
  elif checkpointer.latest_step() is not None:
    raise FileExistsError(f"{workdir} already holds checkpoints: pass --resume to continue "
                          "that run, or choose a new work directory.")
  else:
    metrics_path.write_text("")
  (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))

  # Compile the step for the chosen parallelism and place the state.
  if config.parallel == "pmap":
    step_fn = parallel.pmap_step(build)
    device_state = parallel.replicate(state, num_devices)
    to_host_state = parallel.unreplicate
    place_batch = lambda b: parallel.shard_batch(b, num_devices)
  elif config.parallel == "shard_map":
    mesh = parallel.make_mesh()
    step_fn = parallel.shard_map_step(build, mesh)
    device_state = parallel.place_for_shard_map(mesh, state=state)
    to_host_state = lambda s: s
    place_batch = lambda b: parallel.place_for_shard_map(mesh, batch=b)
  elif config.m_sharpness > 1:
    step_fn = parallel.msharpness_step(build, config.m_sharpness)
    device_state, to_host_state, place_batch = state, (lambda s: s), (lambda b: b)
  else:
    step_fn = parallel.jit_step(build)
    device_state, to_host_state, place_batch = state, (lambda s: s), (lambda b: b)

  epoch_times: list[float] = []
  first_step_s: Optional[float] = None
  step = int(state.step)
  last_epoch = start_epoch
  stopped_early = False
  progress = _progress(config)

  def meta_for(epoch, batch, sums_):
    return {"epoch": epoch, "batch": batch, "sums": dataclasses.asdict(sums_),
            "best": {**best, "value": None if best["value"] == -math.inf else best["value"]},
            "stale": stale}

  try:
    for epoch in range(start_epoch, config.epochs):
      epoch_start = time.perf_counter()
      bar = progress(total=steps_per_epoch, initial=start_batch,
                     desc=f"epoch {epoch + 1}/{config.epochs}")
      pending = None

      def settle(pending):
        index, metrics, host_params = pending
        metrics = jax.device_get(metrics)
        if config.parallel == "pmap":
          metrics = jax.tree.map(lambda x: x[0], metrics)
        if not bool(metrics["finite"]):
          message = nonfinite_message(index, metrics, host_params)
          if config.nonfinite == "error":
            raise NonFiniteError(message + " Lower the learning rate or rho, or pass "
                                 "--nonfinite skip to skip such steps.")
          bar.write(f"skipped: {message}")
        sums.add(metrics)
        return metrics

      for batch_index, batch in enumerate(batches_lib.train_batches(
          train_split, config.batch_size, seed=config.seed, epoch=epoch,
          start_batch=start_batch), start=start_batch):
        tick = time.perf_counter()
        rng = jax.random.fold_in(step_key, step)
        device_state, metrics = step_fn(device_state, place_batch(batch), rng)
        if first_step_s is None:
          jax.block_until_ready(metrics["loss"])
          first_step_s = time.perf_counter() - tick
        # Settle the previous step's metrics while this one runs.
        if pending is not None:
          shown = settle(pending)
          bar.set_postfix(loss=f"{shown['loss']:.4f}",
                          img_s=f"{config.batch_size / max(time.perf_counter() - tick, 1e-9):.0f}")
        pending = (step + 1, metrics, state.params)  # 1-based: the update's number
        step += 1
        bar.update(1)
        if config.max_steps is not None and step >= config.max_steps:
          break
        every = config.checkpoint_every_steps
        if every and step % every == 0 and batch_index + 1 < steps_per_epoch:
          settle(pending)  # the sums saved must include this step
          pending = None
          checkpointer.save(step, to_host_state(device_state),
                            meta_for(epoch, batch_index + 1, sums))
      if pending is not None:
        settle(pending)
      bar.close()
      train_seconds = time.perf_counter() - epoch_start
      epoch_times.append(train_seconds / max(sums.steps - start_batch, 1))

      host_state = to_host_state(device_state)
      record = {
          "epoch": epoch + 1, "step": step, "lr": float(schedule(max(step - 1, 0))),
          **sums.means(), "skipped_steps": sums.skipped,
          "val": evaluate_split(eval_step, host_state, dataset["val"], dataset.task,
                                config.eval_batch_size),
          "test": evaluate_split(eval_step, host_state, dataset["test"], dataset.task,
                                 config.eval_batch_size),
          "train_seconds": train_seconds,
      }
      improved = _selection_value(record, config.select_by) > best["value"]
      if improved:
        best = {"value": _selection_value(record, config.select_by), "epoch": epoch + 1,
                "record": record}
        stale = 0
      else:
        stale += 1
      with metrics_path.open("a") as f:
        f.write(json.dumps(record) + "\n")
      log(f"epoch {epoch + 1}/{config.epochs}: train loss {record.get('train_loss', float('nan')):.4f}"
          f" | val auc {record['val']['auc']:.4f} acc {record['val']['acc']:.4f}"
          f" | test auc {record['test']['auc']:.4f} acc {record['test']['acc']:.4f}"
          + (" *" if improved else ""))
      sums, start_batch = _EpochSums(), 0
      done = epoch + 1 == config.epochs or (config.max_steps is not None and step >= config.max_steps)
      stop = config.early_stopping is not None and stale >= config.early_stopping
      if improved:
        checkpointer.save(step, host_state, meta_for(epoch + 1, 0, sums), best=True)
      if (epoch + 1) % config.checkpoint_every == 0 or done or stop:
        checkpointer.save(step, host_state, meta_for(epoch + 1, 0, sums))
      last_epoch = epoch + 1
      if stop:
        stopped_early = True
        log(f"early stopping: no improvement in {stale} epochs")
      if done or stop:
        break
  finally:
    checkpointer.close()

  records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
  results = {
      "config": config.to_dict(),
      "dataset": {"name": dataset.name, "task": dataset.task, "classes": list(dataset.class_names),
                  "sizes": {k: len(v) for k, v in dataset.splits.items()},
                  "image_shape": list(dataset.image_shape)},
      "versions": versions(),
      "device": device_info(),
      "selected_epoch": best["epoch"],
      "selected_by": f"val_{config.select_by}",
      "val": best["record"]["val"] if best["record"] else None,
      "test": best["record"]["test"] if best["record"] else None,
      "last_epoch": last_epoch,
      "stopped_early": stopped_early,
      "steps": step,
      "skipped_steps": int(sum(r.get("skipped_steps", 0) for r in records)),
      "time_per_step_s": statistics.median(epoch_times[1:] or epoch_times) if epoch_times else None,
      "first_step_s": first_step_s,
      "wall_seconds": time.perf_counter() - start_time,
  }
  (workdir / "results.json").write_text(json.dumps(results, indent=2))
  plot_curves(records, workdir / "curves.png", title=f"{dataset.name} {config.model} {config.optimizer}")
  return results


def _progress(config: TrainConfig):
  from tqdm.auto import tqdm

  def make(**kwargs):
    return tqdm(disable=not config.progress, leave=False, dynamic_ncols=True, unit="step", **kwargs)

  return make


def plot_curves(records: list[dict], path: pathlib.Path, title: str = "") -> None:
  """Train/val loss and val/test AUC per epoch, as a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker

  epochs = [r["epoch"] for r in records]
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
  left.plot(epochs, [r.get("train_loss", np.nan) for r in records], label="train")
  left.plot(epochs, [r["val"]["loss"] for r in records], label="val")
  left.set_xlabel("epoch"); left.set_ylabel("loss"); left.legend()
  right.plot(epochs, [r["val"]["auc"] for r in records], label="val")
  right.plot(epochs, [r["test"]["auc"] for r in records], label="test")
  right.set_xlabel("epoch"); right.set_ylabel("AUC"); right.legend()
  for axis in (left, right):
    axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
