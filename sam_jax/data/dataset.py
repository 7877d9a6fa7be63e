"""In-memory datasets: what every loader returns, and the errors they raise.

Images are ``uint8`` and channel-last: ``(N, H, W, C)`` for 2D,
``(N, D, H, W, C)`` for 3D; a grayscale image has ``C = 1``. Labels are
``int32``: ``(N,)`` for binary, multi-class and ordinal tasks, ``(N, L)`` of 0/1
for multi-label ones. The host keeps ``uint8``; conversion to float and
augmentation happen on the device (:mod:`sam_jax.data.augment`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

BINARY = "binary"
MULTICLASS = "multiclass"
MULTILABEL = "multilabel"
ORDINAL = "ordinal"
TASKS = (BINARY, MULTICLASS, MULTILABEL, ORDINAL)

# MedMNIST's task names -> ours.
MEDMNIST_TASKS = {
    "binary-class": BINARY,
    "multi-class": MULTICLASS,
    "multi-label, binary-class": MULTILABEL,
    "ordinal-regression": ORDINAL,
}


class DatasetError(ValueError):
  """Base class of the data errors below (all are ValueErrors)."""


class DatasetNotFoundError(FileNotFoundError):
  """A dataset file or folder is missing; the message says how to get it."""


class UnknownDatasetError(DatasetError):
  """A dataset name we do not know; the message lists the known ones."""


class CorruptDatasetError(DatasetError):
  """A file that cannot be read as what it claims to be."""


class ChecksumError(DatasetError):
  """A known file whose MD5 differs from the official one."""


class EmptyClassError(DatasetError):
  """A class folder without a single image."""


class ImageReadError(DatasetError):
  """An image file that cannot be decoded."""


class InconsistentImageSizeError(DatasetError):
  """Images of different sizes where no resizing was asked for."""


class DuplicateImagesError(DatasetError):
  """Identical images found under the ``"error"`` duplicate policy."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: images, labels, and each example's index in the split."""

  images: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    if self.images.dtype != np.uint8:
      raise DatasetError(f"images must be uint8, got {self.images.dtype}.")
    if len(self.images) != len(self.labels):
      raise DatasetError(
          f"{len(self.images)} images but {len(self.labels)} labels in one split."
      )

  def __len__(self) -> int:
    return len(self.images)

  @property
  def indices(self) -> np.ndarray:
    return np.arange(len(self), dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset with its splits (usually ``train``, ``val``, ``test``).

  Attributes:
    name: e.g. ``"breastmnist"`` or ``"busi"``.
    task: one of ``binary``, ``multiclass``, ``multilabel``, ``ordinal``.
    class_names: the name of each label (each output for multi-label).
    splits: split name -> :class:`Split`.
    meta: provenance (source path, size, MD5, split seed, duplicates report).
  """

  name: str
  task: str
  class_names: tuple[str, ...]
  splits: Mapping[str, Split]
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.task not in TASKS:
      raise DatasetError(f"task must be one of {TASKS}, got {self.task!r}.")
    shapes = {s.images.shape[1:] for s in self.splits.values() if len(s)}
    if len(shapes) > 1:
      raise DatasetError(f"splits of {self.name} have different image shapes: {shapes}.")

  def __getitem__(self, split: str) -> Split:
    try:
      return self.splits[split]
    except KeyError:
      raise KeyError(f"{self.name} has no split {split!r}; it has {sorted(self.splits)}.") from None

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, ...]:
    """Shape of one example, channel last."""
    return next(iter(self.splits.values())).images.shape[1:]

  @property
  def spatial_dims(self) -> int:
    return len(self.image_shape) - 1

  def class_counts(self, split: str) -> np.ndarray:
    labels = self[split].labels
    if self.task == MULTILABEL:
      return labels.sum(axis=0)
    return np.bincount(labels, minlength=self.num_classes)


def channel_last(images: np.ndarray, spatial_dims: int) -> np.ndarray:
  """Adds the channel axis to grayscale arrays: (N, *spatial) -> (N, *spatial, 1)."""
  if images.ndim == spatial_dims + 1:
    return images[..., None]
  if images.ndim == spatial_dims + 2:
    return images
  raise DatasetError(
      f"expected {spatial_dims}-D images of shape (N, *spatial[, C]); got {images.shape}."
  )
