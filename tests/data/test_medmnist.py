"""MedMNIST: the official table, real files, generated files, and every error."""

import re

import numpy as np
import pytest

from sam_jax import data
from sam_jax.data import medmnist
from tests.data.conftest import need
from tests.data.synthetic import write_medmnist_npz

# From shared/data/README.md: shapes, class counts, official MD5s.
REAL = {
    "breastmnist": ((28, 28, 1), [[147, 399], [21, 57], [42, 114]], "750601b1f35ba3300ea97c75c52ff8f6"),
    "pneumoniamnist": ((28, 28, 1), [[1214, 3494], [135, 389], [234, 390]],
                       "28209eda62fecd6e6a2d98b1501bb15f"),
    "adrenalmnist3d": ((28, 28, 28, 1), [[929, 259], [76, 22], [229, 69]],
                       "bbd3c5a5576322bc4cdfea780653b1ce"),
    "vesselmnist3d": ((28, 28, 28, 1), [[1185, 150], [169, 22], [339, 43]],
                      "b41fd4f7e7e2feedddb201585ecafa1b"),
}


def test_official_table():
  assert len(medmnist.INFO) == 18
  for flag, entry in medmnist.INFO.items():
    assert entry.sizes == ((28, 64) if flag.endswith("3d") else (28, 64, 128, 224))
    assert all(re.fullmatch(r"[0-9a-f]{32}", m) for m in entry.md5.values())
    assert entry.task in data.dataset.TASKS
    assert set(entry.n_samples) == {"train", "val", "test"}
  assert medmnist.info("chestmnist").task == "multilabel"
  assert len(medmnist.info("chestmnist").labels) == 14
  assert medmnist.info("retinamnist").task == "ordinal"
  assert medmnist.info("breastmnist").labels == ("malignant", "normal, benign")
  assert medmnist.info("pathmnist").url(224).endswith("pathmnist_224.npz?download=1")
  assert medmnist.info("vesselmnist3d").image_shape(64) == (64, 64, 64, 1)


@pytest.mark.data
@pytest.mark.parametrize("flag", REAL)
def test_real_files(flag, data_dir):
  shape, counts, md5 = REAL[flag]
  path = need(data_dir / "medmnist" / f"{flag}.npz")
  assert medmnist.md5sum(path) == md5 == medmnist.info(flag).md5[28]
  loaded = data.load_dataset(flag, data_dir)
  assert loaded.task == "binary" and loaded.image_shape == shape
  assert [list(loaded.class_counts(s)) for s in ("train", "val", "test")] == counts
  for split in loaded.splits.values():
    assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32


# ---------------------------------------------------------------------------
# Generated files in the official layout.


@pytest.mark.parametrize(
    "kwargs,task,shape",
    [
        (dict(spatial=(28, 28), num_classes=2), "binary", (28, 28, 1)),
        (dict(spatial=(28, 28), channels=3, num_classes=7), "multiclass", (28, 28, 3)),
        (dict(spatial=(64, 64), label_columns=14), "multilabel", (64, 64, 1)),
        (dict(spatial=(28, 28, 28), num_classes=2), "binary", (28, 28, 28, 1)),
        (dict(spatial=(64, 64, 64), num_classes=3, counts=(4, 2, 2)), "multiclass", (64, 64, 64, 1)),
    ],
)
def test_generated_files_of_every_kind(tmp_path, kwargs, task, shape):
  path = write_medmnist_npz(tmp_path / "custom.npz", **kwargs)
  loaded = medmnist.load(path)
  assert loaded.task == task and loaded.image_shape == shape
  labels = loaded["train"].labels
  assert labels.ndim == (2 if task == "multilabel" else 1)


def test_ordinal_task_is_taken_from_the_table(tmp_path):
  path = write_medmnist_npz(tmp_path / "retinamnist.npz", channels=3, num_classes=5)
  loaded = medmnist.load(path, verify_md5=False)
  assert loaded.task == "ordinal" and loaded.num_classes == 5
  assert loaded.class_names == ("0", "1", "2", "3", "4")


def test_chestmnist_layout_is_multilabel(tmp_path):
  path = write_medmnist_npz(tmp_path / "chestmnist_64.npz", spatial=(64, 64), label_columns=14)
  loaded = medmnist.load(path, verify_md5=False)
  assert loaded.task == "multilabel" and loaded["test"].labels.shape[1] == 14
  assert loaded.class_names[0] == "atelectasis"


def test_official_3d_file_at_64(tmp_path):
  path = write_medmnist_npz(tmp_path / "vesselmnist3d_64.npz", spatial=(64, 64, 64), counts=(3, 2, 2))
  loaded = medmnist.load(path, verify_md5=False)
  assert loaded.image_shape == (64, 64, 64, 1) and loaded.spatial_dims == 3


# ---------------------------------------------------------------------------
# Errors.


def test_missing_file_says_how_to_get_it(tmp_path):
  with pytest.raises(data.DatasetNotFoundError) as error:
    data.load_dataset("pathmnist", tmp_path, size=64)
  message = str(error.value)
  assert "pathmnist_64.npz" in message and "download" in message
  assert "55aa9c1e0525abe5a6b9d8343a507616" in message


def test_missing_data_dir_is_explained(monkeypatch):
  monkeypatch.delenv("SAM_JAX_DATA_DIR", raising=False)
  with pytest.raises(data.DatasetNotFoundError, match="SAM_JAX_DATA_DIR"):
    data.load_dataset("breastmnist")


