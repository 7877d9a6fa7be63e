"""Re-evaluating a saved run: ``sam-jax eval WORKDIR``."""

from __future__ import annotations

import json
import pathlib
from typing import Optional, Sequence

import jax

from sam_jax import models
from sam_jax.data import augment as augment_lib
from sam_jax.data import batches as batches_lib
from sam_jax.train import config as config_lib
from sam_jax.train import loop
from sam_jax.train.checkpoint import Checkpointer
from sam_jax.train.losses import loss_for_task
from sam_jax.train.optim import build_optimizer
from sam_jax.train.state import create_train_state
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

  The model and optimizer are rebuilt from the run's ``config.json``;
  ``dataset`` and ``data_dir`` may point at another copy or another dataset of
  the same classes and image shape.
  """
  workdir = pathlib.Path(workdir)
  saved = workdir / "config.json"
  if not saved.is_file():
    raise FileNotFoundError(f"{workdir} is not a run directory (no config.json).")
  config = config_lib.from_dict(json.loads(saved.read_text()))
  changes = {k: v for k, v in (("dataset", dataset), ("data_dir", data_dir)) if v is not None}
  config = config.replace(**changes)
  data = loop.load_data(config)
  model = loop.build_model(config, data)
  apply_fn, params, model_state = models.from_linen(model, jax.random.key(0), data["train"].images[:1])
  steps = batches_lib.num_train_batches(data["train"], min(config.batch_size, len(data["train"])))
  tx, _ = build_optimizer(config, steps)
  template = create_train_state(params, model_state, tx)
  checkpointer = Checkpointer(workdir / "checkpoints", config.keep_checkpoints)
  try:
    if checkpointer.latest_step(which) is None:
      raise FileNotFoundError(f"no {which} checkpoint under {workdir / 'checkpoints'}.")
    try:
      state, meta = checkpointer.restore(template, which)
    except ValueError as error:
      raise ValueError(f"the checkpoint in {workdir} does not fit {data.name} "
                       f"({data.num_classes} classes, images {data.image_shape}): {error}")
  finally:
    checkpointer.close()
  augment_fn = augment_lib.augment_fn(loop.augment_config(config, data.spatial_dims))
  eval_step = jax.jit(make_eval_step(apply_fn, loss_for_task(data.task), task=data.task,
                                     augment_fn=augment_fn))
  out = {"workdir": str(workdir), "checkpoint": which, "step": int(state.step),
         "epoch": meta["epoch"], "dataset": data.name}
  for split in splits:
    out[split] = loop.evaluate_split(eval_step, state, data[split], data.task,
                                     config.eval_batch_size)
  return out
