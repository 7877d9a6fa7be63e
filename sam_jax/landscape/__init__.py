"""Measurements of a trained model beyond accuracy: Hessian top eigenvalue, ρ-sharpness, 1-D landscape.

    from sam_jax import landscape
    eig = landscape.top_eigenvalue(loss, params, key)          # power iteration on H v
    s = landscape.rho_sharpness(loss, params, rho=0.05)        # max rise in a ρ-ball
    d = landscape.filter_normalized_direction(params, key)     # Li et al. (2018)
    losses = landscape.loss_along(loss, params, d, alphas)

For a run directory, :func:`measure_run` (``sam-jax sharpness RUN...``)
computes the first two on a fixed subset of the training set and writes
``sharpness.json``; :func:`plot_lines` (``sam-jax landscape RUN...``)
draws the loss along one filter-normalized direction per run.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.landscape.hessian import Eigen, hvp, top_eigenvalue
from sam_jax.landscape.line import filter_normalized_direction, loss_along
from sam_jax.landscape.sharpness import Sharpness, rho_sharpness

__all__ = ["Eigen", "Sharpness", "filter_normalized_direction", "hvp", "loss_along",
           "measure_run", "plot_lines", "rho_sharpness", "run_loss", "top_eigenvalue"]


def run_loss(workdir: str | pathlib.Path, *, examples: int = 512, chunk: int = 128,
             which: str = "best", data_dir: str | None = None):
  """``(loss, params, restored)`` for a run: the mean cross-entropy of its model on the
  first ``examples`` training examples, in eval mode (running BatchNorm statistics), as a
  function of the model's parameters alone."""
  from sam_jax.data import augment as augment_lib
  from sam_jax.data import dataset as ds
  from sam_jax.train import objectives, setup
  from sam_jax.train.losses import loss_for_task

  config = setup.read_run_config(workdir)
  if data_dir:
    config = config.replace(data_dir=data_dir)
  dataset = setup.load_data(config)
  restored = setup.restore_run(workdir, dataset, which=which, config=config)
  train = dataset["train"]
  n = min(examples, len(train)) // min(chunk, len(train)) * min(chunk, len(train))
  chunk = min(chunk, n)
  normalize = augment_lib.augment_fn(setup.augment_config(config, dataset.spatial_dims))
  images = normalize(jax.random.key(0), jnp.asarray(train.images[:n]), train=False)
  labels = jnp.asarray(train.labels[:n]).astype(jnp.int32)
  if dataset.task != ds.MULTILABEL and labels.ndim > 1:
    labels = labels[:, 0]
  model_state = restored.state.model_state
  criterion = loss_for_task(dataset.task)

  def loss(params):
    total = 0.0
    for start in range(0, n, chunk):
      logits, _ = restored.apply_fn(params, model_state, images[start:start + chunk],
                                    train=False, rng=None)
      total = total + criterion(logits.astype(jnp.float32), labels[start:start + chunk], None)
    return total / (n // chunk)

  return loss, objectives.model_params(restored.state.params), restored


def measure_run(workdir: str | pathlib.Path, *, examples: int = 512, rho: float = 0.05,
                ascent_steps: int = 5, power_iterations: int = 20, seed: int = 0,
                data_dir: str | None = None) -> dict:
  """Top Hessian eigenvalue and ρ-sharpness of a run's selected model; writes ``sharpness.json``."""
  start = time.perf_counter()
  loss, params, restored = run_loss(workdir, examples=examples, data_dir=data_dir)
  eig = jax.jit(lambda p: top_eigenvalue(loss, p, jax.random.key(seed),
                                         num_iterations=power_iterations))(params)
  sharp = jax.jit(lambda p: rho_sharpness(loss, p, rho, steps=ascent_steps))(params)
  result = {
      "hessian_top_eigenvalue": float(eig.value),
      "power_iteration_converged": bool(eig.converged),
      "power_iteration_history": [float(v) for v in eig.history],
      "rho": rho, "ascent_steps": ascent_steps, "rho_sharpness": float(sharp.value),
      "train_subset_loss": float(sharp.loss), "examples": examples,
      "checkpoint_step": int(restored.step), "seconds": time.perf_counter() - start,
  }
  (pathlib.Path(workdir) / "sharpness.json").write_text(json.dumps(result, indent=2))
  return result


def plot_lines(workdirs: Sequence[str | pathlib.Path], path: str | pathlib.Path, *,
               labels: Sequence[str] | None = None, radius: float = 1.0, points: int = 41,
               examples: int = 512, seed: int = 0, data_dir: str | None = None) -> dict:
  """The training loss along one filter-normalized direction per run, on one plot."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  alphas = np.linspace(-radius, radius, points)
  curves = {}
  for i, workdir in enumerate(workdirs):
    loss, params, restored = run_loss(workdir, examples=examples, data_dir=data_dir)
    direction = filter_normalized_direction(params, jax.random.key(seed))
    label = labels[i] if labels else f"{restored.config.optimizer} ({pathlib.Path(workdir).name})"
    curves[label] = loss_along(loss, params, direction, alphas).tolist()
  fig, axis = plt.subplots(figsize=(6, 4))
  for label, values in curves.items():
    axis.plot(alphas, values, label=label)
  axis.set_xlabel("α (step along a filter-normalized random direction)")
  axis.set_ylabel("training loss (log scale)")
  axis.set_yscale("log")
  axis.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return {"alphas": alphas.tolist(), "losses": curves}
