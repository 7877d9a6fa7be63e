"""Evaluation of a split, and the tracker of the best epoch and early stopping."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import numpy as np

from sam_jax.data import batches as batches_lib
from sam_jax.data import dataset as ds
from sam_jax.train import metrics as metrics_lib


def evaluate_split(eval_step: Callable, state: Any, split: ds.Split, task: str,
                   batch_size: int) -> dict:
  """MedMNIST-evaluator metrics of ``state`` on a whole split, plus the mean loss."""
  return evaluate_split_runs(eval_step, state, split, task, batch_size, num_runs=None)[0]


def evaluate_split_runs(eval_step: Callable, state: Any, split: ds.Split, task: str,
                        batch_size: int, num_runs: Optional[int]) -> list[dict]:
  """:func:`evaluate_split` for each of ``num_runs`` stacked states.

  With ``num_runs`` set, ``eval_step`` is vmapped over the runs and returns
  ``(num_runs, batch, ...)`` (see :mod:`sam_jax.train.seeds`); with ``None``
  it is the plain step and one result comes back.
  """
  scores, losses = [], []
  for batch in batches_lib.eval_batches(split, batch_size):
    out = jax.device_get(eval_step(state, batch))
    valid = batch["mask"]
    scores.append(out["scores"][..., valid, :])
    losses.append(out["loss"][..., valid])
  scores, losses = np.concatenate(scores, axis=-2), np.concatenate(losses, axis=-1)
  if num_runs is None:
    scores, losses = scores[None], losses[None]
  results = []
  for run_scores, run_losses in zip(scores, losses):
    result = metrics_lib.evaluate(task, split.labels, run_scores)
    result["loss"] = float(np.mean(run_losses))
    results.append(result)
  return results


def selection_value(record: dict, select_by: str) -> float:
  """Higher is better: val AUC, or minus val loss; undefined counts as worst."""
  value = record["val"]["auc"] if select_by == "auc" else -record["val"]["loss"]
  return -math.inf if value is None or np.isnan(value) else value


@dataclasses.dataclass
class Selection:
  """The best epoch so far (MedMNIST protocol: best validation metric) and patience.

  Saved in checkpoints through :meth:`to_meta` / :meth:`from_meta`.
  """

  select_by: str = "auc"
  patience: Optional[int] = None
  value: float = -math.inf
  epoch: Optional[int] = None
  record: Optional[dict] = None
  stale: int = 0

  def update(self, record: dict) -> bool:
    """Takes an epoch's record; returns whether it is the new best."""
    value = selection_value(record, self.select_by)
    if value > self.value:
      self.value, self.epoch, self.record, self.stale = value, record["epoch"], record, 0
      return True
    self.stale += 1
    return False

  @property
  def should_stop(self) -> bool:
    return self.patience is not None and self.stale >= self.patience

  def to_meta(self) -> dict:
    return {"best": {"value": None if self.value == -math.inf else self.value,
                     "epoch": self.epoch, "record": self.record},
            "stale": self.stale}

  @classmethod
  def from_meta(cls, meta: dict, select_by: str, patience: Optional[int]) -> "Selection":
    best = meta["best"]
    value = -math.inf if best["value"] is None else best["value"]
    return cls(select_by, patience, value, best["epoch"], best["record"], meta["stale"])
