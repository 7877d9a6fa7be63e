"""Run configuration: one plain dataclass, presets, files and overrides.

A run is fully described by a :class:`TrainConfig`; it is written to the
work directory as ``config.json`` and is the record of what was run.

Presets:

* ``medmnist``: the MedMNIST v2 benchmark protocol: ResNet-18 with the
  CIFAR stem (``resnet18_3d`` and batch 32 for 3D sets), Adam at 1e-3, batch
  128, 100 epochs, learning rate x0.1 at 50% and 75% of training, inputs in
  ``[−1, 1]``, no augmentation, the test score of the epoch with the best
  validation AUC.
* ``cpu``: the same protocol scaled to a 2-core CPU: ResNet-18 at width 1/4
  and 20 epochs; BreastMNIST takes a few minutes with SGD or SAM.

A config file is a ``.json`` object or a ``.py`` file whose ``get_config()``
returns a :class:`TrainConfig` or a dict; command-line options override it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import runpy
from typing import Any, Optional, Sequence, Union

from sam_jax import data as data_lib
from sam_jax.errors import one_line

PRESETS = ("medmnist", "cpu")
TUPLE_FIELDS = ("milestones", "split_ratios")


@dataclasses.dataclass
class TrainConfig:
  """Everything that defines a run. ``None`` means "the method's default"."""

  # Data.
  dataset: str = "breastmnist"          # a known name, a MedMNIST-format .npz, or a class-per-folder directory or zip
  data_dir: Optional[str] = None        # default: $SAM_JAX_DATA_DIR
  size: Optional[int] = None            # MedMNIST size (28, 64, ...) or folder resize
  download: bool = False                # fetch official MedMNIST files when missing
  num_classes: Optional[int] = None     # .npz: declare classes that have no training example
  # Image folders (your own, or busi/covid/...): how they become splits.
  channels: Optional[int] = None        # 1 (grayscale) or 3 (RGB); default: the preset's, RGB for yours
  split_ratios: tuple[float, ...] = (0.7, 0.1, 0.2)  # train/val/test, stratified by class
  split_seed: int = 0                   # the seed of that split
  split_file: Optional[str] = None      # JSON split: used if it exists, written if not
  duplicates: str = "drop"              # identical files: "drop", "keep" or "error"
  max_pixels: int = data_lib.folders.DEFAULT_MAX_PIXELS  # refuse images that decode larger (decompression bombs)
  augment: str = "none"                 # "none" or "standard"
  # Model.
  model: str = "resnet18"               # a registered model (sam-jax list models)
  width: float = 1.0                    # channel multiplier of ResNet/VGG (0.25: a quarter of the channels)
  patch_size: Optional[int] = None      # ViT patch side (default: the model's; 4-7 at 28 px)
  stem: Optional[str] = None            # ResNet: "cifar" or "imagenet"
  dtype: str = "float32"                # computation dtype: "float32" or "bfloat16"
  remat: bool = False                   # ResNet/ViT: recompute block activations in the backward pass (less memory)
  # Optimization.
  optimizer: str = "adam"               # sgd/adam/adamw, or a sharpness method (sam, asam, ...)
  base_optimizer: str = "adam"          # what a sharpness method wraps
  learning_rate: float = 1e-3           # peak learning rate
  momentum: float = 0.9                 # SGD momentum (PESG's too)
  nesterov: bool = False                # SGD with Nesterov momentum
  weight_decay: float = 0.0             # coupled L2 (adamw: decoupled)
  grad_clip: Optional[float] = None     # clip the direction by global norm
  schedule: str = "multistep"           # "constant", "multistep" or "cosine"
  milestones: tuple[float, ...] = (0.5, 0.75)# multistep: fractions of training at which the lr decays
  decay_factor: float = 0.1             # multistep: the lr is multiplied by this at each milestone
  warmup_epochs: float = 0.0            # linear warm-up from 0, in epochs
  label_smoothing: float = 0.0          # cross-entropy label smoothing
  # Objective: the loss and its hyperparameters (LibAUC's names and defaults).
  loss: str = "ce"                      # ce, weighted_ce, focal, aucm, aucm_v1, ap, pauc_cvar, pauc_kl, tpauc_kl
  margin: float = 1.0                   # AUC losses' margin m (PESG's too)
  surrogate: str = "squared_hinge"      # pairwise surrogate of the AP and pAUC losses
  imratio: Optional[float] = None       # aucm_v1's p; None: each batch's positive fraction
  ap_gamma: float = 0.9                 # AP: weight of the new batch estimate
  pauc_beta: float = 0.2                # pauc_cvar: FPR range [0, beta]
  pauc_eta: float = 0.1                 # pauc_cvar: step size of the thresholds s
  pauc_gamma: float = 0.9               # pauc_kl, tpauc_kl: moving-average weight
  pauc_lambda: float = 1.0              # pauc_kl, tpauc_kl: KL temperature
  tpauc_tau: float = 1.0                # tpauc_kl: temperature over positives
  focal_gamma: float = 2.0              # focal loss exponent
  libauc_code: bool = False             # LibAUC's code where it departs from its documented formulas
  # Deep AUC optimizers (pesg, soap, sopa, sopa_s); None keeps the optimizer's default.
  dam_mode: Optional[str] = None        # "sgd" or "adam"
  epoch_decay: Optional[float] = None   # pull toward the reference point
  clip_value: Optional[float] = None    # element-wise gradient clipping
  momentum_convention: str = "heavy_ball"  # PESG: or "libauc" (buf = (1-mu) buf + mu d)
  reset_reference: bool = True          # reference point := average iterate at each milestone
  init_from: Optional[str] = None       # start from another run's best weights (two-stage recipe)
  # Sharpness hyperparameters (paper names); None keeps the method's default.
  rho: Optional[float] = None           # radius of the perturbation (GSAM: rho_max)
  rho_min: Optional[float] = None       # GSAM: ρ follows the lr down to rho_min
  eta: Optional[float] = None           # ASAM
  alpha: Optional[float] = None         # GSAM, LookSAM
  gamma: Optional[float] = None         # WSAM, CR-SAM, ESAM (share of the batch)
  beta: Optional[float] = None          # CR-SAM, ESAM (chance a tensor is perturbed)
  sigma: Optional[float] = None         # F-SAM
  lmbda: Optional[float] = None         # F-SAM
  period: Optional[int] = None          # LookSAM: SAM every period steps
  threshold: Optional[float] = None     # AE-SAM: SAM when ‖g‖² ≥ μ + threshold·σ
  ema_decay: Optional[float] = None     # AE-SAM: decay of μ and σ²
  probability: Optional[float] = None   # randomized SAM (RST): chance of a SAM step
  adaptive: Optional[bool] = None       # SAM, GSAM, WSAM, F-SAM element-wise variants
  adaptive_perturbation: Optional[bool] = None  # GSAM: big_vision's |w|-scaled ball instead
  decouple: Optional[bool] = None       # WSAM
  # Sampling.
  sampler: str = "shuffle"              # "shuffle" or "dual" (a fixed share of positives per batch)
  sampling_rate: float = 0.5            # dual: share of positives in each batch
  sampler_task: int = 0                 # dual on multi-label data: the label that defines positives
  # Loop.
  epochs: int = 100                     # training epochs
  batch_size: int = 128                 # training batch (global: split across devices)
  accumulation_steps: int = 1           # micro-batches per step, in turn (less memory); SAM uses the batch's gradient
  eval_batch_size: int = 256            # largest evaluation batch; lowered to fit in memory
  memory_check: bool = True             # compile the steps first; stop if training cannot fit
  seed: int = 0                         # initialization, data order and augmentation
  select_by: str = "auc"                # model selection on val "auc" or "loss"
  early_stopping: Optional[int] = None  # patience in epochs
  max_steps: Optional[int] = None       # stop early (smoke runs)
  # Parallelism.
  parallel: str = "auto"                # "auto", "none", "sharded", "pmap" or "shard_map"
  perturbation: str = "per_device"      # or "synchronized"
  m_sharpness: int = 1                  # sub-batches with their own ε on one device
  # Robustness and records.
  nonfinite: str = "error"              # or "skip"
  checkpoint_every: int = 1             # epochs
  checkpoint_every_steps: Optional[int] = None  # also save inside epochs
  keep_checkpoints: int = 2             # last/ checkpoints kept
  tensorboard: bool = False             # event files in <workdir>/tensorboard (extra: sam_jax[tensorboard])
  progress: bool = True                 # progress bars (--no-progress for logs)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def replace(self, **changes: Any) -> "TrainConfig":
    unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ValueError(f"unknown config fields {sorted(unknown)}.")
    return dataclasses.replace(self, **changes)


def field_help() -> dict[str, str]:
  """Each field's comment in :class:`TrainConfig`'s source: the one place it is described
  (the ``--help`` of ``sam-jax train`` shows it). Empty when the source is not available."""
  import inspect
  import re

  try:
    source = inspect.getsource(TrainConfig)
  except (OSError, TypeError):
    return {}
  found = re.findall(r"^\s+(\w+): [^#\n]*?#\s*(.+)$", source, flags=re.M)
  return {name: text.strip() for name, text in found}


def from_dict(values: dict[str, Any]) -> TrainConfig:
  fields = {f.name for f in dataclasses.fields(TrainConfig)}
  unknown = set(values) - fields
  if unknown:
    raise ValueError(f"unknown config fields {sorted(unknown)}; known: {sorted(fields)}.")
  values = dict(values)
  for field in dataclasses.fields(TrainConfig):
    if field.name in values:
      values[field.name] = _checked(field, values[field.name])
  return TrainConfig(**values)


def field_kind(field: dataclasses.Field) -> type:
  """bool, float, int, str or tuple, from a field's annotation (a string here)."""
  text = str(field.type)
  for kind in (tuple, bool, float, int):
    if kind.__name__ in text:
      return kind
  return str


