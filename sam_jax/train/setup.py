"""Set-up: from a config to the pieces a run needs (data, model, objective, optimizer, state).

Each function here does one thing and raises ``ValueError`` naming the option
at fault; :func:`build` wires them into a :class:`Run`. Nothing here trains.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import pathlib
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sam_jax import auc, models
from sam_jax import data as data_lib
from sam_jax.data import augment as augment_lib
from sam_jax.data import batches as batches_lib
from sam_jax.data import dataset as ds
from sam_jax.errors import one_line
from sam_jax.train import config as config_lib
from sam_jax.train import objectives, optim, parallel
from sam_jax.train.checkpoint import Checkpointer
from sam_jax.train.config import TrainConfig
from sam_jax.train.optim import build_optimizer, check_names
from sam_jax.train.state import TrainState, create_train_state, for_evaluation
from sam_jax.train.step import NONFINITE_POLICIES, PERTURBATIONS

PARALLEL_MODES = ("auto", "none", "sharded", "pmap", "shard_map")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
SAMPLERS = ("shuffle", "dual")
# Config fields with a fixed set of values, checked here and listed by --help
# (sam_jax.catalog adds the registries: optimizers, models, losses, ...).
FIELD_CHOICES = {"parallel": PARALLEL_MODES, "dtype": tuple(DTYPES),
                 "duplicates": data_lib.folders.DUPLICATE_POLICIES,
                 "augment": ("none", "standard"), "select_by": ("auc", "loss"),
                 "perturbation": PERTURBATIONS, "nonfinite": NONFINITE_POLICIES,
                 "sampler": SAMPLERS, "momentum_convention": ("heavy_ball", "libauc")}


def load_data(config: TrainConfig) -> ds.Dataset:
  """The dataset ``config.dataset`` names: a known name, an ``.npz``, or a folder or zip path."""
  name = config.dataset
  if name.lower().endswith(".npz"):
    return data_lib.medmnist.load(name, num_classes=config.num_classes)
  if config.num_classes is not None:
    raise ValueError("num_classes applies to .npz datasets; a folder's classes are its folders.")
  if is_folder_path(name):
    path = pathlib.Path(name)
    spec = data_lib.folders.FolderSpec(name=path.stem or path.resolve().name)
    return data_lib.folders.load_folder(path, spec, size=config.size, **folder_options(config))
  if name.lower() in data_lib.folders.PRESETS:
    return data_lib.load_dataset(name, config.data_dir, size=config.size,
                                 **folder_options(config))
  if config.channels is not None:
    raise ValueError(f"channels applies to image folders; {name} comes with its own.")
  return data_lib.load_dataset(name, config.data_dir, size=config.size,
                               download=config.download)


def data_warnings(dataset: ds.Dataset) -> list[str]:
  """What a user should know about the data before trusting a score on it."""
  duplicates = dataset.meta.get("duplicates") or {}
  cross = duplicates.get("cross_split") or []
  if not cross:
    return []
  return [f"warning: {len(cross)} group(s) of identical images lie in different splits of "
          f"{dataset.name} (duplicates policy {duplicates.get('policy')!r}, from the split "
          "file): test scores may be optimistic; use duplicates='drop' or fix the split."]


def is_folder_path(dataset: str) -> bool:
  """Whether ``--dataset`` names a directory or zip of images rather than a known set."""
  if dataset.lower() in data_lib.DATASETS:
    return False
  return dataset.lower().endswith(".zip") or "/" in dataset or pathlib.Path(dataset).is_dir()


def folder_options(config: TrainConfig) -> dict[str, Any]:
  """``load_folder``'s options from the config (channels, splits, duplicates, pixel cap)."""
  if config.channels not in (None, 1, 3):
    raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {config.channels}.")
  mode = {None: None, 1: "L", 3: "RGB"}[config.channels]
  return dict(mode=mode, ratios=config.split_ratios, seed=config.split_seed,
              split_file=config.split_file, duplicates=config.duplicates,
              max_pixels=config.max_pixels)


