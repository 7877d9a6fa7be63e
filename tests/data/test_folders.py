"""Image-folder datasets: real BUSI, generated trees in the public layouts, errors."""

import json

import numpy as np
import pytest

from sam_jax import data
from sam_jax.data import folders
from tests.data.conftest import need
from tests.data.synthetic import (busi_like, covid_like, nct_like, png_bytes, random_image,
                                  write_tree, write_zip)


# ---------------------------------------------------------------------------
# The real BUSI zip.


@pytest.fixture
def busi_zip(data_dir):
  return need(data_dir / "busi" / "busi_256_rgb.zip")


@pytest.mark.data
def test_real_busi_counts_and_duplicate(busi_zip):
  kept = folders.load_folder(busi_zip, "busi", duplicates="keep", size=32)
  assert sum(len(s) for s in kept.splits.values()) == 780
  totals = sum(kept.class_counts(s) for s in ("train", "val", "test"))
  assert dict(zip(kept.class_names, totals.tolist())) == {"benign": 437, "malignant": 210, "normal": 133}
  (group,) = kept.meta["duplicates"]["groups"]
  assert set(group["paths"]) == {"Dataset_BUSI_with_GT/benign/benign (433).png",
                                 "Dataset_BUSI_with_GT/malignant/malignant (145).png"}
  assert kept.meta["duplicates"]["cross_split"] == []  # identical files share a split

  dropped = folders.load_folder(busi_zip, "busi", size=32)  # default policy: drop
  assert sum(len(s) for s in dropped.splits.values()) == 778
  assert len(dropped.meta["duplicates"]["dropped"]) == 2


@pytest.mark.data
def test_real_busi_split_is_stratified_and_reproducible(busi_zip, tmp_path):
  a = folders.load_folder(busi_zip, "busi", size=28, seed=3, split_file=tmp_path / "split.json")
  b = folders.load_folder(busi_zip, "busi", size=28, seed=3)
  c = folders.load_folder(busi_zip, "busi", size=28, seed=4)
  assert a.meta["split"] == b.meta["split"] != c.meta["split"]
  for name in ("train", "val", "test"):
    np.testing.assert_array_equal(a[name].images, b[name].images)
  # Stratified 70/10/20 within each class.
  for k, total in zip(range(3), (436, 209, 133)):
    counts = [int(a.class_counts(s)[k]) for s in ("train", "val", "test")]
    assert sum(counts) == total
    assert abs(counts[1] - 0.1 * total) <= 1 and abs(counts[2] - 0.2 * total) <= 1
  # The saved split is reused even with another seed.
  d = folders.load_folder(busi_zip, "busi", size=28, seed=99, split_file=tmp_path / "split.json")
  assert d.meta["split"] == a.meta["split"]


@pytest.mark.data
def test_real_busi_binary_view(data_dir):
  need(data_dir / "busi")
  binary = data.load_dataset("busi_binary", data_dir, size=28, mode="L")
  assert binary.task == "binary" and binary.class_names == ("benign", "malignant")
  assert binary.image_shape == (28, 28, 1)
  totals = sum(binary.class_counts(s) for s in ("train", "val", "test"))
  assert totals.tolist() == [436, 209]


# ---------------------------------------------------------------------------
# Generated trees.


@pytest.mark.parametrize("as_zip", [False, True])
def test_busi_layout_skips_masks_and_finds_the_duplicate(tmp_path, as_zip):
  files = busi_like()
  source = write_zip(tmp_path / "busi.zip", files) if as_zip else write_tree(tmp_path / "busi", files)
  loaded = folders.load_folder(source, "busi", duplicates="keep")
  assert sum(len(s) for s in loaded.splits.values()) == 22  # masks skipped
  assert loaded.image_shape == (40, 36, 3)  # generated as (H, W) = (40, 36)
  (group,) = loaded.meta["duplicates"]["groups"]
  assert group["classes"] == ("benign", "malignant")


def test_zip_and_folder_give_the_same_dataset(tmp_path):
  files = busi_like()
  a = folders.load_folder(write_zip(tmp_path / "b.zip", files), "busi", size=16)
  b = folders.load_folder(write_tree(tmp_path / "b", files), "busi", size=16)
  for name in ("train", "val", "test"):
    np.testing.assert_array_equal(a[name].images, b[name].images)
    np.testing.assert_array_equal(a[name].labels, b[name].labels)


def test_folder_holding_only_the_zip(tmp_path):
  write_zip(tmp_path / "busi" / "anything.zip", busi_like())
  loaded = data.load_dataset("busi", tmp_path, size=16)
  assert loaded.num_classes == 3