def _checked(field: dataclasses.Field, value: Any) -> Any:
  """``value`` if it has the field's type (ints pass for floats, lists for tuples)."""
  kind = field_kind(field)
  if value is None and "Optional" in str(field.type):
    return None
  if kind is tuple and isinstance(value, (list, tuple)) and all(
      isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
    return tuple(value)
  if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value)
  if kind in (int, str) and isinstance(value, kind) and not isinstance(value, bool):
    return value
  if kind is bool and isinstance(value, bool):
    return value
  wanted = "a list of numbers" if kind is tuple else f"a {kind.__name__}"
  raise ValueError(f"config field {field.name} must be {wanted}"
                   f"{' or null' if 'Optional' in str(field.type) else ''}, got {value!r}.")


def preset(name: str, dataset: str = "breastmnist") -> TrainConfig:
  """A named preset for ``dataset`` (3D sets get the 3D model and batch 32)."""
  three_d = not dataset.endswith(".npz") and dataset.lower() in data_lib.medmnist.INFO \
      and data_lib.spatial_dims_of(dataset) == 3
  base = TrainConfig(
      dataset=dataset,
      model="resnet18_3d" if three_d else "resnet18",
      optimizer="adam", base_optimizer="adam", learning_rate=1e-3,
      batch_size=32 if three_d else 128, epochs=100, schedule="multistep",
      milestones=(0.5, 0.75), decay_factor=0.1, augment="none", select_by="auc",
  )
  if name == "medmnist":
    return base
  if name == "cpu":
    return base.replace(width=0.25, epochs=20)
  raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}.")


