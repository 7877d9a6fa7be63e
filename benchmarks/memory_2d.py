"""Peak memory of the compiled SGD and SAM steps (and the cheap variants), 2-D models.

    python -m benchmarks.memory_2d [--configs resnet18:28:128 resnet18:224:32 vit_s:224:32]
                                   [--methods sgd sam looksam ...]

For each model (``name:size:batch``; ResNet-18 with the CIFAR stem at 28 px
and the ImageNet stem at 224 px, ViT-S/16 at 224 px; 3 channels at 224, 1 at
28, 2 classes) and each method (SGD with momentum; SAM, LookSAM, AE-SAM,
randomized SAM before it; the variants with ``skip="select"`` and ``"cond"``),
with and without rematerialization (``remat=True``: each residual/encoder
block recomputed in the backward pass), the jitted train step (state
donated) is compiled, not run, and XLA's memory analysis read (with
``--cpu-schedule memory``, XLA:CPU's concurrency-optimized scheduler off, as
``sam-jax --cpu-schedule memory`` does): the peak
(``sam_jax.train.memory.compiled_bytes``: arguments + outputs + temporaries
− aliased), the temporaries, and SAM's excess over SGD in units of one
float32 parameter-sized buffer (the issue's goal: at most 1). Compile-only,
so it does not disturb (nor is disturbed by) other work on the machine.
Writes ``memory_2d_<backend>.json`` and ``.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform

import jax
import numpy as np
import optax

import sam_jax
from sam_jax import models
from sam_jax.train import memory
from sam_jax.train.losses import softmax_cross_entropy
from sam_jax.train.state import create_train_state
from sam_jax.train.step import make_train_step

LR, RHO = 0.01, 0.05


def method_table() -> dict:
  sgd = lambda: optax.sgd(LR, momentum=0.9)
  table = {"sgd": sgd, "sam": lambda: optax.chain(sam_jax.sam(RHO), sgd())}
  for skip in ("select", "cond"):
    table[f"looksam ({skip})"] = lambda s=skip: optax.chain(sam_jax.looksam(RHO, skip=s), sgd())
    table[f"ae_sam ({skip})"] = lambda s=skip: optax.chain(sam_jax.ae_sam(RHO, skip=s), sgd())
    table[f"randomized_sam ({skip})"] = lambda s=skip: optax.chain(
        sam_jax.randomized_sam(RHO, skip=s), sgd())
  return table


def model_for(name: str, size: int, remat: bool):
  if name.startswith("vit"):
    return models.create_model(name, 2, patch_size=16 if size >= 224 else 4, remat=remat)
  return models.create_model(name, 2, stem="imagenet" if size >= 224 else "cifar", remat=remat)


def analyse(name: str, size: int, batch_size: int, method: str, remat: bool,
            schedule: str = "speed") -> dict:
  channels = 3 if size >= 224 else 1
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (batch_size, size, size, channels), dtype=np.uint8),
           "label": rng.integers(0, 2, batch_size).astype(np.int32)}
  model = model_for(name, size, remat)
  apply_fn, params, model_state = models.from_linen(model, jax.random.key(0), batch["image"][:1])
  tx = method_table()[method]()
  state = create_train_state(params, model_state, tx)
  step = jax.jit(make_train_step(apply_fn, softmax_cross_entropy(), tx), donate_argnums=(0,))
  compiled = step.lower(state, batch, jax.random.key(0)).compile()
  analysis = compiled.memory_analysis()
  n_params = int(sum(x.size for x in jax.tree.leaves(params)))
  return {"model": name, "size": size, "batch_size": batch_size, "method": method,
          "remat": remat, "schedule": schedule, "params": n_params,
          "param_bytes": 4 * n_params,
          "peak_bytes": memory.compiled_bytes(compiled),
          "temp_bytes": int(analysis.temp_size_in_bytes),
          "argument_bytes": int(analysis.argument_size_in_bytes)}


def to_markdown(results: dict) -> str:
  lines = [f"# Peak memory of the compiled train step ({results['backend']}, jax {results['jax']})",
           "", "XLA's compiled memory analysis (the step is compiled, not run): peak = arguments + "
           "outputs + temporaries − aliased (donated state). 'SAM − SGD' is the method's peak "
           "minus SGD's (same model, same remat), in float32 parameter-sized buffers. Command: `"
           + results["command"] + "`.", ""]
  blocks: dict = {}
  for row in results["rows"]:
    blocks.setdefault((row["model"], row["size"], row["batch_size"]), []).append(row)
  for (name, size, batch), rows in blocks.items():
    lines += [f"## {name} at {size} px, batch {batch} ({rows[0]['params']:,} parameters, "
              f"{rows[0]['param_bytes'] / 2**20:.1f} MiB)", "",
              "| method | remat | schedule | peak MiB | temporaries MiB | − SGD (param buffers) |",
              "|---|---|---|---|---|---|"]
    for row in rows:
      schedule = row.get("schedule", "speed")
      sgd = next(r for r in rows if r["method"] == "sgd" and r["remat"] == row["remat"]
                 and r.get("schedule", "speed") == schedule)
      excess = (row["peak_bytes"] - sgd["peak_bytes"]) / row["param_bytes"]
      lines.append(f"| {row['method']} | {'yes' if row['remat'] else 'no'} | {schedule} | "
                   f"{row['peak_bytes'] / 2**20:.0f} | {row['temp_bytes'] / 2**20:.0f} | "
                   f"{excess:+.2f} |")
    lines.append("")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", nargs="+",
                      default=["resnet18:28:128", "resnet18:224:32", "vit_s:224:32"])
  parser.add_argument("--methods", nargs="+", default=list(method_table()),
                      choices=list(method_table()))
  parser.add_argument("--remat", nargs="+", type=int, default=[0, 1], choices=[0, 1])
  parser.add_argument("--cpu-schedule", default="speed", choices=memory.CPU_SCHEDULES,
                      help="how XLA:CPU orders the steps (sam-jax --cpu-schedule); the "
                           "results of 'memory' go to memory_2d_<backend>_memory.{json,md}")
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
  args = parser.parse_args()
  schedule = memory.use_cpu_schedule(args.cpu_schedule)  # before JAX starts
  backend = jax.default_backend()
  stem = f"memory_2d_{backend}" + ("_memory" if schedule == "memory" else "")
  results = {"backend": backend, "jax": jax.__version__, "host": platform.platform(),
             "command": "python -m benchmarks.memory_2d --configs " + " ".join(args.configs)
                        + " --methods " + " ".join(f"'{m}'" if " " in m else m
                                                   for m in args.methods)
                        + " --remat " + " ".join(map(str, args.remat))
                        + ("" if args.cpu_schedule == "speed"
                           else f" --cpu-schedule {args.cpu_schedule}"),
             "rows": []}
  args.out.mkdir(parents=True, exist_ok=True)
  for spec in args.configs:
    name, size, batch = spec.split(":")
    for remat in args.remat:
      for method in args.methods:
        row = analyse(name, int(size), int(batch), method, bool(remat), schedule)
        results["rows"].append(row)
        print(f"{spec} {method} remat={remat}: peak {row['peak_bytes'] / 2**20:.0f} MiB",
              flush=True)
      (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2))
      (args.out / f"{stem}.md").write_text(to_markdown(results))
  print(to_markdown(results), flush=True)


if __name__ == "__main__":
  main()
