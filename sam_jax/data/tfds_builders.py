"""TFDS builders for MedMNIST and the folder datasets, without TensorFlow.

``tfds.core.GeneratorBasedBuilder`` can write the ``array_record`` format and
``tfds.data_source`` can read it back with random access and NumPy outputs,
neither needing TensorFlow (``tfds.load``/``as_dataset`` do, so we never call
them). Features are plain tensors: ``image`` (``uint8``, channel-last),
``label`` (``ClassLabel``, or an ``int32`` vector for multi-label), and
``index`` (the example's position in its split: array_record files are
written in shuffled order).

Importing this module registers two builders:

``medmnist/{flag}_{size}``
    e.g. ``medmnist/breastmnist_28``; reads the official ``.npz`` from the
    manual directory and verifies its MD5.
``medical_image_folders/{preset}_{size}``
    e.g. ``medical_image_folders/busi_224``; reads the class-per-folder tree
    or zip from the manual directory, with the default split (seed 0,
    70/10/20) and duplicates dropped.

Use::

    from sam_jax.data import tfds_builders
    tfds_builders.prepare("medmnist/breastmnist_28", manual_dir=..., data_dir=...)
    source = tfds.data_source("medmnist/breastmnist_28", data_dir=...)
    dataset = tfds_builders.to_dataset(source, "breastmnist")   # in memory again
"""

from __future__ import annotations

import abc
import dataclasses
import os
from typing import Any, Optional, Union

import numpy as np
import tensorflow_datasets as tfds

from sam_jax.data import dataset as ds
from sam_jax.data import folders, medmnist

PathLike = Union[str, os.PathLike]
FOLDER_SIZES = (28, 64, 128, 224)


def _features(image_shape, task, class_names):
  if task == ds.MULTILABEL:
    label = tfds.features.Tensor(shape=(len(class_names),), dtype=np.int32)
  else:
    label = tfds.features.ClassLabel(names=list(class_names))
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=tuple(image_shape), dtype=np.uint8),
      "label": label,
      "index": tfds.features.Scalar(dtype=np.int64),
  })


class _InMemoryBuilder(tfds.core.GeneratorBasedBuilder):
  """Writes a :class:`~sam_jax.data.dataset.Dataset` that ``_load`` returns.

  Abstract (``_load``), so TFDS does not register it as a dataset.
  """

  @abc.abstractmethod
  def _load(self, manual_dir) -> ds.Dataset:
    """The dataset to write, read from the manual directory."""

  def _split_generators(self, dl_manager):
    data = self._load(dl_manager.manual_dir)
    return {name: self._generate_examples(split) for name, split in data.splits.items()}

  def _generate_examples(self, split: ds.Split):
    for i in range(len(split)):
      yield i, {"image": split.images[i], "label": split.labels[i], "index": i}


@dataclasses.dataclass
class MedmnistConfig(tfds.core.BuilderConfig):
  flag: str = ""
  size: int = 28


class Medmnist(_InMemoryBuilder):
  """MedMNIST v2/v3 from the official ``.npz`` files (MD5-verified)."""

  VERSION = tfds.core.Version("1.0.0")
  # name/description are tfds.core.BuilderConfig's own fields, which the type
  # checker does not see through tfds's dataclass transform.
  BUILDER_CONFIGS = [
      MedmnistConfig(name=f"{flag}_{size}", flag=flag, size=size,  # pyrefly: ignore[unexpected-keyword]
                     description=f"{flag} at {size} px")  # pyrefly: ignore[unexpected-keyword]
      for flag, entry in medmnist.INFO.items() for size in entry.sizes
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put the official MedMNIST file (e.g. breastmnist.npz or breastmnist_64.npz, "
      "from https://zenodo.org/records/10519652 or sam_jax.data.medmnist.download) "
      "in the manual directory."
  )

  def __init__(self, *, verify_md5: bool = True, **kwargs: Any):
    self._verify_md5 = verify_md5
    super().__init__(**kwargs)

  def _info(self):
    entry = medmnist.INFO[self.builder_config.flag]
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"MedMNIST {entry.flag} ({entry.task}) at {self.builder_config.size} px.",
        features=_features(entry.image_shape(self.builder_config.size), entry.task, entry.labels),
        supervised_keys=("image", "label"),
        homepage="https://medmnist.com/",
        license=entry.license,
    )

  def _load(self, manual_dir):
    return medmnist.load(manual_dir, flag=self.builder_config.flag,
                         size=self.builder_config.size, verify_md5=self._verify_md5)


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
  preset: str = ""
  size: int = 224


class MedicalImageFolders(_InMemoryBuilder):
  """The class-per-folder presets of :mod:`sam_jax.data.folders`, resized."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [
      FolderConfig(name=f"{name}_{size}", preset=name, size=size,  # pyrefly: ignore[unexpected-keyword]
                   description=f"{name} at {size} px")  # pyrefly: ignore[unexpected-keyword]
      for name in folders.PRESETS for size in FOLDER_SIZES
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put the dataset's folder or zip in the manual directory (see "
      "sam_jax.data.folders.PRESETS for where each comes from)."
  )

  def __init__(self, *, seed: int = 0, **kwargs: Any):
    self._seed = seed
    super().__init__(**kwargs)

  def _info(self):
    spec = folders.preset(self.builder_config.preset)
    channels = 3 if spec.mode == "RGB" else 1
    size = self.builder_config.size
    task = ds.BINARY if len(spec.class_folders) == 2 else ds.MULTICLASS
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{spec.name} at {size} px. {spec.how_to_get}",
        features=_features((size, size, channels), task, tuple(spec.class_folders)),
        supervised_keys=("image", "label"),
    )

  def _load(self, manual_dir):
    return folders.load_folder(manual_dir, self.builder_config.preset,
                               size=self.builder_config.size, seed=self._seed)


def prepare(
    name: str, *, manual_dir: PathLike, data_dir: PathLike, **builder_kwargs: Any
) -> tfds.core.DatasetBuilder:
  """Builds ``name`` (e.g. ``"medmnist/breastmnist_28"``) as array_record."""
  builder = tfds.builder(name, data_dir=str(data_dir), **builder_kwargs)
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)),
  )
  return builder


def to_dataset(source: Any, name: str, task: Optional[str] = None) -> ds.Dataset:
  """A ``tfds.data_source`` result back as an in-memory, index-ordered Dataset."""
  splits = {}
  label_feature = None
  for split_name, split_source in source.items():
    records = [split_source[i] for i in range(len(split_source))]
    order = np.argsort([r["index"] for r in records])
    images = np.stack([records[i]["image"] for i in order]).astype(np.uint8)
    labels = np.stack([np.asarray(records[i]["label"]) for i in order]).astype(np.int32)
    splits[split_name] = ds.Split(images=images, labels=labels)
    label_feature = split_source.dataset_info.features["label"]
  if isinstance(label_feature, tfds.features.ClassLabel):
    class_names = tuple(label_feature.names)
    task = task or (ds.BINARY if len(class_names) == 2 else ds.MULTICLASS)
  else:
    class_names = tuple(str(i) for i in range(label_feature.shape[0]))
    task = ds.MULTILABEL
  return ds.Dataset(name=name, task=task, class_names=class_names, splits=splits,
                    meta={"source": "tfds"})