def check_config(config: TrainConfig) -> None:
  """Raises ``ValueError`` naming every option that cannot work (before any data is read)."""
  config_lib.from_dict(config.to_dict())  # every field of its type (a .py config may not be)
  check_names(config)
  models.model_entry(config.model)
  for field, allowed in FIELD_CHOICES.items():
    if getattr(config, field) not in allowed:
      raise ValueError(f"{field} must be one of {allowed}, got {getattr(config, field)!r}.")
  if config.tensorboard:
    import importlib.util
    if importlib.util.find_spec("tensorboardX") is None:
      raise ValueError("--tensorboard needs tensorboardX: pip install 'sam_jax[tensorboard]' "
                       "(or pip install tensorboardX).")
  ratios = config.split_ratios
  if len(ratios) != 3 or not all(r >= 0 for r in ratios) or not abs(sum(ratios) - 1) < 1e-6:
    raise ValueError(f"split_ratios are the train, val and test fractions (three, >= 0, "
                     f"summing to 1), got {list(ratios)}.")
  if config.num_classes is not None and config.num_classes < 2:
    raise ValueError(f"num_classes must be >= 2, got {config.num_classes}.")
  if config.max_pixels < 1:
    raise ValueError(f"max_pixels must be >= 1, got {config.max_pixels}.")
  if config.checkpoint_every_steps is not None and config.checkpoint_every_steps < 1:
    raise ValueError(f"checkpoint_every_steps must be >= 1, got {config.checkpoint_every_steps}.")
  positive = {"epochs": config.epochs, "batch_size": config.batch_size,
              "eval_batch_size": config.eval_batch_size, "m_sharpness": config.m_sharpness,
              "accumulation_steps": config.accumulation_steps,
              "learning_rate": config.learning_rate, "pauc_lambda": config.pauc_lambda,
              "tpauc_tau": config.tpauc_tau}
  for field, value in positive.items():
    if not value > 0:
      raise ValueError(f"{field} must be > 0, got {value}.")
  unit = {"ap_gamma": config.ap_gamma, "pauc_gamma": config.pauc_gamma,
          "pauc_beta": config.pauc_beta}
  for field, value in unit.items():
    if not 0 < value <= 1:
      raise ValueError(f"{field} must be in (0, 1], got {value}.")
  if not config.margin >= 0:
    raise ValueError(f"margin must be >= 0, got {config.margin}.")
  if config.sampler == "dual" and not 0 < config.sampling_rate < 1:
    raise ValueError(f"sampling_rate must be in (0, 1), got {config.sampling_rate}.")
  if config.parallel in ("pmap", "shard_map", "sharded") and config.m_sharpness > 1:
    raise ValueError("m_sharpness > 1 splits the batch on one device; with parallel "
                     f"{config.parallel!r} each device's batch already sets m.")
  if config.batch_size % config.m_sharpness:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by m_sharpness "
                     f"{config.m_sharpness}.")
  if config.batch_size % (config.m_sharpness * config.accumulation_steps):
    raise ValueError(f"batch_size {config.batch_size} does not split into accumulation_steps "
                     f"{config.accumulation_steps} micro-batches"
                     + (f" of each of the m_sharpness {config.m_sharpness} sub-batches"
                        if config.m_sharpness > 1 else "") + ".")
  if config.optimizer == "esam" and _esam_gamma(config) < 1:
    if config.loss not in objectives.EXAMPLE_LOSSES:
      raise ValueError(f"esam with gamma < 1 ranks examples by their own loss, which loss "
                       f"{config.loss!r} has not (it is not a mean over examples); use "
                       f"--loss {' or '.join(objectives.EXAMPLE_LOSSES)}, or --gamma 1.")
    if config.accumulation_steps > 1:
      raise ValueError("esam with gamma < 1 selects examples from the whole batch, which "
                       "accumulation_steps > 1 never holds at once; use --accumulation-steps 1 "
                       "or --gamma 1.")


def _esam_gamma(config: TrainConfig) -> float:
  if config.gamma is not None:
    return config.gamma
  return inspect.signature(optim.METHODS["esam"]).parameters["gamma"].default