def load_file(path: Union[str, pathlib.Path]) -> TrainConfig:
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"config file not found: {path}")
  if path.suffix == ".json":
    try:
      values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
      raise ValueError(f"config file {path} is not valid JSON: {error.msg} (line {error.lineno}, "
                       f"column {error.colno}).") from None
    if not isinstance(values, dict):
      raise ValueError(f"config file {path} must hold a JSON object, got {type(values).__name__}.")
    return from_dict(values)
  if path.suffix == ".py":
    # A .py config is executed code; its errors are the file's, named as such.
    try:
      namespace = runpy.run_path(str(path))
    except Exception as error:
      raise ValueError(f"config file {path} raised {describe_file_error(error, path)}") from None
    if "get_config" not in namespace:
      raise ValueError(f"{path} must define get_config() returning a TrainConfig or a dict.")
    try:
      value = namespace["get_config"]()
    except Exception as error:
      raise ValueError(f"get_config() in {path} raised {describe_file_error(error, path)}") from None
    return value if isinstance(value, TrainConfig) else from_dict(dict(value))
  raise ValueError(f"config files are .json or .py, got {path.name}.")


def describe_file_error(error: Exception, path: pathlib.Path) -> str:
  """``Type: message (line N)``: the innermost line of ``path`` in the traceback."""
  import traceback

  lines = [f.lineno for f in traceback.extract_tb(error.__traceback__)
           if pathlib.Path(f.filename).resolve() == path.resolve()]
  if isinstance(error, SyntaxError) and error.lineno:
    lines.append(error.lineno)
  where = f" (line {lines[-1]})" if lines else ""
  return one_line(error) + where


