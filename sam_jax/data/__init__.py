"""Medical image datasets: MedMNIST, image folders, TFDS, augmentation, batches.

``load_dataset(name, data_dir)`` is the front door: ``name`` is a MedMNIST
flag (``"breastmnist"``, ``"adrenalmnist3d"``, ...) or a folder preset
(``"busi"``, ``"busi_binary"``, ``"covid_radiography"``, ``"nct_crc"``, ...),
and ``data_dir`` (or ``$SAM_JAX_DATA_DIR``) the directory holding the files.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Optional, Union

from sam_jax.data import augment, batches, dataset, folders, medmnist
from sam_jax.data.augment import AugmentConfig
from sam_jax.data.batches import eval_batches, train_batches
from sam_jax.data.dataset import (
    ChecksumError,
    CorruptDatasetError,
    Dataset,
    DatasetError,
    DatasetNotFoundError,
    DuplicateImagesError,
    EmptyClassError,
    ImageReadError,
    InconsistentImageSizeError,
    Split,
    UnknownDatasetError,
)

DATA_DIR_ENV = "SAM_JAX_DATA_DIR"
DATASETS = tuple(sorted(set(medmnist.INFO) | set(folders.PRESETS)))


def default_data_dir() -> Optional[pathlib.Path]:
  """``$SAM_JAX_DATA_DIR``, if set."""
  value = os.environ.get(DATA_DIR_ENV)
  return pathlib.Path(value) if value else None


def spatial_dims_of(name: str) -> int:
  """2 or 3: the dimensionality of a known dataset's examples."""
  name = name.lower()
  if name in medmnist.INFO:
    return medmnist.INFO[name].spatial_dims
  folders.preset(name)
  return 2


def load_dataset(
    name: str,
    data_dir: Optional[Union[str, os.PathLike]] = None,
    *,
    size: Optional[int] = None,
    download: bool = False,
    **kwargs: Any,
) -> Dataset:
  """Loads a known dataset by name from ``data_dir``.

  Args:
    name: a MedMNIST flag or a folder preset (see :data:`DATASETS`).
    data_dir: directory with the data; defaults to ``$SAM_JAX_DATA_DIR``.
      MedMNIST files are looked up directly in it or in ``medmnist/``; folder
      datasets under their usual names (``busi/``, ``Dataset_BUSI_with_GT``,
      a zip, ...).
    size: MedMNIST image size (default 28), or the side to resize folder
      images to (default: their own size).
    download: for MedMNIST, fetch the official file (MD5-checked) into
      ``data_dir`` when it is missing.
    **kwargs: passed to :func:`medmnist.load` or :func:`folders.load_folder`.
  """
  key = name.lower()
  if key not in medmnist.INFO and key not in folders.PRESETS:
    raise UnknownDatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}.")
  root = pathlib.Path(data_dir) if data_dir is not None else default_data_dir()
  if root is None:
    raise DatasetNotFoundError(
        f"no data directory for {name!r}: pass data_dir (or --data-dir) or set "
        f"${DATA_DIR_ENV}."
    )
  if key in medmnist.INFO:
    size = 28 if size is None else size
    try:
      return medmnist.load(root, flag=key, size=size, **kwargs)
    except DatasetNotFoundError:
      if not download:
        raise
    medmnist.download(key, size, root)
    return medmnist.load(root, flag=key, size=size, **kwargs)
  spec = folders.preset(key)
  candidates = [root / loc for loc in spec.locations]
  source = next((c for c in candidates if c.exists()), None)
  if source is None:
    if root.exists() and _looks_like_class_tree(root, spec):
      source = root
    else:
      tried = ", ".join(str(c) for c in candidates)
      raise DatasetNotFoundError(f"{name}: none of {tried} exists. {spec.how_to_get}")
  return folders.load_folder(source, spec, size=size, **kwargs)


def _looks_like_class_tree(root: pathlib.Path, spec: folders.FolderSpec) -> bool:
  if spec.class_folders is None:
    return False
  needed = {f for fs in spec.class_folders.values() for f in fs}
  return needed <= {p.name for p in root.iterdir() if p.is_dir()}


__all__ = [
    "AugmentConfig", "ChecksumError", "CorruptDatasetError", "DATASETS", "DATA_DIR_ENV",
    "Dataset", "DatasetError", "DatasetNotFoundError", "DuplicateImagesError",
    "EmptyClassError", "ImageReadError", "InconsistentImageSizeError", "Split",
    "UnknownDatasetError", "augment", "batches", "dataset", "default_data_dir",
    "eval_batches", "folders", "load_dataset", "medmnist", "spatial_dims_of",
    "train_batches",
]
