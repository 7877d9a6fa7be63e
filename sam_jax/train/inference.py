"""A trained run, loaded for prediction: ``load_run(WORKDIR).predict(images)``.

The run directory alone is enough: the model is rebuilt from ``config.json``,
the data's shape, task and classes come from ``results.json`` (or, for a run
that has not finished, from loading its dataset), and the weights from the
``best`` (or ``last``) orbax checkpoint. ``predict`` takes ``uint8`` images
as the loaders give them and applies the run's own evaluation transform
(scaling to ``[-1, 1]``, no augmentation), so probabilities match what the
run's evaluation computed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Any, Callable, Sequence

import jax
import numpy as np

from sam_jax.data import augment as augment_lib
from sam_jax.data import dataset as ds
from sam_jax.train import objectives, setup
from sam_jax.train.config import TrainConfig
from sam_jax.train.losses import probabilities


@dataclasses.dataclass
class LoadedRun:
  """A run's model and weights, ready to predict.

  Attributes:
    config: the run's :class:`TrainConfig`.
    apply_fn: ``apply_fn(params, model_state, images, train=False, rng=None)``.
    params, model_state: the restored variables.
    task, class_names, image_shape: what the model was trained on.
    step: the checkpoint's training step.
  """

  config: TrainConfig
  apply_fn: Callable
  params: Any
  model_state: Any
  task: str
  class_names: tuple[str, ...]
  image_shape: tuple[int, ...]
  step: int

  @functools.cached_property
  def _scores(self):
    normalize = augment_lib.augment_fn(
        setup.augment_config(self.config, len(self.image_shape) - 1))

    @jax.jit
    def scores(params, model_state, images):
      inputs = normalize(jax.random.key(0), images, train=False)
      logits, _ = self.apply_fn(params, model_state, inputs, train=False, rng=None)
      return probabilities(self.task, logits)
    return scores

  def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (sigmoid per label for multi-label runs), ``(N, classes)``.

    ``images``: ``uint8`` of the run's shape, ``(N, *image_shape)``; a missing
    channel axis of grayscale images is added.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
      raise ValueError(f"predict takes uint8 images as the loaders give them, got {images.dtype}.")
    if images.ndim == len(self.image_shape) and self.image_shape[-1] == 1:
      images = images[..., None]
    if images.shape[1:] != tuple(self.image_shape):
      raise ValueError(f"images of shape {images.shape[1:]}; this run takes {self.image_shape} "
                       "(resize them, or load them with the run's size and channels).")
    out = []
    for start in range(0, len(images), batch_size):
      chunk = images[start:start + batch_size]
      padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]),
                                                np.uint8)]) if len(chunk) < batch_size else chunk
      out.append(np.asarray(self._scores(self.params, self.model_state, padded))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)


def _stand_in(results: dict) -> ds.Dataset:
  """A dataset of the run's shapes and sizes without its images (a zero-stride view), for
  rebuilding the state's structure."""
  info = results["dataset"]
  shape = tuple(info["image_shape"])
  classes = tuple(info["classes"])
  splits = {}
  for name, n in info["sizes"].items():
    images = np.broadcast_to(np.zeros((1, *shape), np.uint8), (n, *shape))
    if info["task"] == ds.MULTILABEL:
      labels = np.zeros((n, len(classes)), np.int32)
    else:
      labels = (np.arange(n) % len(classes)).astype(np.int32)
    splits[name] = ds.Split(images=images, labels=labels)
  return ds.Dataset(name=info["name"], task=info["task"], class_names=classes, splits=splits)


def load_run(workdir: str | pathlib.Path, which: str = "best") -> LoadedRun:
  """The run in ``workdir`` with its ``best`` (or ``last``) weights, for :meth:`~LoadedRun.predict`."""
  if which not in ("best", "last"):
    raise ValueError(f"which must be 'best' or 'last', got {which!r}.")
  workdir = pathlib.Path(workdir)
  config = setup.read_run_config(workdir)
  results_file = workdir / "results.json"
  if results_file.is_file():
    dataset = _stand_in(json.loads(results_file.read_text()))
  else:  # a run still in progress: its data gives the shapes
    dataset = setup.load_data(config)
  run = setup.restore_run(workdir, dataset, which=which, config=config)
  return LoadedRun(config=config, apply_fn=run.apply_fn,
                   params=objectives.model_params(run.state.params),
                   model_state=run.state.model_state, task=dataset.task,
                   class_names=dataset.class_names, image_shape=dataset.image_shape,
                   step=run.step)


def read_images(paths: Sequence[str | pathlib.Path], image_shape: Sequence[int],
                max_pixels: int) -> np.ndarray:
  """Image files decoded to the run's shape: its channels (grayscale or RGB), its side."""
  from sam_jax.data import folders

  if len(image_shape) != 3:
    raise ValueError("image files can be predicted for 2-D runs; give a 3-D run an .npz.")
  side, channels = image_shape[0], image_shape[-1]
  if channels not in (1, 3):
    raise ValueError(f"this run takes {channels}-channel images; give it an .npz.")
  mode = "L" if channels == 1 else "RGB"
  decoded = []
  for path in paths:
    path = pathlib.Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"no image file at {path}.")
    decoded.append(folders.decode_image(path.read_bytes(), str(path), mode, side, max_pixels))
  return np.stack(decoded)