def test_covid_radiography_layout(tmp_path):
  write_tree(tmp_path, covid_like())
  loaded = data.load_dataset("covid_radiography", tmp_path, size=20, mode="L")
  assert loaded.task == "multiclass" and loaded.image_shape == (20, 20, 1)
  assert sum(len(s) for s in loaded.splits.values()) == 18  # masks/ skipped
  binary = data.load_dataset("covid_binary", tmp_path, size=20)
  assert binary.class_names == ("normal", "covid")
  assert sum(binary.class_counts(s) for s in ("train", "val", "test")).tolist() == [6, 5]


def test_nct_crc_tiff_tiles(tmp_path):
  write_tree(tmp_path, nct_like())
  loaded = data.load_dataset("nct_crc", tmp_path)
  assert loaded.num_classes == 9 and loaded.image_shape == (24, 24, 3)
  assert sum(len(s) for s in loaded.splits.values()) == 27


def test_class_folders_discovered_for_a_custom_spec(tmp_path):
  rng = np.random.default_rng(0)
  files = {f"my_set/{c}/{i}.jpg": png_bytes(random_image(rng, (12, 12)), "JPEG")
           for c in ("b_cls", "a_cls", "c_cls") for i in range(4)}
  write_tree(tmp_path, files)
  loaded = folders.load_folder(tmp_path, folders.FolderSpec("mine"), size=8)
  assert loaded.class_names == ("a_cls", "b_cls", "c_cls")


# ---------------------------------------------------------------------------
# Duplicates.


def _tree_with_duplicates(tmp_path):
  rng = np.random.default_rng(5)
  same = png_bytes(random_image(rng, (16, 16)))
  files = {f"d/{c}/{i}.png": png_bytes(random_image(rng, (16, 16)))
           for c in ("x", "y") for i in range(10)}
  files["d/x/dup_a.png"] = same       # same class twice
  files["d/x/dup_b.png"] = same
  clash = png_bytes(random_image(rng, (16, 16)))
  files["d/x/clash.png"] = clash      # and across classes
  files["d/y/clash.png"] = clash
  return write_tree(tmp_path, files)


def test_duplicate_policy_drop(tmp_path):
  loaded = folders.load_folder(_tree_with_duplicates(tmp_path), folders.FolderSpec("d"))
  report = loaded.meta["duplicates"]
  assert len(report["groups"]) == 2 and report["conflicting"] == 1
  assert sorted(report["dropped"]) == ["d/x/clash.png", "d/x/dup_b.png", "d/y/clash.png"]
  assert sum(len(s) for s in loaded.splits.values()) == 21


def test_duplicate_policy_keep_puts_identical_images_in_one_split(tmp_path):
  for seed in range(5):
    loaded = folders.load_folder(_tree_with_duplicates(tmp_path), folders.FolderSpec("d"),
                                 duplicates="keep", seed=seed)
    assert sum(len(s) for s in loaded.splits.values()) == 24
    assert loaded.meta["duplicates"]["cross_split"] == []


def test_duplicate_policy_error(tmp_path):
  with pytest.raises(data.DuplicateImagesError, match="dup_a.png"):
    folders.load_folder(_tree_with_duplicates(tmp_path), folders.FolderSpec("d"), duplicates="error")


def test_duplicates_across_splits_of_a_saved_split_are_reported(tmp_path):
  root = _tree_with_duplicates(tmp_path / "src")
  split = {"splits": {"train": ["d/x/dup_a.png"] + [f"d/x/{i}.png" for i in range(10)],
                      "val": ["d/x/dup_b.png"], "test": [f"d/y/{i}.png" for i in range(10)]}}
  path = tmp_path / "split.json"
  path.write_text(json.dumps(split))
  loaded = folders.load_folder(root, folders.FolderSpec("d"), duplicates="keep", split_file=path)
  (cross,) = loaded.meta["duplicates"]["cross_split"]
  assert cross["splits"] == ["train", "val"]
  with pytest.raises(data.DuplicateImagesError):
    folders.load_folder(root, folders.FolderSpec("d"), duplicates="error", split_file=path)


# ---------------------------------------------------------------------------
# Errors.


def test_missing_folder_says_where_to_get_it(tmp_path):
  with pytest.raises(data.DatasetNotFoundError, match="scholar.cu.edu.eg"):
    folders.load_folder(tmp_path / "nowhere", "busi")
  with pytest.raises(data.DatasetNotFoundError, match="busi"):
    data.load_dataset("busi", tmp_path)


def test_missing_class_folder(tmp_path):
  files = {k: v for k, v in busi_like().items() if "/normal/" not in k}
  with pytest.raises(data.DatasetNotFoundError, match="normal"):
    folders.load_folder(write_tree(tmp_path, files), "busi")


