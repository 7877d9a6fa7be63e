"""TFDS builders write array_record and read back through tfds.data_source, without TF."""

import importlib.util

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sam_jax.data import medmnist, tfds_builders
from tests.data.conftest import need
from tests.data.synthetic import busi_like, write_medmnist_npz, write_zip


def test_tensorflow_is_not_installed():
  assert importlib.util.find_spec("tensorflow") is None


def assert_same_dataset(a, b):
  assert a.class_names == b.class_names and set(a.splits) == set(b.splits)
  for name in a.splits:
    np.testing.assert_array_equal(a[name].images, b[name].images)
    np.testing.assert_array_equal(a[name].labels, b[name].labels)


def test_medmnist_builder_round_trip(tmp_path):
  write_medmnist_npz(tmp_path / "manual" / "bloodmnist.npz", channels=3, num_classes=8, counts=(16, 8, 8))
  tfds_builders.prepare("medmnist/bloodmnist_28", manual_dir=tmp_path / "manual",
                        data_dir=tmp_path / "tfds", verify_md5=False)
  source = tfds.data_source("medmnist/bloodmnist_28", data_dir=str(tmp_path / "tfds"))
  assert len(source["train"]) == 16
  record = source["val"][0]
  assert record["image"].shape == (28, 28, 3) and record["image"].dtype == np.uint8
  back = tfds_builders.to_dataset(source, "bloodmnist")
  assert_same_dataset(back, medmnist.load(tmp_path / "manual" / "bloodmnist.npz", verify_md5=False))


def test_multilabel_builder(tmp_path):
  write_medmnist_npz(tmp_path / "manual" / "chestmnist.npz", label_columns=14, counts=(6, 3, 3))
  tfds_builders.prepare("medmnist/chestmnist_28", manual_dir=tmp_path / "manual",
                        data_dir=tmp_path / "tfds", verify_md5=False)
  source = tfds.data_source("medmnist/chestmnist_28", data_dir=str(tmp_path / "tfds"))
  back = tfds_builders.to_dataset(source, "chestmnist")
  assert back.task == "multilabel" and back["train"].labels.shape == (6, 14)


def test_folder_builder_from_a_zip(tmp_path):
  write_zip(tmp_path / "manual" / "busi.zip", busi_like(counts=(10, 10, 10)))
  tfds_builders.prepare("medical_image_folders/busi_binary_28", manual_dir=tmp_path / "manual",
                        data_dir=tmp_path / "tfds")
  source = tfds.data_source("medical_image_folders/busi_binary_28", data_dir=str(tmp_path / "tfds"))
  back = tfds_builders.to_dataset(source, "busi_binary")
  assert back.task == "binary" and back.image_shape == (28, 28, 3)
  assert sum(len(s) for s in back.splits.values()) == 18  # 20 minus the clashing duplicate


@pytest.mark.data
def test_real_breastmnist_through_tfds(data_dir, tmp_path):
  manual = need(data_dir / "medmnist")
  tfds_builders.prepare("medmnist/breastmnist_28", manual_dir=manual, data_dir=tmp_path)
  source = tfds.data_source("medmnist/breastmnist_28", data_dir=str(tmp_path))
  assert {k: len(v) for k, v in source.items()} == {"train": 546, "val": 78, "test": 156}
  assert_same_dataset(tfds_builders.to_dataset(source, "breastmnist"),
                      medmnist.load(manual / "breastmnist.npz"))