def check_against_data(config: TrainConfig, dataset: ds.Dataset) -> None:
  """The checks that need the dataset: loss vs task, batch vs size, sampler vs labels."""
  objectives.check_loss(config.loss, dataset.task, dataset.name)
  for split in ("train", "val", "test"):
    if split not in dataset.splits or not len(dataset[split]):
      raise ValueError(f"the {split} split of {dataset.name} is empty: training selects on val "
                       "and reports test, so every split needs examples (for an image folder, "
                       "see split_ratios).")
  if config.channels is not None and dataset.image_shape[-1] != config.channels:
    raise ValueError(f"channels {config.channels} asked for, but {dataset.name} has "
                     f"{dataset.image_shape[-1]}-channel images.")
  train = dataset["train"]
  if config.batch_size > len(train):
    raise ValueError(f"batch size {config.batch_size} is larger than the {len(train)} "
                     f"training examples of {dataset.name}.")
  if config.sampler == "dual":
    if dataset.task not in (ds.BINARY, ds.MULTILABEL):
      raise ValueError(f"the dual sampler balances positives and negatives; {dataset.name} is "
                       f"{dataset.task}.")
    batches_lib.num_dual_batches(train.labels, config.batch_size, config.sampling_rate,
                                 config.sampler_task)


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
  if config.remat:
    kwargs["remat"] = True
  try:
    return models.create_model(config.model, dataset.num_classes, **kwargs)
  except TypeError as error:
    raise ValueError(f"model {config.model!r} does not take one of {sorted(kwargs)}: {error}") \
        from None


def build_objective(config: TrainConfig, dataset: ds.Dataset) -> objectives.Objective:
  """The training objective named by ``config.loss``, sized for the training split."""
  task, train = dataset.task, dataset["train"]
  n = len(train)
  pair = dict(margin=config.margin, surrogate=config.surrogate)
  if config.loss == "ce":
    return objectives.cross_entropy(task, config.label_smoothing)
  if config.loss == "weighted_ce":
    return objectives.weighted_ce(auc.balanced_class_weights(train.labels, dataset.num_classes))
  if config.loss == "focal":
    return objectives.focal(config.focal_gamma)
  if config.loss in ("aucm", "aucm_v1"):
    return objectives.aucm(
        task, train.labels.shape[1] if task == ds.MULTILABEL else None, margin=config.margin,
        version="v2" if config.loss == "aucm" else "v1", imratio=config.imratio,
        libauc_v2_negative_mean=config.libauc_code)
  if config.loss == "ap":
    return objectives.ap(task, n, gamma=config.ap_gamma, **pair)
  if config.loss == "pauc_cvar":
    return objectives.pauc_cvar(
        task, n, beta=config.pauc_beta, eta=config.pauc_eta,
        num_positives=None if config.libauc_code else objectives.positive_count(train.labels),
        **pair)
  if config.loss == "pauc_kl":
    return objectives.pauc_kl(task, n, gamma=config.pauc_gamma, lmbda=config.pauc_lambda, **pair)
  return objectives.tpauc_kl(task, n, tau=config.tpauc_tau, lmbda=config.pauc_lambda,
                             gammas=(config.pauc_gamma, config.pauc_gamma), **pair)


def augment_config(config: TrainConfig, spatial_dims: int) -> augment_lib.AugmentConfig:
  if config.augment == "none":
    return augment_lib.AugmentConfig()
  if spatial_dims == 3:
    return augment_lib.AugmentConfig.standard_3d()
  return augment_lib.AugmentConfig.standard_2d()


# ----------------------------------------------------------------------------
# Batches.


def steps_per_epoch(config: TrainConfig, train: ds.Split) -> int:
  if config.sampler == "dual":
    return batches_lib.num_train_batches(train, config.batch_size, sampler="dual",
                                         sampling_rate=config.sampling_rate,
                                         sampler_task=config.sampler_task)
  return batches_lib.num_train_batches(train, config.batch_size)


