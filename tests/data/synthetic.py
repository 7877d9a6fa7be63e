"""Small files in the public layouts, generated for the tests."""

from __future__ import annotations

import io
import pathlib
import zipfile

import numpy as np
from PIL import Image


def write_medmnist_npz(path, *, spatial=(28, 28), channels=None, label_columns=1,
                       num_classes=2, counts=(20, 6, 8), seed=0, **overrides):
  """A MedMNIST-format .npz; ``overrides`` replace or drop (None) arrays."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, n in zip(("train", "val", "test"), counts):
    shape = (n, *spatial) + ((channels,) if channels else ())
    arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
    if label_columns > 1:
      arrays[f"{split}_labels"] = rng.integers(0, 2, (n, label_columns), dtype=np.uint8)
    else:
      labels = np.arange(n) % num_classes  # every class present
      arrays[f"{split}_labels"] = rng.permutation(labels)[:, None].astype(np.uint8)
  for key, value in overrides.items():
    if value is None:
      arrays.pop(key)
    else:
      arrays[key] = value
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(path, **arrays)
  return path


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt)
  return buffer.getvalue()


def random_image(rng, size=(32, 32), rgb=True):
  shape = size + ((3,) if rgb else ())
  return rng.integers(0, 256, shape, dtype=np.uint8)


def write_tree(root, files: dict[str, bytes]):
  """Writes ``{relative/path: bytes}`` under ``root``."""
  root = pathlib.Path(root)
  for rel, data in files.items():
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
  return root


def write_zip(path, files: dict[str, bytes]):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(path, "w") as archive:
    for rel, data in files.items():
      archive.writestr(rel, data)
  return path


def busi_like(counts=(12, 6, 4), seed=0, size=(40, 36), duplicate=True):
  """``Dataset_BUSI_with_GT/{benign,malignant,normal}`` with masks and one
  cross-class duplicate (benign (1) = malignant (1)), like the real set."""
  rng = np.random.default_rng(seed)
  files = {}
  for name, n in zip(("benign", "malignant", "normal"), counts):
    for i in range(1, n + 1):
      image = random_image(rng, size)
      files[f"Dataset_BUSI_with_GT/{name}/{name} ({i}).png"] = png_bytes(image)
      files[f"Dataset_BUSI_with_GT/{name}/{name} ({i})_mask.png"] = png_bytes(
          (image[..., 0] > 128).astype(np.uint8) * 255)
  if duplicate:
    files["Dataset_BUSI_with_GT/malignant/malignant (1).png"] = (
        files["Dataset_BUSI_with_GT/benign/benign (1).png"])
  return files


def covid_like(counts=(5, 4, 6, 3), seed=1):
  """COVID-19 Radiography v2: ``<class>/images/*.png`` and ``<class>/masks/*.png``."""
  rng = np.random.default_rng(seed)
  files = {}
  for name, n in zip(("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"), counts):
    for i in range(1, n + 1):
      files[f"COVID-19_Radiography_Dataset/{name}/images/{name}-{i}.png"] = png_bytes(
          random_image(rng, (30, 30), rgb=False))
      files[f"COVID-19_Radiography_Dataset/{name}/masks/{name}-{i}.png"] = png_bytes(
          random_image(rng, (30, 30), rgb=False))
  return files


def nct_like(per_class=3, seed=2):
  """NCT-CRC-HE-100K: nine class folders of RGB .tif tiles."""
  rng = np.random.default_rng(seed)
  return {
      f"NCT-CRC-HE-100K/{c}/{c}-{i}.tif": png_bytes(random_image(rng, (24, 24)), "TIFF")
      for c in ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")
      for i in range(per_class)
  }