def test_empty_class_folder(tmp_path):
  files = {k: v for k, v in busi_like().items() if "/normal/" not in k or "_mask" in k}
  with pytest.raises(data.EmptyClassError, match="normal"):
    folders.load_folder(write_tree(tmp_path, files), "busi")


def test_unreadable_image(tmp_path):
  files = busi_like()
  files["Dataset_BUSI_with_GT/normal/normal (2).png"] = b"not a png at all"
  with pytest.raises(data.ImageReadError, match=r"normal \(2\)\.png"):
    folders.load_folder(write_tree(tmp_path, files), "busi", size=16)


def bomb_png(width: int, height: int) -> bytes:
  """A 1x1 grayscale PNG whose header claims ``width x height`` (CRC fixed up)."""
  import struct
  import zlib

  data = bytearray(png_bytes(np.zeros((1, 1), np.uint8)))
  start = data.index(b"IHDR")
  data[start + 4:start + 12] = struct.pack(">II", width, height)
  data[start + 17:start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start:start + 17])))
  return bytes(data)


def test_a_decompression_bomb_is_refused_naming_the_file(tmp_path):
  files = busi_like()
  files["Dataset_BUSI_with_GT/normal/normal (2).png"] = bomb_png(30000, 30000)
  assert len(files["Dataset_BUSI_with_GT/normal/normal (2).png"]) < 1000
  with pytest.raises(data.ImageReadError, match=r"normal \(2\)\.png.*decompression bomb"):
    folders.load_folder(write_tree(tmp_path, files), "busi", size=16)


def test_the_pixel_cap_is_an_option(tmp_path):
  root = write_tree(tmp_path, busi_like())
  with pytest.raises(data.ImageReadError, match=r"^image .* is 36x40 = 1440 pixels, over the cap of 1000"):
    folders.load_folder(root, "busi", size=16, max_pixels=1000)
  assert folders.load_folder(root, "busi", size=16, max_pixels=1440).image_shape == (16, 16, 3)


def test_inconsistent_sizes_without_resizing(tmp_path):
  files = busi_like()
  files["Dataset_BUSI_with_GT/normal/normal (3).png"] = png_bytes(
      random_image(np.random.default_rng(1), (50, 50)))
  with pytest.raises(data.InconsistentImageSizeError, match="size="):
    folders.load_folder(write_tree(tmp_path, files), "busi")
  assert folders.load_folder(tmp_path, "busi", size=24).image_shape == (24, 24, 3)


def test_corrupt_zip(tmp_path):
  path = tmp_path / "busi.zip"
  path.write_bytes(b"PK broken")
  with pytest.raises(data.CorruptDatasetError, match="zip"):
    folders.load_folder(path, "busi")


def test_split_file_naming_missing_images(tmp_path):
  root = write_tree(tmp_path / "src", busi_like())
  path = tmp_path / "split.json"
  path.write_text(json.dumps({"splits": {"train": ["Dataset_BUSI_with_GT/benign/nope.png"]}}))
  with pytest.raises(data.CorruptDatasetError, match="nope.png"):
    folders.load_folder(root, "busi", size=16, split_file=path)


def test_bad_arguments(tmp_path):
  root = write_tree(tmp_path, busi_like())
  with pytest.raises(ValueError, match="duplicates"):
    folders.load_folder(root, "busi", duplicates="ignore")
  with pytest.raises(ValueError, match="ratios"):
    folders.load_folder(root, "busi", size=16, ratios=(0.5, 0.5, 0.5))
  with pytest.raises(data.UnknownDatasetError, match="busi_binary"):
    folders.load_folder(root, "bus")


def test_cache_returns_the_same_arrays(tmp_path):
  root = write_tree(tmp_path / "src", busi_like())
  first = folders.load_folder(root, "busi", size=16, cache_dir=tmp_path / "cache")
  assert len(list((tmp_path / "cache").glob("images-*.npy"))) == 1
  second = folders.load_folder(root, "busi", size=16, cache_dir=tmp_path / "cache")
  for name in ("train", "val", "test"):
    np.testing.assert_array_equal(first[name].images, second[name].images)


# ---------------------------------------------------------------------------
# Your own folders: the layouts and odd trees that load (the errors are in
# tests/test_bad_inputs.py).


def own_tree(classes="ab", per_class=10, rng_seed=0, prefix=""):
  rng = np.random.default_rng(rng_seed)
  return {f"{prefix}{c}/{i}.png": png_bytes(random_image(rng, (20, 20)))
          for c in classes for i in range(per_class)}


