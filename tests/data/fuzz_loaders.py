"""A fuzzer for the dataset loaders: damaged .npz files, zips and image folders.

    python -m tests.data.fuzz_loaders --cases 2000 --seed 0 [--out report.json]

Each case takes a valid small file (a MedMNIST-format .npz, compressed or
not; a zip of class folders; one PNG of a class folder), damages it (a
truncation, flipped bits, random bytes over its header or its zip directory,
or, for .npz, a random shape written into an array header) and loads it. A
case passes when the loader returns a dataset or raises one of the library's
documented errors (:class:`~sam_jax.data.DatasetError` and
:class:`~sam_jax.data.DatasetNotFoundError`); anything else, or a case that
takes longer than ``--case-seconds``, fails. The process runs under an
address-space limit (``--memory-gib``), so a damaged header that makes a
loader allocate without bound fails as a MemoryError instead of swapping.
Exit status 1 when a case failed; the report lists each failure's seed.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import pathlib
import re
import resource
import sys
import tempfile
import time
import traceback
import zipfile

import numpy as np

KINDS = ("npz", "npz_uncompressed", "zip", "folder_image")
DAMAGES = ("truncate", "bitflip", "head", "tail", "npy_shape")


def valid_files(rng) -> dict[str, bytes]:
  """The undamaged inputs, by kind."""
  from tests.data.synthetic import png_bytes, random_image

  arrays = {}
  for split, n in (("train", 12), ("val", 4), ("test", 4)):
    arrays[f"{split}_images"] = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    arrays[f"{split}_labels"] = (np.arange(n) % 2)[:, None].astype(np.uint8)
  compressed, plain = io.BytesIO(), io.BytesIO()
  np.savez_compressed(compressed, **arrays)
  np.savez(plain, **arrays)
  zipped = io.BytesIO()
  with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
    for c in "ab":
      for i in range(4):
        archive.writestr(f"set/{c}/{i}.png", png_bytes(random_image(rng, (12, 12))))
  return {"npz": compressed.getvalue(), "npz_uncompressed": plain.getvalue(),
          "zip": zipped.getvalue(), "folder_image": png_bytes(random_image(rng, (12, 12)))}


def damage(data: bytes, how: str, rng) -> bytes:
  data = bytearray(data)
  if how == "truncate":
    return bytes(data[: int(rng.integers(0, len(data)))])
  if how == "bitflip":
    for _ in range(int(rng.integers(1, 17))):
      i = int(rng.integers(0, len(data)))
      data[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(data)
  if how in ("head", "tail"):
    span = min(128, len(data))
    start = 0 if how == "head" else len(data) - span
    for _ in range(int(rng.integers(1, 9))):
      data[start + int(rng.integers(0, span))] = int(rng.integers(0, 256))
    return bytes(data)
  if how == "npy_shape":  # a plausible header with an implausible shape
    text = bytes(data)
    matches = list(re.finditer(rb"'shape': \(([0-9, ]*)\)", text))
    if not matches:
      return damage(bytes(data), "bitflip", rng)
    match = matches[int(rng.integers(0, len(matches)))]
    dims = ", ".join(str(int(rng.choice([0, 1, 7, 10**5, 10**9, 2**40])))
                     for _ in range(int(rng.integers(1, 5))))
    new = f"'shape': ({dims},)".encode()
    return text[: match.start()] + new + text[match.end():]
  raise ValueError(how)


def load(kind: str, data: bytes, workdir: pathlib.Path):
  from sam_jax.data import folders, medmnist
  from tests.data.synthetic import png_bytes, random_image

  if kind.startswith("npz"):
    path = workdir / "fuzz.npz"
    path.write_bytes(data)
    return medmnist.load(path)
  if kind == "zip":
    path = workdir / "fuzz.zip"
    path.write_bytes(data)
    return folders.load_folder(path, folders.FolderSpec("fuzz"), size=8)
  root = workdir / "tree"
  rng = np.random.default_rng(0)
  for c in "ab":
    (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(3):
      (root / c / f"{i}.png").write_bytes(png_bytes(random_image(rng, (12, 12))))
  (root / "a" / "0.png").write_bytes(data)
  return folders.load_folder(root, folders.FolderSpec("fuzz"), size=8)


def run(cases: int, seed: int, case_seconds: float) -> dict:
  from sam_jax.data import DatasetError, DatasetNotFoundError

  documented = (DatasetError, DatasetNotFoundError)
  originals = valid_files(np.random.default_rng(seed))
  outcomes: collections.Counter = collections.Counter()
  failures = []
  slowest = 0.0
  with tempfile.TemporaryDirectory() as tmp:
    for case in range(cases):
      rng = np.random.default_rng([seed, case])
      kind = KINDS[case % len(KINDS)]
      how = DAMAGES[int(rng.integers(0, len(DAMAGES)))]
      data = damage(originals[kind], how, rng)
      workdir = pathlib.Path(tmp) / str(case)
      workdir.mkdir()
      start = time.perf_counter()
      try:
        load(kind, data, workdir)
        outcome = "loaded"
      except documented as error:
        outcome = type(error).__name__
      except BaseException as error:  # noqa: BLE001 - what the fuzzer is looking for
        outcome = "FAILED"
        failures.append({"case": case, "kind": kind, "damage": how,
                         "error": f"{type(error).__name__}: {error}"[:300],
                         "where": traceback.format_exc().splitlines()[-3:]})
      seconds = time.perf_counter() - start
      slowest = max(slowest, seconds)
      if seconds > case_seconds and outcome != "FAILED":
        failures.append({"case": case, "kind": kind, "damage": how,
                         "error": f"took {seconds:.1f} s"})
      outcomes[f"{kind}/{outcome}"] += 1
  peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return {"cases": cases, "seed": seed, "failures": failures, "slowest_case_s": round(slowest, 3),
          "peak_rss_mib": round(peak_mib), "outcomes": dict(sorted(outcomes.items()))}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", type=int, default=200)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--case-seconds", type=float, default=10.0)
  parser.add_argument("--memory-gib", type=float, default=4.0)
  parser.add_argument("--out", help="also write the report here (JSON)")
  args = parser.parse_args(argv)
  limit = int(args.memory_gib * 2**30)
  resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  report = run(args.cases, args.seed, args.case_seconds)
  text = json.dumps(report, indent=1)
  if args.out:
    pathlib.Path(args.out).write_text(text + "\n")
  print(text)
  return 1 if report["failures"] else 0


if __name__ == "__main__":
  sys.exit(main())
