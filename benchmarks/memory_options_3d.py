"""Peak memory and step time of a 3-D train step with rematerialization and accumulation.

    python -m benchmarks.memory_options_3d [--config 64:0.125:32] [--methods sgd sam]
                                           [--time sgd] [--rounds 2]

ResNet-18 3D (CIFAR stem, the fast CPU convolutions) on one random batch,
for each method (SGD with momentum 0.9; SAM before it) and each variant:

* ``plain``: the step of ``sam-jax train``;
* ``remat``: ``--remat`` (each residual block recomputed in the backward pass);
* ``accumulate K``: ``--accumulation-steps K`` (K micro-batches in turn);
* ``remat + accumulate K``: both.

Peak memory is XLA's compiled memory analysis of the jitted step
(``sam_jax.train.memory.compiled_bytes``: arguments + outputs + temporaries
- aliased + code), the figure ``sam-jax train`` checks before a run; the
temporaries (activations and gradients) are also listed. Step time is the
median over ``--rounds`` rounds, variants taking turns, after a warm-up, for
the methods in ``--time`` (``--time`` with no method: memory only). Writes
``memory_options_3d_<backend>.json`` and ``.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import jax
import numpy as np
import optax

import sam_jax
from benchmarks.timing import interleaved_medians
from sam_jax import models
from sam_jax.train import memory
from sam_jax.train.losses import softmax_cross_entropy
from sam_jax.train.state import create_train_state
from sam_jax.train.step import make_train_step

LR, RHO = 0.01, 0.05
METHODS = {"sgd": lambda: optax.sgd(LR, momentum=0.9),
           "sam": lambda: optax.chain(sam_jax.sam(RHO), optax.sgd(LR, momentum=0.9))}


def variants(k: int) -> dict[str, tuple[bool, int]]:
  return {"plain": (False, 1), "remat": (True, 1), f"accumulate {k}": (False, k),
          f"remat + accumulate {k}": (True, k)}


def compiled_step(width: float, method: str, remat: bool, k: int, batch: dict):
  """The jitted step compiled for ``batch``, a closure running it on its own state, the
  compile time and XLA's memory analysis."""
  model = models.create_model("resnet18_3d", 2, width=width, remat=remat)
  apply_fn, params, model_state = models.from_linen(model, jax.random.key(0), batch["image"][:1])
  tx = METHODS[method]()
  state = create_train_state(params, model_state, tx)
  step = jax.jit(make_train_step(apply_fn, softmax_cross_entropy(), tx, accumulation_steps=k),
                 donate_argnums=(0,))
  start = time.perf_counter()
  compiled = step.lower(state, batch, jax.random.key(0)).compile()
  compile_s = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], batch, jax.random.key(0))
    return holder["state"], metrics

  return run, compile_s, {"peak_bytes": memory.compiled_bytes(compiled),
                          "temp_bytes": int(analysis.temp_size_in_bytes)}


def to_markdown(results: dict) -> str:
  size, width, batch = results["size"], results["width"], results["batch_size"]
  lines = [f"# ResNet-18 3D step, {batch}x{size}^3, width {width}: memory options "
           f"({results['backend']}, jax {results['jax']})", "",
           "Peak: XLA's compiled memory analysis of the jitted step (what `sam-jax train` checks "
           "before a run); temporaries are the activations and gradients. Time: median seconds "
           f"per step over {results['rounds']} rounds, variants taking turns, after a warm-up. "
           f"Command: `{results['command']}`.", "",
           "| method | variant | peak MiB | temporaries MiB | peak / plain | s/step | time / plain | compile s |",
           "|---|---|---|---|---|---|---|---|"]
  for row in results["rows"]:
    plain = next(r for r in results["rows"] if r["method"] == row["method"] and r["variant"] == "plain")
    timed = row.get("median_s") is not None and plain.get("median_s")
    lines.append(
        f"| {row['method']} | {row['variant']} | {row['peak_bytes'] / 2**20:.0f} | "
        f"{row['temp_bytes'] / 2**20:.0f} | {row['peak_bytes'] / plain['peak_bytes']:.2f} | "
        + (f"{row['median_s']:.2f} | {row['median_s'] / plain['median_s']:.2f}" if timed else " | ")
        + f" | {row['compile_s']:.1f} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="64:0.125:32", help="size:width:batch")
  parser.add_argument("--methods", nargs="+", default=["sgd", "sam"], choices=sorted(METHODS))
  parser.add_argument("--time", nargs="*", default=["sgd"], choices=sorted(METHODS),
                      help="methods whose variants are timed (none: memory only)")
  parser.add_argument("--accumulation-steps", type=int, default=4)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
  args = parser.parse_args()
  size, width, batch_size = args.config.split(":")
  size, width, batch_size = int(size), float(width), int(batch_size)
  rng = np.random.default_rng(0)
  batch = jax.device_put({
      "image": rng.integers(0, 256, (batch_size, size, size, size, 1), dtype=np.uint8),
      "label": rng.integers(0, 2, batch_size).astype(np.int32)})
  backend = jax.default_backend()
  results = {"backend": backend, "jax": jax.__version__, "host": platform.platform(),
             "size": size, "width": width, "batch_size": batch_size, "rounds": args.rounds,
             "command": f"python -m benchmarks.memory_options_3d --config {args.config} --methods "
                        f"{' '.join(args.methods)} --time {' '.join(args.time)} --accumulation-steps "
                        f"{args.accumulation_steps} --rounds {args.rounds}",
             "rows": []}
  runs = {}
  for method in args.methods:
    for variant, (remat, k) in variants(args.accumulation_steps).items():
      run, compile_s, figures = compiled_step(width, method, remat, k, batch)
      results["rows"].append({"method": method, "variant": variant, "remat": remat,
                              "accumulation_steps": k, "compile_s": compile_s, **figures})
      print(f"{method} {variant}: peak {figures['peak_bytes'] / 2**20:.0f} MiB, compiled in "
            f"{compile_s:.1f} s", flush=True)
      if method in args.time:
        runs[(method, variant)] = run
  if runs:
    medians = interleaved_medians(runs, args.rounds)
    for row in results["rows"]:
      row["median_s"] = medians.get((row["method"], row["variant"]))
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / f"memory_options_3d_{backend}.json").write_text(json.dumps(results, indent=2))
  (args.out / f"memory_options_3d_{backend}.md").write_text(to_markdown(results))
  print(to_markdown(results), flush=True)


if __name__ == "__main__":
  main()
