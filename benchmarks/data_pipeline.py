"""Data pipeline timings: preparing BUSI, and images/s from host batches to augmented device arrays.

    python -m benchmarks.data_pipeline [--data-dir ../shared/data] [--out benchmarks/results]

Measures, on whatever device JAX uses:

* BUSI preparation at 224 px (scan the zip, hash, find duplicates, split,
  decode and resize 778 PNGs): cold, and again from the array cache;
* throughput of the training input path: ``train_batches`` (host gather of
  uint8) -> ``jax.device_put`` -> jitted :func:`augment` (flip, 10° rotation,
  2 px shift) -> ``block_until_ready``, at 28 px (BreastMNIST, batch 128) and
  224 px (BUSI, batch 32). Median of repeated epochs after one warm-up.

Writes ``data_pipeline.json`` and ``data_pipeline.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import tempfile
import time

import jax

from sam_jax import data
from sam_jax.data import folders
from sam_jax.data.augment import AugmentConfig, augment


def time_busi_preparation(data_dir: pathlib.Path, size: int) -> dict:
  source = data_dir / "busi"
  with tempfile.TemporaryDirectory() as cache:
    start = time.perf_counter()
    dataset = folders.load_folder(source, "busi", size=size, cache_dir=cache)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    folders.load_folder(source, "busi", size=size, cache_dir=cache)
    cached = time.perf_counter() - start
  return {"images": sum(len(s) for s in dataset.splits.values()), "size": size,
          "cold_s": cold, "cached_s": cached}


def throughput(split, batch_size: int, config: AugmentConfig, repeats: int) -> dict:
  step = jax.jit(lambda key, images: augment(key, images, config))
  key = jax.random.key(0)

  def one_epoch(epoch):
    count = 0
    out = None
    for batch in data.train_batches(split, batch_size, seed=0, epoch=epoch):
      out = step(jax.random.fold_in(key, count), jax.device_put(batch["image"]))
      count += batch["image"].shape[0]
    out.block_until_ready()
    return count

  one_epoch(0)  # compile
  rates = []
  for epoch in range(1, repeats + 1):
    start = time.perf_counter()
    count = one_epoch(epoch)
    rates.append(count / (time.perf_counter() - start))
  return {"batch_size": batch_size, "images_per_epoch": count,
          "images_per_s_median": statistics.median(rates), "epochs_timed": repeats}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data-dir", type=pathlib.Path, default=data.default_data_dir()
                      or pathlib.Path(__file__).resolve().parents[2] / "shared" / "data")
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  config = AugmentConfig.standard_2d()
  results = {
      "device": str(jax.devices()[0]),
      "platform": platform.platform(),
      "jax": jax.__version__,
      "busi_preparation": time_busi_preparation(args.data_dir, 224),
  }
  breast = data.load_dataset("breastmnist", args.data_dir)
  results["throughput_28px"] = {"dataset": "breastmnist", **throughput(
      breast["train"], 128, config, args.repeats)}
  busi = folders.load_folder(args.data_dir / "busi", "busi", size=224)
  results["throughput_224px"] = {"dataset": "busi", **throughput(
      busi["train"], 32, config, args.repeats)}

  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "data_pipeline.json").write_text(json.dumps(results, indent=2))
  prep = results["busi_preparation"]
  lines = [
      f"# Data pipeline ({results['device']}, jax {results['jax']})",
      "",
      "| measurement | value |",
      "|---|---|",
      f"| BUSI at 224 px, {prep['images']} images: prepare (cold) | {prep['cold_s']:.2f} s |",
      f"| BUSI at 224 px: load from the array cache | {prep['cached_s']:.2f} s |",
  ]
  for key, px in (("throughput_28px", 28), ("throughput_224px", 224)):
    r = results[key]
    lines.append(f"| {r['dataset']} at {px} px, batch {r['batch_size']}: host batch -> device "
                 f"-> augment | {r['images_per_s_median']:,.0f} images/s |")
  (args.out / "data_pipeline.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
