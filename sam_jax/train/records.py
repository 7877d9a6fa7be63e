"""What a run writes in its work directory, besides checkpoints.

* ``config.json``: the configuration (the record of what was run);
* ``metrics.jsonl``: one JSON line per epoch;
* ``results.json``: configuration, versions, device, the selected epoch's
  val and test metrics, timings;
* ``curves.png``: train/val loss and val/test AUC per epoch.
"""

from __future__ import annotations

import importlib.metadata
import json
import pathlib
import platform
import statistics
import sys
from typing import Any, Optional

import jax
import numpy as np


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


class EpochLog:
  """``metrics.jsonl``: appended once per epoch, cut back on resume.

  ``write=False`` keeps the records in memory only (the processes of a
  multi-process run other than process 0, which writes the file).
  """

  def __init__(self, workdir: pathlib.Path, write: bool = True):
    self.path = workdir / "metrics.jsonl"
    self.write = write
    self.kept: list[dict] = []

  def start(self) -> None:
    if self.write:
      self.path.write_text("")

  def truncate(self, epochs_done: int) -> None:
    """Drops the records of epochs after the checkpoint (1-based epoch numbers)."""
    if not self.write or not self.path.exists():
      return
    lines = [line for line in self.path.read_text().splitlines()
             if line.strip() and json.loads(line)["epoch"] <= epochs_done]
    self.path.write_text("".join(line + "\n" for line in lines))

  def append(self, record: dict) -> None:
    if not self.write:
      self.kept.append(record)
      return
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")

  def read(self) -> list[dict]:
    if not self.write:
      return list(self.kept)
    return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def epoch_record(epoch: int, step: int, lr: float, sums: Any, val: dict, test: dict,
                 train_seconds: float) -> dict:
  """One line of ``metrics.jsonl`` (``epoch`` 1-based; ``sums`` an ``EpochSums``)."""
  return {"epoch": epoch, "step": step, "lr": lr, **sums.means(),
          "skipped_steps": sums.skipped, "val": val, "test": test,
          "train_seconds": train_seconds}


def epoch_line(record: dict, epochs: int, improved: bool) -> str:
  """The one-line summary of an epoch the loop prints."""
  return (f"epoch {record['epoch']}/{epochs}: train loss {record.get('train_loss', float('nan')):.4f}"
          f" | val auc {record['val']['auc']:.4f} acc {record['val']['acc']:.4f}"
          f" | test auc {record['test']['auc']:.4f} acc {record['test']['acc']:.4f}"
          + (" *" if improved else ""))


def run_results(config: Any, dataset: Any, objective: str, selection: Any, epochs: list[dict], *,
                last_epoch: int, stopped_early: bool, steps: int, steps_per_epoch: int,
                epoch_times: list[float], first_step_s: Optional[float],
                wall_seconds: float) -> dict:
  """``results.json``: what was run, where, and the selected epoch's val/test metrics."""
  best = selection.record
  return {
      "config": config.to_dict(),
      "dataset": {"name": dataset.name, "task": dataset.task, "classes": list(dataset.class_names),
                  "sizes": {k: len(v) for k, v in dataset.splits.items()},
                  "image_shape": list(dataset.image_shape)},
      "objective": objective,
      "versions": versions(),
      "device": device_info(),
      "selected_epoch": selection.epoch,
      "selected_by": f"val_{selection.select_by}",
      "val": best["val"] if best else None,
      "test": best["test"] if best else None,
      "last_epoch": last_epoch,
      "stopped_early": stopped_early,
      "steps": steps,
      "steps_per_epoch": steps_per_epoch,
      "skipped_steps": int(sum(r.get("skipped_steps", 0) for r in epochs)),
      "time_per_step_s": statistics.median(epoch_times[1:] or epoch_times) if epoch_times else None,
      "first_step_s": first_step_s,
      "wall_seconds": wall_seconds,
  }


def write_json(path: pathlib.Path, value: Any) -> None:
  path.write_text(json.dumps(value, indent=2))


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
  left.set_xlabel("epoch")
  left.set_ylabel("loss")
  left.legend()
  right.plot(epochs, [r["val"]["auc"] for r in records], label="val")
  right.plot(epochs, [r["test"]["auc"] for r in records], label="test")
  right.set_xlabel("epoch")
  right.set_ylabel("AUC")
  right.legend()
  for axis in (left, right):
    axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def progress_bars(enabled: bool, stream=None):
  """``make(total=..., desc=...)`` -> a tqdm bar on ``stream`` (stderr).

  Disabled when not ``enabled``, and when the stream is not a terminal (a log
  file, CI): there the carriage-return frames would pile up, and the loop's
  one line per epoch is the progress.
  """
  import sys

  from tqdm.auto import tqdm

  stream = sys.stderr if stream is None else stream
  interactive = enabled and hasattr(stream, "isatty") and stream.isatty()

  def make(**kwargs):
    return tqdm(disable=not interactive, leave=False, dynamic_ncols=True, unit="step",
                file=stream, **kwargs)

  return make
