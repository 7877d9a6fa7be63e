"""MedMNIST v2/v3 (`.npz`): the table of official datasets, a loader, a download.

The official files (Zenodo record 10519652, MedMNIST+) are named
``{flag}.npz`` at 28 px and ``{flag}_{size}.npz`` at 64, 128 and 224 px (3D:
28 and 64) and hold ``{train,val,test}_images`` (``uint8``; grayscale without
a channel axis) and ``{train,val,test}_labels`` (``(N, 1)``, or ``(N, 14)``
for ChestMNIST). :data:`INFO` holds, for each dataset, the task, label names,
channels, split sizes and the MD5 of every size, as published in the
``medmnist`` 3.0.2 package.

:func:`load` reads one file, checks its structure, and verifies its MD5 when
the file name is an official one. :func:`download` fetches an official file
and verifies it; nothing in the tests calls it with a network address.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
import tempfile
import urllib.request
from typing import Mapping, Optional, Union

import numpy as np

from sam_jax.data import dataset as ds
from sam_jax.errors import one_line

ZENODO_RECORD = "https://zenodo.org/records/10519652/files"
SPLITS = ("train", "val", "test")
PathLike = Union[str, os.PathLike]


@dataclasses.dataclass(frozen=True)
class MedMNISTInfo:
  """One official MedMNIST dataset."""

  flag: str
  task: str                       # ours: binary / multiclass / multilabel / ordinal
  labels: tuple[str, ...]
  n_channels: int
  n_samples: Mapping[str, int]
  md5: Mapping[int, str]          # size in px -> MD5 of the official file
  license: str = "CC BY 4.0"

  @property
  def spatial_dims(self) -> int:
    return 3 if self.flag.endswith("3d") else 2

  @property
  def sizes(self) -> tuple[int, ...]:
    return tuple(sorted(self.md5))

  def filename(self, size: int = 28) -> str:
    self._check_size(size)
    return f"{self.flag}.npz" if size == 28 else f"{self.flag}_{size}.npz"

  def url(self, size: int = 28) -> str:
    return f"{ZENODO_RECORD}/{self.filename(size)}?download=1"

  def image_shape(self, size: int = 28) -> tuple[int, ...]:
    return (size,) * self.spatial_dims + (self.n_channels,)

  def _check_size(self, size: int) -> None:
    if size not in self.md5:
      raise ValueError(f"{self.flag} comes in sizes {self.sizes}, not {size}.")


def _info(flag, task, labels, channels, train, val, test, md5s, license="CC BY 4.0"):
  sizes = (28, 64, 128, 224) if not flag.endswith("3d") else (28, 64)
  return MedMNISTInfo(
      flag=flag, task=ds.MEDMNIST_TASKS[task], labels=tuple(labels), n_channels=channels,
      n_samples={"train": train, "val": val, "test": test},
      md5=dict(zip(sizes, md5s)), license=license,
  )


_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
           "liver", "lung-left", "lung-right", "pancreas", "spleen")

INFO: dict[str, MedMNISTInfo] = {i.flag: i for i in (
    _info("pathmnist", "multi-class",
          ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
           "normal colon mucosa", "cancer-associated stroma",
           "colorectal adenocarcinoma epithelium"), 3, 89996, 10004, 7180,
          ("a8b06965200029087d5bd730944a56c1", "55aa9c1e0525abe5a6b9d8343a507616",
           "ac42d08fb904d92c244187169d1fd1d9", "2c51a510bcdc9cf8ddb2af93af1eadec")),
    _info("chestmnist", "multi-label, binary-class",
          ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
           "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis",
           "pleural", "hernia"), 1, 78468, 11219, 22433,
          ("02c8a6516a18b556561a56cbdd36c4a8", "9de6cd0b934ebb5b7426cfba5efbae16",
           "db107e5590b27930b62dbaf558aebee3", "45bd33e6f06c3e8cdb481c74a89152aa")),
    _info("dermamnist", "multi-class",
          ("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
           "benign keratosis-like lesions", "dermatofibroma", "melanoma",
           "melanocytic nevi", "vascular lesions"), 3, 7007, 1003, 2005,
          ("0744692d530f8e62ec473284d019b0c7", "b70a2f5635c6199aeaa28c31d7202e1f",
           "2defd784463fa5243564e855ed717de1", "8974907d8e169bef5f5b96bc506ae45d"),
          license="CC BY-NC 4.0"),
    _info("octmnist", "multi-class",
          ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
          1, 97477, 10832, 1000,
          ("c68d92d5b585d8d81f7112f81e2d0842", "e229e9440236b774d9f0dfef9d07bdaf",
           "0a97e76651ace45c5d943ee3f65b63ae", "abc493b6d529d5de7569faaef2773ba3")),
    _info("pneumoniamnist", "binary-class", ("normal", "pneumonia"), 1, 4708, 524, 624,
          ("28209eda62fecd6e6a2d98b1501bb15f", "8f4eceb4ccffa70c672198ea285246c6",
           "05b46931834c231683c68f40c47b2971", "d6a3c71de1b945ea11211b03746c1fe1")),
    _info("retinamnist", "ordinal-regression", ("0", "1", "2", "3", "4"), 3, 1080, 120, 400,
          ("bd4c0672f1bba3e3a89f0e4e876791e4", "afda852cc34dcda56f86ad2b2457dbcc",
           "e48e916a24454daf90583d4e6efb1a18", "eae7e3b6f3fcbda4ae613ebdcbe35348")),
    _info("breastmnist", "binary-class", ("malignant", "normal, benign"), 1, 546, 78, 156,
          ("750601b1f35ba3300ea97c75c52ff8f6", "742edef2a1fd1524b2efff4bd7ba9364",
           "363e4b3f8d712e9b5de15470a2aaadf1", "b56378a6eefa9fed602bb16d192d4c8b")),
    _info("bloodmnist", "multi-class",
          ("basophil", "eosinophil", "erythroblast",
           "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
           "lymphocyte", "monocyte", "neutrophil", "platelet"), 3, 11959, 1712, 3421,
          ("7053d0359d879ad8a5505303e11de1dc", "2b94928a2ae4916078ca51e05b6b800b",
           "adace1e0ed228fccda1f39692059dd4c", "b718ff6835fcbdb22ba9eacccd7b2601")),
    _info("tissuemnist", "multi-class",
          ("Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
           "Glomerular endothelial cells", "Interstitial endothelial cells", "Leukocytes",
           "Podocytes", "Proximal Tubule Segments", "Thick Ascending Limb"),
          1, 165466, 23640, 47280,
          ("ebe78ee8b05294063de985d821c1c34b", "123ece2eba09d0aa5d698fda57103344",
           "61b955355d7425a89687b06cca3ce0c2", "b077128c4a949f0a4eb01517f9037b9c")),
    _info("organamnist", "multi-class", _ORGANS, 1, 34561, 6491, 17778,
          ("68e3f8846a6bd62f0c9bf841c0d9eacc", "2dcccc29b88e6da5a01161ef20cda288",
           "eeae80d0a227a8d099027e1b3cfd3b60", "50747347e05c87dd3aaf92c49f9f3170")),
    _info("organcmnist", "multi-class", _ORGANS, 1, 12975, 2392, 8216,
          ("b9ceb9546e10131b32923c5bbeaea2b1", "3ce34a8724ea6f548e6db4744d03b6a9",
           "773c1f009daa3fe5d9a2a201b2a7ed94", "050f5e875dc056f6768abf94ec9995d1")),
    _info("organsmnist", "multi-class", _ORGANS, 1, 13932, 2452, 8827,
          ("9ab87b696fb54e2a387ebe992d6ed5f1", "53a6d115339d874c25e309a994ff46d3",
           "ded0c5fa01a95dc4978b956f613e9b8e", "b354719e553fbbb2513d5533f52a4cb1")),
    _info("organmnist3d", "multi-class",
          ("liver", "kidney-right", "kidney-left", "femur-right", "femur-left", "bladder",
           "heart", "lung-right", "lung-left", "spleen", "pancreas"), 1, 971, 161, 610,
          ("a0c5a1ff56af4f155c46d46fbb45a2fe", "58a2205adf14a9d0a189cb06dc78bf10")),
    _info("nodulemnist3d", "binary-class", ("benign", "malignant"), 1, 1158, 165, 310,
          ("8755a7e9e05a4d9ce80a24c3e7a256f3", "c47c5b7d457bf6332200d2ea6d64ecd8")),
    _info("adrenalmnist3d", "binary-class", ("normal", "hyperplasia"), 1, 1188, 98, 298,
          ("bbd3c5a5576322bc4cdfea780653b1ce", "17721accfe9fb005146a47d33bc54b2f")),
    _info("fracturemnist3d", "multi-class",
          ("buckle rib fracture", "nondisplaced rib fracture", "displaced rib fracture"),
          1, 1027, 103, 240,
          ("6aa7b0143a6b42da40027a9dda61302f", "f01d7e6316aedf4210da0da5b7437b42")),
    _info("vesselmnist3d", "binary-class", ("vessel", "aneurysm"), 1, 1335, 191, 382,
          ("b41fd4f7e7e2feedddb201585ecafa1b", "6bb274a8846e1097066dcd64e2c4520f")),
    _info("synapsemnist3d", "binary-class", ("inhibitory synapse", "excitatory synapse"),
          1, 1230, 177, 352,
          ("1235b78a3cd6280881dd7850a78eadb6", "43bd14ebf3af9d3dd072446fedc14d5e")),
)}


def info(flag: str) -> MedMNISTInfo:
  """The official entry for ``flag``; lists the known flags when unknown."""
  try:
    return INFO[flag.lower()]
  except KeyError:
    raise ds.UnknownDatasetError(
        f"unknown MedMNIST dataset {flag!r}; known: {', '.join(sorted(INFO))}."
    ) from None


def md5sum(path: PathLike, chunk: int = 1 << 20) -> str:
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(chunk), b""):
      digest.update(block)
  return digest.hexdigest()


def identify(path: PathLike) -> Optional[tuple[MedMNISTInfo, int]]:
  """``(info, size)`` if the file name is an official one, else ``None``."""
  stem = pathlib.Path(path).name
  if not stem.endswith(".npz"):
    return None
  stem = stem[: -len(".npz")]
  flag, _, suffix = stem.rpartition("_")
  if flag and suffix.isdigit() and flag in INFO and int(suffix) in INFO[flag].md5:
    return INFO[flag], int(suffix)
  if stem in INFO:
    return INFO[stem], 28
  return None


def _missing_file_message(path: pathlib.Path, flag: Optional[str], size: int) -> str:
  message = f"MedMNIST file not found: {path}."
  if flag in INFO:
    entry = INFO[flag]
    message += (
        f" Get it with sam_jax.data.medmnist.download({flag!r}, size={size}, "
        f"root={str(path.parent)!r}) or from {entry.url(size)} "
        f"(MD5 {entry.md5[size]}), or point --data-dir / SAM_JAX_DATA_DIR at a copy."
    )
  return message


def load(
    path: PathLike,
    *,
    flag: Optional[str] = None,
    size: int = 28,
    verify_md5: bool = True,
    task: Optional[str] = None,
    num_classes: Optional[int] = None,
) -> ds.Dataset:
  """Loads a MedMNIST-format ``.npz`` into a :class:`~sam_jax.data.dataset.Dataset`.

  Args:
    path: the ``.npz`` file, or a directory holding the official file name of
      ``flag`` at ``size`` (directly or in a ``medmnist/`` subfolder).
    flag: the dataset (e.g. ``"breastmnist"``); inferred from an official file
      name when omitted.
    size: image side in px (28, 64, 128, 224; 3D: 28, 64).
    verify_md5: check the official MD5 when the file is an official one.
    task: for files that are not official: ``binary``, ``multiclass``,
      ``multilabel`` or ``ordinal``; inferred from the labels when omitted.
    num_classes: for files that are not official and not multi-label: the
      number of classes. By default it is ``max(label) + 1`` and every class
      must have training examples, so that one stray label (a 7 in a binary
      set) is an error naming it rather than a silently wider model; give
      ``num_classes`` to declare classes that really have no example.

  Raises:
    DatasetNotFoundError, CorruptDatasetError, ChecksumError,
    UnknownDatasetError, with the path and what to do in the message.
  """
  path = pathlib.Path(path)
  if flag is not None:
    info(flag)  # unknown flags fail here, with the list
  if path.is_dir():
    if flag is None:
      raise ValueError(f"{path} is a directory: pass flag= to say which dataset to load.")
    name = INFO[flag.lower()].filename(size)
    candidates = [path / name, path / "medmnist" / name]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
      raise ds.DatasetNotFoundError(_missing_file_message(candidates[0], flag.lower(), size))
    path = found
  if not path.is_file():
    raise ds.DatasetNotFoundError(_missing_file_message(path, flag and flag.lower(), size))

  official = identify(path)
  if official is not None:
    entry, size = official
    if flag is not None and flag.lower() != entry.flag:
      raise ValueError(f"{path.name} is {entry.flag}, not {flag}.")
    if verify_md5:
      actual = md5sum(path)
      if actual != entry.md5[size]:
        raise ds.ChecksumError(
            f"{path}: MD5 {actual} differs from the official {entry.md5[size]} of "
            f"{entry.filename(size)}. The file is corrupt or not the official "
            f"release: download it again ({entry.url(size)}), or pass "
            "verify_md5=False to use it anyway."
        )
  entry = official[0] if official else (INFO[flag.lower()] if flag else None)
  name = entry.flag if entry else path.stem

  try:
    with np.load(path, allow_pickle=False) as archive:
      keys = set(archive.files)
      wanted = {f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")}
      missing = sorted(wanted - keys)
      if missing:
        raise ds.CorruptDatasetError(
            f"{path} is not a MedMNIST file: missing keys {missing} (has {sorted(keys)})."
        )
      for key in sorted(wanted):
        _check_declared_size(archive, key, path)
      arrays = {k: archive[k] for k in wanted}
  except ds.DatasetError:
    raise
  except MemoryError:
    raise ds.CorruptDatasetError(f"{path}: an array does not fit in memory.") from None
  except Exception as error:  # zipfile, zlib, struct, numpy: a damaged file raises any of them
    raise ds.CorruptDatasetError(f"{path} cannot be read as an .npz archive: "
                                 f"{one_line(error)}") from None

  spatial_dims = entry.spatial_dims if entry else _guess_spatial_dims(arrays["train_images"])
  splits = {}
  for split in SPLITS:
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if images.dtype != np.uint8:
      raise ds.CorruptDatasetError(f"{path}: {split}_images are {images.dtype}, not uint8.")
    try:
      images = ds.channel_last(images, spatial_dims)
    except ds.DatasetError as error:
      raise ds.CorruptDatasetError(f"{path}: {split}_images: {error}") from None
    if labels.dtype.kind == "f" and not np.all(np.isfinite(labels) & (labels == np.round(labels))):
      raise ds.CorruptDatasetError(f"{path}: {split}_labels are {labels.dtype} with "
                                   "non-integer values; labels are class indices.")
    if labels.dtype.kind not in "iubf":
      raise ds.CorruptDatasetError(f"{path}: {split}_labels are {labels.dtype}, not integers.")
    if labels.ndim == 1:
      labels = labels[:, None]
    if labels.ndim != 2 or len(labels) != len(images):
      raise ds.CorruptDatasetError(
          f"{path}: {split}_labels have shape {labels.shape} for {len(images)} images."
      )
    splits[split] = (images, labels.astype(np.int32))
  if not len(splits["train"][0]):
    raise ds.CorruptDatasetError(f"{path}: the train split is empty.")

  if entry is not None:
    resolved_task = entry.task
    class_names = entry.labels
  else:
    all_labels = np.concatenate([labels for _, labels in splits.values()])
    resolved_task = task or _guess_task(all_labels)
    if resolved_task == ds.MULTILABEL:
      width = all_labels.shape[1]
    else:
      width = num_classes if num_classes is not None else int(all_labels.max()) + 1
      if num_classes is None:
        _check_classes_present(path, splits["train"][1][:, 0], width)
    class_names = tuple(str(i) for i in range(width))
  if num_classes is not None and (entry is not None or resolved_task == ds.MULTILABEL):
    raise ValueError(f"num_classes applies to single-label files of your own; {name} has "
                     f"{len(class_names)} {'labels' if resolved_task == ds.MULTILABEL else 'classes'}.")
  if task is not None and task != resolved_task:
    raise ValueError(f"{name} is a {resolved_task} task, not {task}.")

  final = {}
  for split, (images, labels) in splits.items():
    if resolved_task != ds.MULTILABEL:
      if labels.shape[1] != 1:
        raise ds.CorruptDatasetError(f"{path}: {split} labels have {labels.shape[1]} columns.")
      labels = labels[:, 0]
      if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ds.CorruptDatasetError(
            f"{path}: {split} labels outside 0..{len(class_names) - 1}."
        )
    final[split] = ds.Split(images=images, labels=labels)
  return ds.Dataset(
      name=name, task=resolved_task, class_names=class_names, splits=final,
      meta={"source": str(path), "size": int(final["train"].images.shape[1]),
            "official": official is not None},
  )


def _check_declared_size(archive, key: str, path: pathlib.Path) -> None:
  """Refuses an array whose header declares more bytes than its member holds, before numpy
  allocates it (a damaged shape could ask for terabytes)."""
  member = f"{key}.npy"
  if not hasattr(archive, "zip") or member not in archive.zip.namelist():
    return
  stored = archive.zip.getinfo(member).file_size
  with archive.zip.open(member) as f:
    version = np.lib.format.read_magic(f)
    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
    shape, _, dtype = header(f)
  needed = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
  if dtype.hasobject or needed > stored:
    raise ds.CorruptDatasetError(
        f"{path}: {key} declares shape {shape} of {dtype} ({needed} bytes) but holds "
        f"{stored} bytes; the file is damaged.")


def _check_classes_present(path: pathlib.Path, train_labels: np.ndarray, width: int) -> None:
  """Every label in ``0..width-1`` must occur in training, or the labels are odd."""
  counts = np.bincount(train_labels[train_labels >= 0], minlength=width) \
      if len(train_labels) else np.zeros(width, int)
  empty = np.flatnonzero(counts == 0)
  if len(empty):
    present = ", ".join(f"{c}: {n}" for c, n in enumerate(counts) if n)
    raise ds.EmptyClassError(
        f"{path}: labels run 0..{width - 1} but class(es) {empty.tolist()} have no training "
        f"example (training counts {{{present}}}); fix the odd labels, or pass num_classes "
        f"(--num-classes) if those classes really have none.")


def _guess_spatial_dims(images: np.ndarray) -> int:
  # (N, H, W) gray, (N, H, W, 3) RGB, (N, D, H, W) volumes: a last axis of
  # 1 or 3 is channels only when it is much smaller than the others.
  if images.ndim == 3:
    return 2
  if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] > 3:
    return 2
  if images.ndim in (4, 5):
    return 3
  raise ds.CorruptDatasetError(f"cannot read images of shape {images.shape}.")


def _guess_task(labels: np.ndarray) -> str:
  if labels.shape[1] > 1:
    return ds.MULTILABEL
  return ds.BINARY if labels.max() <= 1 else ds.MULTICLASS


def resize(source: PathLike, target: PathLike, size: int) -> pathlib.Path:
  """A copy of a MedMNIST-format file with every image or volume resized to ``size``.

  For tests and benchmarks at sizes that are not on this machine (e.g. 64³
  volumes made from the 28³ set): linear interpolation (``scipy.ndimage.zoom``,
  order 1) of every spatial axis, channels kept, uint8 out, labels copied. The
  result is not an official file, so ``target`` must not carry an official
  name (its checksum would not match); call it e.g. ``adrenalmnist3d_64_resized.npz``.
  Real MedMNIST+ files at 64³ come from :func:`download` (``size=64``).
  """
  from scipy import ndimage

  source, target = pathlib.Path(source), pathlib.Path(target)
  if size < 1:
    raise ValueError(f"size must be >= 1, got {size}.")
  if identify(target) is not None:
    raise ValueError(f"{target.name} is an official MedMNIST file name; a resized copy would "
                     "fail its checksum: choose another name.")
  with np.load(source) as archive:
    arrays = {key: archive[key] for key in archive.files}
  for key in [k for k in arrays if k.endswith("_images")]:
    images = arrays[key]
    dims = _guess_spatial_dims(images)
    spatial = images.shape[1:1 + dims]
    factors = (1.0, *(size / n for n in spatial), *(1.0,) * (images.ndim - 1 - dims))
    zoomed = ndimage.zoom(images.astype(np.float32), factors, order=1, grid_mode=False)
    arrays[key] = np.clip(np.rint(zoomed), 0, 255).astype(np.uint8)
  target.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(target, **arrays)
  return target


def download(
    flag: str,
    size: int = 28,
    root: PathLike = ".",
    *,
    url: Optional[str] = None,
    md5: Optional[str] = None,
    force: bool = False,
    timeout: float = 60.0,
) -> pathlib.Path:
  """Downloads an official MedMNIST file into ``root`` and verifies its MD5.

  The file is written under a temporary name and moved into place only after
  its checksum matched, so an interrupted or corrupt download never leaves a
  file that :func:`load` would accept. ``url`` and ``md5`` override the
  official ones (a mirror). Returns the path of the verified file; an
  existing verified file is kept unless ``force``.
  """
  entry = info(flag)
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  target = root / entry.filename(size)
  expected = md5 or entry.md5[size]
  if target.is_file() and not force and md5sum(target) == expected:
    return target
  source = url or entry.url(size)
  fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=root)
  try:
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(source, timeout=timeout) as response:
      shutil.copyfileobj(response, out)
    actual = md5sum(tmp)
    if actual != expected:
      raise ds.ChecksumError(
          f"downloaded {source}: MD5 {actual}, expected {expected}; nothing was kept."
      )
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return target