# Fields that do not change what a run computes: where the data is read from,
# how often it is saved, how evaluation is batched, what is shown, whether
# activations are recomputed (rematerialization).
RECORD_FIELDS = ("progress", "eval_batch_size", "memory_check", "checkpoint_every", "checkpoint_every_steps",
                 "keep_checkpoints", "data_dir", "download", "tensorboard", "remat")
# Fields a resumed run may change besides those: it may be trained for longer.
RESUMABLE_CHANGES = RECORD_FIELDS + ("epochs", "max_steps")


def config_differences(saved: dict[str, Any], given: dict[str, Any],
                       ignore: Sequence[str] = RECORD_FIELDS) -> dict[str, tuple[Any, Any]]:
  """``{field: (saved, given)}`` for the fields of ``given`` that differ from a run's saved
  config, apart from ``ignore``. A field the saved config lacks (it predates the field)
  counts as its default."""
  defaults = TrainConfig().to_dict()
  return {k: (saved.get(k, defaults.get(k)), v) for k, v in given.items()
          if k not in ignore
          and _comparable(k, saved.get(k, defaults.get(k))) != _comparable(k, v)}


def describe_differences(differences: dict[str, tuple[Any, Any]], now: str = "given",
                         limit: int = 6) -> str:
  """``field (run: a, given: b), ...``: a one-line summary of :func:`config_differences`."""
  parts = [f"{k} (run: {a!r}, {now}: {b!r})" for k, (a, b) in sorted(differences.items())]
  more = f" and {len(parts) - limit} more" if len(parts) > limit else ""
  return ", ".join(parts[:limit]) + more


def check_resume_changes(saved: TrainConfig, overrides: dict[str, Any]) -> None:
  """Refuses to resume with options that differ from the run's own, except harmless ones."""
  bad = config_differences(saved.to_dict(), overrides, ignore=RESUMABLE_CHANGES)
  if bad:
    raise ValueError(f"--resume continues the run as it was configured; these options differ: "
                     f"{describe_differences(bad)}. Start a new work directory to change them "
                     f"(fields that may change on resume: {', '.join(RESUMABLE_CHANGES)}).")


def check_saved_config(workdir: str | pathlib.Path, config: TrainConfig) -> None:
  """Refuses to continue the run in ``workdir`` with a config other than its own
  ``config.json`` (apart from :data:`RESUMABLE_CHANGES`): a resumed run would mix the two."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.is_file():
    return
  try:
    saved = json.loads(path.read_text())
  except (OSError, ValueError) as error:
    raise ValueError(f"{path} does not read as a run's config ({error}); move the run away "
                     "or choose a new work directory.") from None
  bad = config_differences(saved, config.to_dict(), ignore=RESUMABLE_CHANGES)
  if bad:
    raise ValueError(f"{workdir} holds a run configured differently: {describe_differences(bad)}."
                     " Resume it with its own config, or choose a new work directory.")


# Values that compute the same run: the parallel modes with one device's math
# (a run saved as "none" or "sharded" matches a config giving "auto").
SAME_COMPUTATION = {"parallel": {"auto": "none", "sharded": "none"}}


def _comparable(field: str, value: Any) -> Any:
  if isinstance(value, (tuple, list)):
    return list(value)
  return SAME_COMPUTATION.get(field, {}).get(value, value) if isinstance(value, str) else value
