"""Re-evaluating a saved run: ``sam-jax eval WORKDIR``."""

from __future__ import annotations

import pathlib
from typing import Optional, Sequence

import jax

from sam_jax.data import augment as augment_lib
from sam_jax.train import setup
from sam_jax.train.losses import loss_for_task
from sam_jax.train.selection import evaluate_split
from sam_jax.train.step import make_eval_step


def evaluate_checkpoint(
    workdir: str | pathlib.Path,
    *,
    dataset: Optional[str] = None,
    data_dir: Optional[str] = None,
    splits: Sequence[str] = ("val", "test"),
    which: str = "best",
) -> dict:
  """Metrics of a run's ``best`` (or ``last``) checkpoint on ``splits``.

  The model, objective and optimizer are rebuilt from the run's
  ``config.json``; ``dataset`` and ``data_dir`` may point at another copy or
  another dataset of the same classes and image shape.
  """
  workdir = pathlib.Path(workdir)
  config = setup.read_run_config(workdir)
  changes = {k: v for k, v in (("dataset", dataset), ("data_dir", data_dir)) if v is not None}
  config = config.replace(**changes)
  data = setup.load_data(config)
  run = setup.restore_run(workdir, data, which=which, config=config)
  augment_fn = augment_lib.augment_fn(setup.augment_config(config, data.spatial_dims))
  eval_step = jax.jit(make_eval_step(run.apply_fn, loss_for_task(data.task), task=data.task,
                                     augment_fn=augment_fn))
  out = {"workdir": str(workdir), "checkpoint": which, "step": int(run.state.step),
         # A checkpoint saved before its epoch's evaluation has that epoch trained.
         "epoch": run.meta["epoch"] + int(run.meta.get("pending_evaluation", False)),
         "dataset": data.name}
  for split in splits:
    out[split] = evaluate_split(eval_step, run.state, data[split], data.task,
                                config.eval_batch_size)
  return out
