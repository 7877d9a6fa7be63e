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

import dataclasses
import json
import pathlib
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.landscape.hessian import Eigen, hvp, top_eigenvalue
from sam_jax.landscape.line import filter_normalized_direction, loss_along
from sam_jax.landscape.sharpness import Sharpness, rho_sharpness

__all__ = ["Eigen", "Sharpness", "filter_normalized_direction", "hvp", "loss_along",
           "measure_run", "plot_lines", "rho_sharpness", "run_data", "run_loss", "top_eigenvalue"]


@dataclasses.dataclass
class RunData:
  """A run's selected model and a fixed training subset, as arguments (not constants)."""

  restored: Any
  params: Any
  model_state: Any
  images: jax.Array
  labels: jax.Array
  criterion: Callable
  chunk: int
  key: str  # what the compiled measurement depends on: model, data shapes, chunk

  def loss_of(self, model_state, images, labels) -> Callable[[Any], jax.Array]:
    apply_fn, criterion, chunk = self.restored.apply_fn, self.criterion, self.chunk
    n = images.shape[0]

    def loss(params):
      total = 0.0
      for start in range(0, n, chunk):
        logits, _ = apply_fn(params, model_state, images[start:start + chunk], train=False,
                             rng=None)
        total = total + criterion(logits.astype(jnp.float32), labels[start:start + chunk], None)
      return total / (n // chunk)
    return loss


def run_data(workdir: str | pathlib.Path, *, examples: int = 512, chunk: int = 128,
             which: str = "best", data_dir: str | None = None) -> RunData:
  """A run's best model and the first ``examples`` training examples (a multiple of
  ``chunk``), normalized as in training; the loss is their mean cross-entropy in eval mode
  (running BatchNorm statistics), a function of the model's parameters alone."""
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
  chunk = min(chunk, len(train))
  n = min(examples, len(train)) // chunk * chunk
  normalize = augment_lib.augment_fn(setup.augment_config(config, dataset.spatial_dims))
  images = normalize(jax.random.key(0), jnp.asarray(train.images[:n]), train=False)
  labels = jnp.asarray(train.labels[:n]).astype(jnp.int32)
  if dataset.task != ds.MULTILABEL and labels.ndim > 1:
    labels = labels[:, 0]
  model_fields = {k: getattr(config, k) for k in ("model", "width", "patch_size", "stem",
                                                  "dtype", "dataset", "size", "augment")}
  key = json.dumps([model_fields, list(images.shape), chunk, dataset.task], default=str)
  return RunData(restored, objectives.model_params(restored.state.params),
                 restored.state.model_state, images, labels, loss_for_task(dataset.task), chunk,
                 key)


def run_loss(workdir: str | pathlib.Path, **kwargs):
  """``(loss, params, restored)``: :func:`run_data`'s loss closed over its data."""
  data = run_data(workdir, **kwargs)
  return data.loss_of(data.model_state, data.images, data.labels), data.params, data.restored


_COMPILED: dict = {}


def measure_run(workdir: str | pathlib.Path, *, examples: int = 512, rho: float = 0.05,
                ascent_steps: int = 5, power_iterations: int = 20, seed: int = 0,
                data_dir: str | None = None) -> dict:
  """Top Hessian eigenvalue and ρ-sharpness of a run's selected model; writes ``sharpness.json``.

  Runs of the same model and data shapes share one compiled measurement in a
  process (weights, statistics and data are its arguments), so measuring a
  whole grid compiles once per model.
  """
  start = time.perf_counter()
  data = run_data(workdir, examples=examples, data_dir=data_dir)
  key = (data.key, rho, ascent_steps, power_iterations, seed)
  if key not in _COMPILED:
    def measure(params, model_state, images, labels):
      loss = data.loss_of(model_state, images, labels)
      eig = top_eigenvalue(loss, params, jax.random.key(seed), num_iterations=power_iterations)
      return eig, rho_sharpness(loss, params, rho, steps=ascent_steps)
    _COMPILED[key] = jax.jit(measure)
  eig, sharp = _COMPILED[key](data.params, data.model_state, data.images, data.labels)
  result = {
      "hessian_top_eigenvalue": float(eig.value),
      "power_iteration_converged": bool(eig.converged),
      "power_iteration_history": [float(v) for v in eig.history],
      "rho": rho, "ascent_steps": ascent_steps, "rho_sharpness": float(sharp.value),
      "train_subset_loss": float(sharp.loss), "examples": int(data.images.shape[0]),
      "checkpoint_step": int(data.restored.step), "seconds": time.perf_counter() - start,
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
