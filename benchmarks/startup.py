"""Start-up of `sam-jax train`: a first run (empty compilation cache) against a second one.

    python -m benchmarks.startup [--optimizers sgd sam] [--epochs 1]

Each configuration (BreastMNIST, ``--preset cpu``: ResNet-18 width 1/8, 28 px)
trains ``--epochs`` epochs twice in fresh processes sharing one new,
empty persistent compilation cache (``XDG_CACHE_HOME`` pointed at a
temporary directory, so the CLI's default cache is the one measured). The
wall time of each process is reported; the difference is what the cache
saves a grid on every run after its first. Needs the BreastMNIST file
(``SAM_JAX_DATA_DIR``). Writes ``startup_<backend>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time


def timed_run(optimizer: str, epochs: int, cache_home: str, workdir: str) -> float:
  env = {**os.environ, "XDG_CACHE_HOME": cache_home}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  command = [sys.executable, "-m", "sam_jax.cli", "train", "--preset", "cpu", "--dataset",
             "breastmnist", "--optimizer", optimizer, "--epochs", str(epochs), "--workdir",
             workdir, "--no-progress"]
  start = time.perf_counter()
  subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
  return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--optimizers", nargs="+", default=["sgd", "sam"])
  parser.add_argument("--epochs", type=int, default=1)
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
  args = parser.parse_args()
  rows = []
  for optimizer in args.optimizers:
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as runs:
      first = timed_run(optimizer, args.epochs, cache, os.path.join(runs, "first"))
      second = timed_run(optimizer, args.epochs, cache, os.path.join(runs, "second"))
      cached = sum(f.stat().st_size for f in pathlib.Path(cache).rglob("*") if f.is_file())
    rows.append({"optimizer": optimizer, "first_s": first, "second_s": second,
                 "cache_bytes": cached})
    print(rows[-1], flush=True)
  import jax

  backend = jax.default_backend()
  command = (f"python -m benchmarks.startup --optimizers {' '.join(args.optimizers)} "
             f"--epochs {args.epochs}")
  lines = [f"# Start-up of `sam-jax train` with the persistent compilation cache ({backend})", "",
           f"Wall time of a whole `sam-jax train --preset cpu --dataset breastmnist --epochs "
           f"{args.epochs}` process: the first with an empty cache, the second reusing it. "
           f"Command: `{command}`.", "",
           "| optimizer | first run s | second run s | saved s | cache MiB |", "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['optimizer']} | {r['first_s']:.1f} | {r['second_s']:.1f} | "
                 f"{r['first_s'] - r['second_s']:.1f} | {r['cache_bytes'] / 2**20:.1f} |")
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / f"startup_{backend}.json").write_text(json.dumps(
      {"command": command, "backend": backend, "rows": rows}, indent=2))
  (args.out / f"startup_{backend}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
