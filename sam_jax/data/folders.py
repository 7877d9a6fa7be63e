"""Class-per-folder image datasets, in a directory or a zip.

Public medical sets ship as one folder per class:

* BUSI breast ultrasound: ``Dataset_BUSI_with_GT/{benign,malignant,normal}/``
  with segmentation masks ``* _mask*.png`` beside the images (skipped);
* COVID-19 Radiography Database: ``{COVID,Lung_Opacity,Normal,Viral
  Pneumonia}/`` with ``images/`` and ``masks/`` subfolders in v2 (masks
  skipped);
* Kather et al. colorectal histology: NCT-CRC-HE-100K
  (``{ADI,BACK,DEB,LYM,MUC,MUS,NORM,STR,TUM}/*.tif``) and the 2016 texture
  tiles (``01_TUMOR/`` ... ``08_EMPTY/``).

:func:`load_folder` finds the class folders at any depth of the directory or
zip, decodes and resizes the images, finds exact duplicates (identical file
bytes) within and across classes and applies a policy to them, and splits
the images into train/val/test, stratified by class, from a seed. The split
can be saved to and reused from a JSON file, and the prepared arrays can be
cached, so that a second load skips decoding.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import re
import zipfile
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from sam_jax.data import dataset as ds
from sam_jax.errors import one_line

PathLike = Union[str, os.PathLike]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SPLIT_NAMES = ("train", "val", "test")
DUPLICATE_POLICIES = ("drop", "keep", "error")


@dataclasses.dataclass(frozen=True)
class FolderSpec:
  """How to read one class-per-folder dataset.

  Attributes:
    name: dataset name.
    class_folders: class name -> the folder names whose images carry it, in
      label order; classes absent from the mapping are not loaded (a binary
      view of a 3-class set). ``None``: every subfolder with images is a
      class, in sorted order.
    skip: regular expressions; a file whose path (inside its class folder,
      with ``/`` separators) matches one is not an image of the dataset.
    mode: ``"RGB"`` or ``"L"`` (grayscale).
    how_to_get: where the data comes from, for the not-found message.
    locations: names of the folder or zip to look for in a data directory.
  """

  name: str
  class_folders: Optional[Mapping[str, tuple[str, ...]]] = None
  skip: tuple[str, ...] = (r"_mask", r"(^|/)masks?/")
  mode: str = "RGB"
  how_to_get: str = ""
  locations: tuple[str, ...] = ()

  def skip_patterns(self) -> list[re.Pattern]:
    # re caches compiled patterns, so calling this per use costs nothing.
    return [re.compile(p, re.IGNORECASE) for p in self.skip]


_BUSI_HOW = ("BUSI (Al-Dhabyani et al., Data in Brief 2020): "
             "https://scholar.cu.edu.eg/?q=afahmy/pages/dataset (or its Kaggle mirror "
             "'aryashah2k/breast-ultrasound-images-dataset'); pass the folder or the zip.")
_COVID_HOW = ("COVID-19 Radiography Database (Chowdhury et al. 2020; Rahman et al. 2021): "
              "Kaggle 'tawsifurrahman/covid19-radiography-database'.")
_NCT_HOW = ("NCT-CRC-HE-100K (Kather et al. 2019): https://zenodo.org/records/1214456.")
_KATHER_HOW = ("Kather et al. 2016 colorectal texture tiles (5,000 tiles, 8 classes): "
               "https://zenodo.org/records/53169.")

_BUSI_AT = ("busi", "Dataset_BUSI_with_GT", "busi.zip")
_COVID_AT = ("covid_radiography", "COVID-19_Radiography_Dataset",
             "COVID-19_Radiography_Database", "covid_radiography.zip")
PRESETS: dict[str, FolderSpec] = {
    "busi": FolderSpec("busi", {"benign": ("benign",), "malignant": ("malignant",),
                                "normal": ("normal",)}, how_to_get=_BUSI_HOW,
                       locations=_BUSI_AT),
    # Benign vs malignant (normal dropped): malignant is the positive class.
    "busi_binary": FolderSpec("busi_binary", {"benign": ("benign",), "malignant": ("malignant",)},
                              how_to_get=_BUSI_HOW, locations=_BUSI_AT),
    "covid_radiography": FolderSpec(
        "covid_radiography",
        {"covid": ("COVID",), "lung_opacity": ("Lung_Opacity",), "normal": ("Normal",),
         "viral_pneumonia": ("Viral Pneumonia",)}, how_to_get=_COVID_HOW, locations=_COVID_AT),
    # COVID-19 vs normal: the binary task of the GCSAM paper's chest X-rays.
    "covid_binary": FolderSpec("covid_binary", {"normal": ("Normal",), "covid": ("COVID",)},
                               how_to_get=_COVID_HOW, locations=_COVID_AT),
    "nct_crc": FolderSpec(
        "nct_crc", {c.lower(): (c,) for c in
                    ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")},
        how_to_get=_NCT_HOW, locations=("nct_crc", "NCT-CRC-HE-100K", "NCT-CRC-HE-100K.zip")),
    "kather2016": FolderSpec(
        "kather2016", {c.split("_", 1)[1].lower(): (c,) for c in
                       ("01_TUMOR", "02_STROMA", "03_COMPLEX", "04_LYMPHO", "05_DEBRIS",
                        "06_MUCOSA", "07_ADIPOSE", "08_EMPTY")},
        how_to_get=_KATHER_HOW,
        locations=("kather2016", "Kather_texture_2016_image_tiles_5000",
                   "Kather_texture_2016_image_tiles_5000.zip")),
}


def preset(name: str) -> FolderSpec:
  try:
    return PRESETS[name]
  except KeyError:
    raise ds.UnknownDatasetError(
        f"unknown folder dataset {name!r}; known: {', '.join(sorted(PRESETS))}."
    ) from None


# ----------------------------------------------------------------------------
# Sources: a directory or a zip, seen as a list of '/'-separated paths.


class _Source:
  def __init__(self, path: pathlib.Path):
    self.path = path
    if path.is_dir():
      self._zip = None
      # rglob does not descend into symlinked directories, so a link loop ends.
      entries = [(p.relative_to(path).as_posix(), p.is_file()) for p in path.rglob("*")]
      files = (name for name, is_file in entries if is_file)
      empty_dirs = [name for name, is_file in entries if not is_file]
    else:
      try:
        self._zip = zipfile.ZipFile(path)
      except Exception as error:  # BadZipFile, OSError, EOFError, struct.error, ...
        raise ds.CorruptDatasetError(
            f"{path} is neither a folder nor a readable zip: {one_line(error)}") from None
      files = (n for n in self._zip.namelist() if not n.endswith("/"))
      empty_dirs = [n.rstrip("/") for n in self._zip.namelist() if n.endswith("/")]
    self.files = sorted(f for f in files if not _hidden(f))
    # Folders are known from their files, and these too (an empty class folder).
    self._extra_dirs = [d for d in empty_dirs if not _hidden(d)]

  def read(self, name: str) -> bytes:
    if self._zip is None:
      return (self.path / name).read_bytes()
    try:
      return self._zip.read(name)
    except Exception as error:  # a damaged entry: bad CRC, zlib, truncation, ...
      raise ds.CorruptDatasetError(f"{self.path}: entry {name} cannot be read: "
                                   f"{one_line(error)}") from None

  def directories(self) -> set[str]:
    dirs = {""}
    for f in self.files + [f"{d}/" for d in self._extra_dirs]:
      parts = f.split("/")[:-1]
      for i in range(1, len(parts) + 1):
        dirs.add("/".join(parts[:i]))
    return dirs


def _hidden(name: str) -> bool:
  """Hidden files and folders, and the ``__MACOSX/`` resource forks of macOS zips."""
  return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))


def _open_source(path: PathLike, spec: FolderSpec) -> _Source:
  path = pathlib.Path(path)
  if not path.exists():
    raise ds.DatasetNotFoundError(
        f"{spec.name}: no folder or zip at {path}. {spec.how_to_get}".strip()
    )
  if path.is_dir():
    zips = sorted(path.glob("*.zip"))
    has_images = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.rglob("*"))
    if not has_images and len(zips) == 1:
      path = zips[0]  # a folder holding just the dataset's zip
  return _Source(path)


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def _class_root(source: _Source, spec: FolderSpec) -> tuple[str, dict[str, tuple[str, ...]]]:
  """The shallowest directory holding the class folders, and the class map."""
  dirs = source.directories()
  children: dict[str, set[str]] = {}
  for d in dirs:
    if d:
      parent, _, child = d.rpartition("/")
      children.setdefault(parent, set()).add(child)
  by_depth = sorted(dirs, key=lambda d: (d.count("/") + bool(d), d))
  if spec.class_folders is not None:
    needed = {f for folders in spec.class_folders.values() for f in folders}
    for d in by_depth:
      if needed <= children.get(d, set()):
        return d, dict(spec.class_folders)
    raise ds.DatasetNotFoundError(
        f"{spec.name}: class folders {sorted(needed)} not found in {source.path}; "
        f"top-level entries: {sorted(children.get('', set()))[:10]}. {spec.how_to_get}".strip()
    )
  skip = spec.skip_patterns()
  single = None
  for d in by_depth:
    prefix = f"{d}/" if d else ""
    folders = sorted(c for c in children.get(d, set()) if not any(p.search(f"{c}/") for p in skip))
    with_images = [c for c in folders
                   if any(f.startswith(f"{prefix}{c}/") and _is_image(f) for f in source.files)]
    if len(with_images) >= 2:
      empty = sorted(set(folders) - set(with_images))
      if empty:
        raise ds.EmptyClassError(
            f"{spec.name}: class folder(s) {empty} under {source.path}/{d} have no images "
            f"({', '.join(IMAGE_EXTENSIONS)}) beside {with_images}; add images or remove them.")
      return d, {c: (c,) for c in with_images}
    if len(with_images) == 1:
      single = f"{prefix}{with_images[0]}"  # the deepest such folder is the one to name
  if single is not None:
    raise ds.EmptyClassError(
        f"{spec.name}: {source.path} has one class folder of images ({single}); a classifier "
        "needs two or more, one folder per class.")
  raise ds.DatasetNotFoundError(
      f"{spec.name}: no directory in {source.path} has two or more class folders of images."
  )


# ----------------------------------------------------------------------------
# Duplicates and splits.


@dataclasses.dataclass(frozen=True)
class DuplicateGroup:
  """Files with identical bytes."""

  sha256: str
  paths: tuple[str, ...]
  classes: tuple[str, ...]

  @property
  def conflicting(self) -> bool:
    return len(set(self.classes)) > 1


def find_duplicates(paths: Sequence[str], classes: Sequence[str], hashes: Sequence[str]):
  """Groups of two or more files with the same content hash."""
  by_hash: dict[str, list[int]] = {}
  for i, h in enumerate(hashes):
    by_hash.setdefault(h, []).append(i)
  return [
      DuplicateGroup(h, tuple(paths[i] for i in idx), tuple(classes[i] for i in idx))
      for h, idx in sorted(by_hash.items()) if len(idx) > 1
  ]


def stratified_split(
    labels: np.ndarray,
    ratios: Sequence[float],
    seed: int,
    groups: Optional[np.ndarray] = None,
) -> list[np.ndarray]:
  """Indices of each split, stratified by label, deterministic in ``seed``.

  Per class, the examples (or, with ``groups``, whole groups: identical
  images stay together) are shuffled and cut at the rounded cumulative
  ratios, so every split gets its share of every class.
  """
  ratios = np.asarray(ratios, np.float64)
  if np.any(ratios < 0) or not np.isclose(ratios.sum(), 1.0):
    raise ValueError(f"split ratios must be non-negative and sum to 1, got {list(ratios)}.")
  groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
  unique_groups, first = np.unique(groups, return_index=True)
  group_labels = labels[first]
  rng = np.random.default_rng(seed)
  parts: list[list[int]] = [[] for _ in ratios]
  for label in np.unique(group_labels):
    members = unique_groups[group_labels == label]
    members = members[rng.permutation(len(members))]
    cuts = np.round(np.cumsum(ratios)[:-1] * len(members)).astype(int)
    for part, chunk in zip(parts, np.split(members, cuts)):
      part.extend(chunk.tolist())
  return [np.sort(np.flatnonzero(np.isin(groups, part))) for part in parts]


# ----------------------------------------------------------------------------
# Decoding.


# Decoded pixels per image above which a file is refused: 8192 x 8192, far
# beyond any medical image set here, far below what would exhaust memory.
DEFAULT_MAX_PIXELS = 8192 * 8192


def decode_image(data: bytes, name: str, mode: str, size: Optional[int],
            max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
  from PIL import Image, UnidentifiedImageError  # pillow is only needed here

  try:
    with Image.open(io.BytesIO(data)) as image:
      width, height = image.size  # from the header: nothing decoded yet
      if width * height > max_pixels:
        raise ds.ImageReadError(
            f"image {name} is {width}x{height} = {width * height} pixels, over the cap of "
            f"{max_pixels} (max_pixels); a file this small that decodes this large may be a "
            "decompression bomb. Raise max_pixels if it is a real image.")
      image.load()
      image = image.convert(mode)
      if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
      array = np.asarray(image, dtype=np.uint8)
  except ds.ImageReadError:
    raise
  except Image.DecompressionBombError as error:  # PIL's own cap, above ours if raised
    raise ds.ImageReadError(f"image {name} is refused as a decompression bomb: {error}") from None
  except (UnidentifiedImageError, OSError, ValueError) as error:
    raise ds.ImageReadError(f"cannot decode image {name}: {error}") from error
  except Exception as error:  # PIL's decoders raise SyntaxError, struct.error, ... on damage
    raise ds.ImageReadError(f"cannot decode image {name}: {one_line(error)}") from error
  if array.ndim == 2:
    array = array[..., None]
  return array


def _decode_all(source, names, mode, size, max_pixels=DEFAULT_MAX_PIXELS):
  def work(name):
    return decode_image(source.read(name), name, mode, size, max_pixels)

  workers = min(8, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    decoded = list(pool.map(work, names))
  if size is None:
    shapes = {}
    for name, array in zip(names, decoded):
      shapes.setdefault(array.shape, name)
    if len(shapes) > 1:
      examples = ", ".join(f"{n} is {s[1]}x{s[0]}" for s, n in list(shapes.items())[:3])
      raise ds.InconsistentImageSizeError(
          f"images differ in size ({examples}); pass size= to resize them all."
      )
  return np.stack(decoded) if decoded else np.zeros((0, 1, 1, 1), np.uint8)


# ----------------------------------------------------------------------------
# The loader.


def load_folder(
    source: PathLike,
    spec: Union[str, FolderSpec],
    *,
    size: Optional[int] = None,
    mode: Optional[str] = None,
    ratios: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    split_file: Optional[PathLike] = None,
    duplicates: str = "drop",
    cache_dir: Optional[PathLike] = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ds.Dataset:
  """Loads a class-per-folder dataset into train/val/test splits.

  Args:
    source: the folder or zip (or a folder holding only the zip).
    spec: a :data:`PRESETS` name (``"busi"``, ``"busi_binary"``,
      ``"covid_radiography"``, ``"covid_binary"``, ``"nct_crc"``,
      ``"kather2016"``) or a :class:`FolderSpec`.
    size: resize every image to ``size x size`` (bilinear, antialiased);
      ``None`` keeps the original size, which must then be the same for all.
    mode: ``"RGB"`` or ``"L"``; defaults to the spec's.
    ratios: train/val/test fractions.
    seed: the split's seed.
    split_file: a JSON file with the split. If it exists it is used (and must
      name files that exist); if not, the split made from ``seed`` and
      ``ratios`` is written there.
    duplicates: what to do with files of identical content: ``"drop"`` (keep
      one of each same-class group, drop every member of a group whose
      classes conflict), ``"keep"`` (keep all; identical files always land in
      the same split), or ``"error"``.
    cache_dir: where to cache the decoded arrays (keyed by the file hashes,
      size, mode, policy and split).
    max_pixels: an image whose header declares more pixels is refused with
      :class:`~sam_jax.data.dataset.ImageReadError` naming it, before it is
      decoded (decompression bombs).

  Returns:
    A :class:`~sam_jax.data.dataset.Dataset` (task ``binary`` for two classes,
    ``multiclass`` otherwise). ``meta`` holds the duplicate report, the split
    (file paths per split) and the source.
  """
  spec = preset(spec) if isinstance(spec, str) else spec
  mode = mode or spec.mode
  if mode not in ("RGB", "L"):
    raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}.")
  if duplicates not in DUPLICATE_POLICIES:
    raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {duplicates!r}.")
  if size is not None and size < 1:
    raise ValueError(f"size must be a positive number of pixels, got {size}.")
  if len(ratios) != len(SPLIT_NAMES):
    raise ValueError(f"ratios are the {'/'.join(SPLIT_NAMES)} fractions, got {list(ratios)}.")
  src = _open_source(source, spec)
  root, class_folders = _class_root(src, spec)
  layout = _split_layout(src, root, class_folders) if spec.class_folders is None else None
  if layout is not None:
    if split_file is not None:
      raise ValueError(f"{spec.name}: {src.path} comes split into {sorted(layout.values())} "
                       "folders; a split_file cannot re-split it.")
    class_folders = _classes_of_layout(src, root, layout, spec)
  skip = spec.skip_patterns()

  paths: list[str] = []
  classes: list[str] = []
  for class_name, folders in class_folders.items():
    count = 0
    for folder in folders:
      prefix = f"{root}/{folder}/" if root else f"{folder}/"
      for f in src.files:
        inner = f[len(prefix):]
        if f.startswith(prefix) and _is_image(f) and not any(p.search(inner) for p in skip):
          paths.append(f)
          classes.append(class_name)
          count += 1
    if count == 0:
      raise ds.EmptyClassError(
          f"{spec.name}: class {class_name!r} (folders {list(folders)} under "
          f"{src.path}/{root}) has no images."
      )

  hashes = [hashlib.sha256(src.read(p)).hexdigest() for p in paths]
  groups = find_duplicates(paths, classes, hashes)
  report = {
      "groups": [dataclasses.asdict(g) for g in groups],
      "conflicting": sum(g.conflicting for g in groups),
      "policy": duplicates,
      "dropped": [],
  }
  if groups and duplicates == "error":
    lines = "; ".join(" = ".join(f"{p} [{c}]" for p, c in zip(g.paths, g.classes)) for g in groups)
    raise ds.DuplicateImagesError(f"{spec.name}: {len(groups)} groups of identical images: {lines}")
  keep = np.ones(len(paths), bool)
  if duplicates == "drop":
    index = {p: i for i, p in enumerate(paths)}
    for g in groups:
      drop = g.paths if g.conflicting else g.paths[1:]
      for p in drop:
        keep[index[p]] = False
      report["dropped"].extend(drop)

  class_names = tuple(class_folders)
  label_of = {c: i for i, c in enumerate(class_names)}
  kept = np.flatnonzero(keep)
  paths = [paths[i] for i in kept]
  labels = np.array([label_of[classes[i]] for i in kept], np.int32)
  hashes = [hashes[i] for i in kept]
  _, group_ids = np.unique(hashes, return_inverse=True)

  if layout is not None:
    assignment = _layout_splits(paths, labels, root, layout, ratios, seed)
  else:
    assignment = _assign_splits(paths, labels, group_ids, ratios, seed, split_file, spec)
  cross = [g for g in _cross_split_groups(paths, hashes, assignment)]
  report["cross_split"] = cross
  if cross and duplicates == "error":
    raise ds.DuplicateImagesError(f"{spec.name}: identical images in different splits: {cross}")

  key = hashlib.sha256(json.dumps(
      [spec.name, list(class_names), size, mode, duplicates,
       sorted(zip(paths, hashes)), {k: sorted(v) for k, v in assignment.items()}]
  ).encode()).hexdigest()[:24]
  images = _cached_images(cache_dir, key,
                          lambda: _decode_all(src, paths, mode, size, max_pixels))

  position = {p: i for i, p in enumerate(paths)}
  splits = {}
  for name in SPLIT_NAMES:
    idx = np.array([position[p] for p in assignment[name]], np.int64)
    splits[name] = ds.Split(images=images[idx] if len(idx) else images[:0],
                            labels=labels[idx] if len(idx) else labels[:0])
  return ds.Dataset(
      name=spec.name,
      task=ds.BINARY if len(class_names) == 2 else ds.MULTICLASS,
      class_names=class_names,
      splits=splits,
      meta={"source": str(src.path), "root": root, "size": size, "mode": mode,
            "duplicates": report, "split": assignment, "seed": seed,
            "ratios": list(ratios), "cache_key": key},
  )


# Folder names of a dataset that comes split (torchvision/Kaggle layouts).
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}


def _split_layout(src, root, class_folders) -> Optional[dict[str, str]]:
  """``{folder: split}`` when the "class folders" found are split folders (``train/``,
  ``val/``, ``test/`` holding the classes), else ``None``."""
  names = {f.lower(): f for f in class_folders}
  if not set(names) <= set(SPLIT_FOLDERS):
    return None
  layout = {names[n]: SPLIT_FOLDERS[n] for n in names}
  if sorted(layout.values()) != sorted(set(layout.values())):
    raise ds.CorruptDatasetError(f"{src.path}: split folders {sorted(layout)} name one split "
                                 "twice.")
  if "train" not in layout.values():
    raise ds.DatasetNotFoundError(f"{src.path}: split folders {sorted(layout)} but no train/.")
  return layout


def _classes_of_layout(src, root, layout, spec) -> dict[str, tuple[str, ...]]:
  """class -> its folder in each split folder (``train/benign``, ``test/benign``, ...)."""
  prefix = f"{root}/" if root else ""
  found: dict[str, set[str]] = {}  # split folder -> its class folders with images
  for folder in layout:
    base = f"{prefix}{folder}/"
    found[folder] = {f[len(base):].split("/")[0] for f in src.files
                     if f.startswith(base) and _is_image(f) and "/" in f[len(base):]}
  classes = {c: [f"{folder}/{c}" for folder in layout if c in found[folder]]
             for c in set().union(*found.values())}
  train = next(f for f, split in layout.items() if split == "train")
  missing = sorted(c for c, fs in classes.items() if f"{train}/{c}" not in fs)
  if missing:
    raise ds.EmptyClassError(f"{spec.name}: class(es) {missing} of {src.path} have no folder "
                             f"under {train}/, so no training images.")
  if len(classes) < 2:
    raise ds.EmptyClassError(f"{spec.name}: {src.path} has {len(classes)} class folder(s) "
                             f"under {train}/; a classifier needs two or more.")
  return {c: tuple(classes[c]) for c in sorted(classes)}


def _layout_splits(paths, labels, root, layout, ratios, seed):
  """Each image's split from its folder; without ``val/``, val is carved out of train
  (stratified, ``ratios[1] / (ratios[0] + ratios[1])`` of it, from ``seed``)."""
  prefix = f"{root}/" if root else ""
  split_of = [layout[p[len(prefix):].split("/")[0]] for p in paths]
  assignment = {name: [p for p, s in zip(paths, split_of) if s == name] for name in SPLIT_NAMES}
  if "val" not in layout.values():
    train = np.array([i for i, s in enumerate(split_of) if s == "train"])
    share = ratios[1] / (ratios[0] + ratios[1]) if ratios[0] + ratios[1] > 0 else 0.0
    keep, val = stratified_split(labels[train], (1 - share, share), seed)
    assignment["train"] = [paths[i] for i in train[keep]]
    assignment["val"] = [paths[i] for i in train[val]]
  return assignment


def _assign_splits(paths, labels, group_ids, ratios, seed, split_file, spec):
  if split_file is not None and pathlib.Path(split_file).is_file():
    saved = json.loads(pathlib.Path(split_file).read_text())
    assignment = {name: list(saved["splits"].get(name, [])) for name in SPLIT_NAMES}
    known = set(paths)
    unknown = [p for v in assignment.values() for p in v if p not in known]
    if unknown:
      raise ds.CorruptDatasetError(
          f"split file {split_file} names {len(unknown)} images that are not in the "
          f"dataset (or were dropped as duplicates), e.g. {unknown[:3]}."
      )
    return assignment
  parts = stratified_split(labels, ratios, seed, groups=group_ids)
  assignment = {name: [paths[i] for i in part] for name, part in zip(SPLIT_NAMES, parts)}
  if split_file is not None:
    path = pathlib.Path(split_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"dataset": spec.name, "seed": seed, "ratios": list(ratios), "splits": assignment}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
  return assignment


def _cross_split_groups(paths, hashes, assignment):
  split_of = {p: name for name, members in assignment.items() for p in members}
  by_hash: dict[str, set[str]] = {}
  for p, h in zip(paths, hashes):
    if p in split_of:
      by_hash.setdefault(h, set()).add(split_of[p])
  for h, splits in sorted(by_hash.items()):
    if len(splits) > 1:
      yield {"sha256": h, "splits": sorted(splits)}


def _cached_images(cache_dir, key, compute):
  if cache_dir is None:
    return compute()
  path = pathlib.Path(cache_dir) / f"images-{key}.npy"
  if path.is_file():
    return np.load(path)
  images = compute()
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp.npy")
  np.save(tmp, images)
  os.replace(tmp, path)
  return images