def test_train_val_test_folders_are_the_splits(tmp_path):
  files = {**own_tree(prefix="train/"), **own_tree(per_class=3, rng_seed=1, prefix="val/"),
           **own_tree(per_class=4, rng_seed=2, prefix="test/")}
  dataset = folders.load_folder(write_zip(tmp_path / "own.zip", files), folders.FolderSpec("own"))
  assert dataset.class_names == ("a", "b")
  assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 20, "val": 6, "test": 8}
  assert all(p.startswith("test/") for p in dataset.meta["split"]["test"])


def test_without_val_folder_val_is_carved_from_train(tmp_path):
  files = {**own_tree(prefix="Training/"), **own_tree(per_class=4, rng_seed=2, prefix="Testing/")}
  dataset = folders.load_folder(write_tree(tmp_path, files), folders.FolderSpec("own"), seed=3)
  # ratios (0.7, 0.1, 0.2): val is 0.1 / 0.8 of each training class.
  assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 18, "val": 2, "test": 8}
  assert set(dataset.meta["split"]["val"]) <= {p for p in files if p.startswith("Training/")}


def test_a_class_missing_from_train_is_an_error(tmp_path):
  files = {**own_tree(prefix="train/"), **own_tree("abc", per_class=2, prefix="test/")}
  with pytest.raises(data.EmptyClassError, match=r"class\(es\) \['c'\] .* no folder under train/"):
    folders.load_folder(write_tree(tmp_path, files), folders.FolderSpec("own"))


def test_macos_resource_forks_and_hidden_files_are_not_images(tmp_path):
  files = own_tree()
  files["__MACOSX/a/._0.png"] = b"\x00\x05\x16\x07 AppleDouble"
  files["__MACOSX/._a"] = b"junk"
  files["a/.hidden.png"] = b"junk"
  dataset = folders.load_folder(write_zip(tmp_path / "own.zip", files), folders.FolderSpec("own"))
  assert dataset.class_names == ("a", "b") and sum(map(len, dataset.splits.values())) == 20


def test_a_symlink_loop_is_not_followed(tmp_path):
  root = write_tree(tmp_path / "own", own_tree())
  (root / "a" / "loop").symlink_to(root, target_is_directory=True)
  dataset = folders.load_folder(root, folders.FolderSpec("own"))
  assert sum(map(len, dataset.splits.values())) == 20


def test_mixed_modes_and_sizes_become_one_shape(tmp_path):
  from PIL import Image

  files = own_tree()
  rng = np.random.default_rng(5)
  for i, mode in enumerate(("L", "RGBA", "P", "I;16")):
    array = rng.integers(0, 255, (31 + i, 17), dtype=np.uint8)
    image = Image.fromarray(array).convert(mode)
    buffer = __import__("io").BytesIO()
    image.save(buffer, format="PNG")
    files[f"a/{i}.png"] = buffer.getvalue()
  root = write_tree(tmp_path, files)
  rgb = folders.load_folder(root, folders.FolderSpec("own"), size=16)
  gray = folders.load_folder(root, folders.FolderSpec("own"), size=16, mode="L")
  assert rgb.image_shape == (16, 16, 3) and gray.image_shape == (16, 16, 1)


def test_identical_images_across_splits_under_each_policy(tmp_path):
  files = own_tree()
  files["a/9.png"] = files["a/0.png"]
  root = write_tree(tmp_path / "own", files)
  split = tmp_path / "split.json"
  split.write_text(json.dumps({"splits": {
      "train": [p for p in sorted(files) if p not in ("a/9.png", "b/9.png", "a/8.png", "b/8.png")],
      "val": ["a/8.png", "b/8.png"], "test": ["a/9.png", "b/9.png"]}}))
  kept = folders.load_folder(root, folders.FolderSpec("own"), duplicates="keep", split_file=split)
  assert len(kept.meta["duplicates"]["cross_split"]) == 1  # reported, and warned about by train
  # Without a split file, identical images always share a split.
  free = folders.load_folder(root, folders.FolderSpec("own"), duplicates="keep")
  assert free.meta["duplicates"]["cross_split"] == []
  dropped = folders.load_folder(root, folders.FolderSpec("own"), duplicates="drop")
  assert dropped.meta["duplicates"]["dropped"] == ["a/9.png"]
  assert sum(map(len, dropped.splits.values())) == 19


def test_zip_entries_that_climb_out_are_read_in_memory(tmp_path):
  files = own_tree()
  files["../../evil.png"] = files.pop("a/0.png")
  before = sorted(p.name for p in tmp_path.parent.iterdir())
  dataset = folders.load_folder(write_zip(tmp_path / "own.zip", files), folders.FolderSpec("own"))
  assert sum(map(len, dataset.splits.values())) == 19
  assert sorted(p.name for p in tmp_path.parent.iterdir()) == before