def test_corrupt_file(tmp_path):
  path = tmp_path / "custom.npz"
  path.write_bytes(b"this is not a zip archive" * 10)
  with pytest.raises(data.CorruptDatasetError, match="cannot be read"):
    medmnist.load(path)


def test_missing_keys(tmp_path):
  path = write_medmnist_npz(tmp_path / "custom.npz", val_labels=None)
  with pytest.raises(data.CorruptDatasetError, match="val_labels"):
    medmnist.load(path)


def test_label_count_mismatch(tmp_path):
  path = write_medmnist_npz(tmp_path / "custom.npz", test_labels=np.zeros((3, 1), np.uint8))
  with pytest.raises(data.CorruptDatasetError, match="test_labels"):
    medmnist.load(path)


def test_wrong_md5_of_an_official_name(tmp_path):
  path = write_medmnist_npz(tmp_path / "breastmnist.npz")
  with pytest.raises(data.ChecksumError, match="750601b1f35ba3300ea97c75c52ff8f6"):
    medmnist.load(path)
  assert medmnist.load(path, verify_md5=False).name == "breastmnist"


def test_unknown_name_lists_the_known_ones(tmp_path):
  with pytest.raises(data.UnknownDatasetError) as error:
    data.load_dataset("breastmnsit", tmp_path)
  assert "breastmnist" in str(error.value) and "busi" in str(error.value)
  with pytest.raises(data.UnknownDatasetError, match="adrenalmnist3d"):
    medmnist.info("adrenal")


def test_unsupported_size(tmp_path):
  with pytest.raises(ValueError, match="sizes"):
    medmnist.info("adrenalmnist3d").filename(224)


# ---------------------------------------------------------------------------
# Download (from a local file:// address: nothing goes to the network).


def test_download_verifies_and_keeps_a_good_file(tmp_path):
  source = write_medmnist_npz(tmp_path / "mirror" / "anything.npz")
  good = medmnist.md5sum(source)
  target = medmnist.download("breastmnist", 28, tmp_path / "data", url=source.as_uri(), md5=good)
  assert target.name == "breastmnist.npz" and medmnist.md5sum(target) == good


def test_download_with_a_wrong_checksum_keeps_nothing(tmp_path):
  source = write_medmnist_npz(tmp_path / "mirror" / "anything.npz")
  root = tmp_path / "data"
  with pytest.raises(data.ChecksumError, match="nothing was kept"):
    medmnist.download("breastmnist", 28, root, url=source.as_uri())  # official MD5
  assert list(root.iterdir()) == []


def test_a_stray_label_is_named_not_trained_on(tmp_path):
  labels = np.r_[np.arange(19) % 2, 7][:, None].astype(np.uint8)
  path = write_medmnist_npz(tmp_path / "custom.npz", train_labels=labels)
  with pytest.raises(data.EmptyClassError, match=r"class\(es\) \[2, 3, 4, 5, 6\] have no training"):
    medmnist.load(path)
  # Declared, classes without examples are accepted (and labels beyond them are not).
  assert medmnist.load(path, num_classes=8).num_classes == 8
  with pytest.raises(data.CorruptDatasetError, match=r"train labels outside 0\.\.5"):
    medmnist.load(path, num_classes=6)
  with pytest.raises(ValueError, match="num_classes applies to single-label files"):
    medmnist.load(write_medmnist_npz(tmp_path / "ml.npz", label_columns=3), num_classes=3)


def test_resize_makes_larger_volumes_the_loader_reads(tmp_path):
  source = write_medmnist_npz(tmp_path / "vol.npz", spatial=(8, 8, 8), counts=(4, 2, 2), seed=1)
  with np.load(source) as archive:
    original = {key: archive[key] for key in archive.files}
  target = medmnist.resize(source, tmp_path / "vol_12_resized.npz", 12)
  dataset = medmnist.load(target)
  assert dataset.spatial_dims == 3 and dataset["train"].images.shape == (4, 12, 12, 12, 1)
  np.testing.assert_array_equal(dataset["test"].labels.ravel(), original["test_labels"].ravel())
  # Linear interpolation with the corners kept: corner voxels are the originals'.
  resized = dataset["train"].images
  np.testing.assert_array_equal(resized[:, 0, 0, 0, 0], original["train_images"][:, 0, 0, 0])
  np.testing.assert_array_equal(resized[:, -1, -1, -1, 0], original["train_images"][:, -1, -1, -1])
  # A constant volume stays constant; 2-D images with channels keep them.
  flat = write_medmnist_npz(tmp_path / "img.npz", spatial=(6, 6), channels=3, counts=(3, 2, 2),
                            train_images=np.full((3, 6, 6, 3), 77, np.uint8))
  images = medmnist.load(medmnist.resize(flat, tmp_path / "img_9.npz", 9))["train"].images
  assert images.shape == (3, 9, 9, 3) and (images == 77).all()


def test_resize_refuses_an_official_name(tmp_path):
  source = write_medmnist_npz(tmp_path / "vol.npz", spatial=(8, 8, 8), counts=(4, 2, 2))
  with pytest.raises(ValueError, match="official MedMNIST file name"):
    medmnist.resize(source, tmp_path / "adrenalmnist3d_64.npz", 64)
