"""What the library offers by name, from the registries the code itself uses.

``choices()`` gives the allowed values of the config fields that name things
(the ``--help`` of ``sam-jax train`` lists them); ``describe(kind)`` gives one
line per optimizer, model, dataset or loss (``sam-jax list``).
"""

from __future__ import annotations

import inspect
from typing import Callable

KINDS = ("optimizers", "models", "datasets", "losses")


def choices() -> dict[str, tuple[str, ...]]:
  """Config field -> its allowed values (fields that name a registered thing)."""
  from sam_jax import models
  from sam_jax.train import objectives, optim, setup

  return {
      "optimizer": optim.OPTIMIZERS,
      "base_optimizer": optim.BASE_OPTIMIZERS,
      "model": tuple(models.MODELS),
      "schedule": optim.SCHEDULES,
      "loss": tuple(objectives.LOSSES),
      **setup.FIELD_CHOICES,
      "stem": ("cifar", "imagenet"),
  }


def _first_line(fn: Callable) -> str:
  import re

  doc = inspect.getdoc(fn) or ""
  line = doc.splitlines()[0].rstrip(".") if doc else ""
  return re.sub(r":\w+:`~?([^`]*)`", r"\1", line).replace("``", "")


def _defaults(fn: Callable) -> str:
  shown = []
  for name, parameter in inspect.signature(fn).parameters.items():
    value = parameter.default
    if value is inspect.Parameter.empty or callable(value) or value is None:
      continue
    if isinstance(value, (int, float, bool, str)):
      shown.append(f"{name}={value}")
  return ", ".join(shown)


def describe(kind: str) -> list[str]:
  """One line per registered ``kind`` (``optimizers``, ``models``, ``datasets``, ``losses``)."""
  if kind == "optimizers":
    from sam_jax.train import optim

    lines = ["sgd: SGD with momentum (--momentum, --nesterov)", "adam: Adam",
             "adamw: Adam with decoupled weight decay"]
    for name, factory in {**optim.DAM_OPTIMIZERS, **optim.METHODS}.items():
      role = ("wraps --base-optimizer; " if name in optim.SHARPNESS_METHODS else
              "after --base-optimizer; " if name in optim.AFTER_BASE_METHODS else "")
      lines.append(f"{name}: {_first_line(factory)} ({role}{_defaults(factory)})")
    return lines
  if kind == "models":
    from sam_jax import models

    return [f"{name}: {entry.description}, {entry.spatial_dims}D inputs"
            for name, entry in models.MODELS.items()]
  if kind == "datasets":
    from sam_jax.data import folders, medmnist

    lines = []
    for flag, info in medmnist.INFO.items():
      n = info.n_samples
      lines.append(
          f"{flag}: MedMNIST, {info.task}, {len(info.labels)} "
          f"{'labels' if info.task == 'multilabel' else 'classes'}, {info.n_channels} channel(s), "
          f"sizes {', '.join(map(str, info.sizes))}, train/val/test {n['train']}/{n['val']}/"
          f"{n['test']}; file {info.filename(28)} (or _<size>) in --data-dir or its medmnist/")
    for name, spec in folders.PRESETS.items():
      classes = ", ".join(spec.class_folders or ())
      lines.append(f"{name}: image folders, classes {classes}; looked for in --data-dir as "
                   f"{' or '.join(spec.locations)}")
    lines.append("PATH: your own .npz (MedMNIST layout), or a class-per-folder directory or zip")
    return lines
  if kind == "losses":
    from sam_jax.train import objectives

    return [f"{name}: tasks {', '.join(tasks)}" for name, tasks in objectives.LOSSES.items()]
  raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}.")