def train_batches(config: TrainConfig, train: ds.Split, epoch: int,
                  start_batch: int = 0) -> Iterator[dict]:
  """The batches of ``epoch`` from ``start_batch`` on (a function of seed and epoch)."""
  if config.sampler != "dual":
    return batches_lib.train_batches(train, config.batch_size, seed=config.seed, epoch=epoch,
                                     start_batch=start_batch)
  batches = batches_lib.train_batches(train, config.batch_size, seed=config.seed, epoch=epoch,
                                      sampler="dual", sampling_rate=config.sampling_rate,
                                      sampler_task=config.sampler_task, start_batch=start_batch)
  # Every device (or m-sharpness sub-batch) gets both classes.
  parts = parallel.device_count(config.parallel) * config.m_sharpness
  return (batches_lib.interleave(batch, parts) for batch in batches)


# ----------------------------------------------------------------------------
# Restoring another run (evaluation, --init-from).


@dataclasses.dataclass
class RestoredRun:
  config: TrainConfig
  state: TrainState
  meta: dict
  apply_fn: Callable
  step: int


def read_run_config(workdir: str | pathlib.Path) -> TrainConfig:
  saved = pathlib.Path(workdir) / "config.json"
  if not saved.is_file():
    raise FileNotFoundError(f"{workdir} is not a run directory (no config.json).")
  return config_lib.from_dict(json.loads(saved.read_text()))


def restore_run(workdir: str | pathlib.Path, dataset: ds.Dataset, *, which: str = "best",
                config: Optional[TrainConfig] = None) -> RestoredRun:
  """A saved run's state, rebuilt from its ``config.json`` for ``dataset``, with the
  weights to evaluate (:func:`~sam_jax.train.state.for_evaluation`)."""
  workdir = pathlib.Path(workdir)
  config = config or read_run_config(workdir)
  # Rematerialization only matters for training, and its custom VJP has no
  # forward mode (the landscape tools' Hessian-vector products need one).
  model = build_model(config.replace(remat=False), dataset)
  apply_fn, params, model_state = models.from_linen(model, jax.random.key(0),
                                                    dataset["train"].images[:1])
  batch = min(config.batch_size, len(dataset["train"]))
  tx, _ = build_optimizer(config.replace(batch_size=batch),
                          batches_lib.num_train_batches(dataset["train"], batch))
  template = create_train_state(params, model_state, tx, build_objective(config, dataset))
  checkpointer = Checkpointer(workdir / "checkpoints", config.keep_checkpoints)
  try:
    step = checkpointer.latest_step(which)
    if step is None:
      raise FileNotFoundError(f"no {which} checkpoint under {workdir / 'checkpoints'}.")
    try:
      state, meta = checkpointer.restore(template, which)
    except Exception as error:  # orbax raises many kinds: damaged files, other shapes
      reason = one_line(error)
      raise ValueError(f"the {which} checkpoint {workdir / 'checkpoints' / which / str(step)} does "
                       f"not restore for {dataset.name} ({dataset.num_classes} classes, images "
                       f"{dataset.image_shape}): it is damaged or from other data ({reason}).") \
          from None
  finally:
    checkpointer.close()
  return RestoredRun(config, for_evaluation(state), meta, apply_fn, step)


def _describe(config: TrainConfig) -> str:
  return f"{config.model} width {config.width}"


def initial_state(config: TrainConfig, dataset: ds.Dataset, tx: optax.GradientTransformation,
                  objective: objectives.Objective, init_key: jax.Array):
  """``(apply_fn, state)``: fresh weights, or another run's best (``init_from``)."""
  model = build_model(config, dataset)
  apply_fn, params, model_state = models.from_linen(model, init_key, dataset["train"].images[:1])
  if config.init_from:
    source = restore_run(config.init_from, dataset)
    loaded = objectives.model_params(source.state.params)
    same = (jax.tree.structure(loaded) == jax.tree.structure(params) and all(
        np.shape(a) == np.shape(b) for a, b in zip(jax.tree.leaves(loaded),
                                                   jax.tree.leaves(params))))
    if not same:
      raise ValueError(f"init_from: {config.init_from} holds a {_describe(source.config)} "
                       f"model; this run builds a {_describe(config)} one.")
    params, model_state = loaded, source.state.model_state
  return apply_fn, create_train_state(params, model_state, tx, objective)
