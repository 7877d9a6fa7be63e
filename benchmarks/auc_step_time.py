"""Train-step time of the deep-AUC objectives and optimizers, as a ratio to CE + Adam.

    python -m benchmarks.auc_step_time [--models resnet18:0.25] [--batch-size 128]
                                       [--rounds 5] [--steps 2]

Each configuration (objective + optimizer chain) runs through the same jitted
train step (``make_train_step``, state donated) on the same model and batch
(random 28x28x1 ``uint8`` images, half of them positive, with dataset
indices), after compilation. Rounds interleave the configurations; the
reported time is the median over every timed step, the ratio is to CE +
Adam's median in the same process. Writes ``auc_step_time_<backend>.{json,md}``
into ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import sam_jax
from benchmarks.step_time import parse_model, time_interleaved
from sam_jax import auc, models
from sam_jax.train import objectives, parallel
from sam_jax.train.state import create_train_state
from sam_jax.train.step import make_train_step


def configurations(n: int) -> dict:
  """name -> (objective, optax chain), with LibAUC's recipe settings."""
  pesg = lambda: auc.pesg(0.1, momentum=0.9, momentum_convention="libauc", epoch_decay=3e-3)
  aucm = objectives.aucm("binary", None, margin=1.0, version="v2")
  ap = objectives.ap("binary", n, margin=0.6, gamma=0.1, surrogate="squared_hinge")
  pauc = objectives.pauc_cvar("binary", n, beta=0.1, eta=0.1, margin=1.0,
                              surrogate="squared_hinge", num_positives=None)
  return {
      "ce + adam": (objectives.cross_entropy("binary"), optax.adam(1e-3)),
      "aucm + pesg": (aucm, pesg()),
      "sam + aucm + pesg": (aucm, optax.chain(sam_jax.sam(0.05), pesg())),
      "ap + soap": (ap, auc.soap(1e-3)),
      "sam + ap + soap": (ap, optax.chain(sam_jax.sam(0.05), auc.soap(1e-3))),
      "pauc_cvar + sopa": (pauc, auc.sopa(1e-3)),
      "sam + adam (ce)": (objectives.cross_entropy("binary"),
                          optax.chain(sam_jax.sam(0.05), optax.adam(1e-3))),
  }


def benchmark_model(spec: str, batch_size: int, rounds: int, steps: int) -> dict:
  name, kwargs, label = parse_model(spec)
  model = models.create_model(name, 2, **kwargs)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (batch_size, 28, 28, 1), dtype=np.uint8),
           "label": (np.arange(batch_size) % 2).astype(np.int32),
           "index": np.arange(batch_size, dtype=np.int32)}
  batch = jax.device_put(batch)
  apply_fn, params, model_state = models.from_linen(model, jax.random.key(0), batch["image"][:1])
  runs, compile_s = {}, {}
  for method, (objective, tx) in configurations(batch_size).items():
    state = create_train_state(jax.tree.map(jnp.copy, params),
                               jax.tree.map(jnp.copy, model_state), tx, objective)
    step = parallel.jit_step(functools.partial(make_train_step, apply_fn, objective, tx,
                                               task="binary"))
    start = time.perf_counter()
    state, metrics = step(state, batch, jax.random.key(0))
    jax.block_until_ready(metrics)
    compile_s[method] = time.perf_counter() - start
    runs[method] = {"step": step, "state": state, "times": []}
  time_interleaved(runs, batch, rounds, steps)
  reference = statistics.median(runs["ce + adam"]["times"])
  table = {method: {"median_s": statistics.median(run["times"]),
                    "ratio_to_ce_adam": statistics.median(run["times"]) / reference,
                    "compile_s": compile_s[method], "timed_steps": len(run["times"])}
           for method, run in runs.items()}
  return {"model": label, "params": int(sum(x.size for x in jax.tree.leaves(params))),
          "batch_size": batch_size, "methods": table}


def to_markdown(results: dict) -> str:
  lines = [f"# Deep-AUC step time ({results['backend']}: {results['device']}, jax {results['jax']})",
           "", "Median seconds per train step after compilation; ratio to CE + Adam in the same "
           "process. Command: `" + results["command"] + "`.", ""]
  for block in results["runs"]:
    lines += [f"## {block['model']} ({block['params']:,} parameters), 28x28x1, batch "
              f"{block['batch_size']}", "", "| configuration | s/step | / CE+Adam | compile s |",
              "|---|---|---|---|"]
    for method, row in block["methods"].items():
      lines.append(f"| {method} | {row['median_s']:.4f} | {row['ratio_to_ce_adam']:.2f} | "
                   f"{row['compile_s']:.1f} |")
    lines.append("")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=["resnet18:0.25"])
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
  args = parser.parse_args()
  backend = jax.default_backend()
  results = {"backend": backend, "device": jax.devices()[0].device_kind, "jax": jax.__version__,
             "host": platform.platform(),
             "command": "python -m benchmarks.auc_step_time --models " + " ".join(args.models)
                        + f" --batch-size {args.batch_size} --rounds {args.rounds} "
                        f"--steps {args.steps}",
             "runs": []}
  args.out.mkdir(parents=True, exist_ok=True)
  for spec in args.models:
    results["runs"].append(benchmark_model(spec, args.batch_size, args.rounds, args.steps))
    (args.out / f"auc_step_time_{backend}.json").write_text(json.dumps(results, indent=2))
    (args.out / f"auc_step_time_{backend}.md").write_text(to_markdown(results))
  print(to_markdown(results), flush=True)


if __name__ == "__main__":
  main()
