"""Train-step time of every method, as a ratio to SGD, on one model and batch.

    python -m benchmarks.step_time [--models resnet18:1.0 resnet18:0.25 vit_ti:4]
                                   [--batch-size 128] [--rounds 3] [--steps 2]

Every method runs through the same jitted train step (``make_train_step``,
state donated) on the same model, batch (random 28x28x1 ``uint8`` images, 2
classes) and base optimizer (SGD with momentum), after compilation. So the
ratios measure what each method adds to SGD's forward/backward pass, and
``optax.contrib.sam`` in opaque mode (normalized-SGD adversary, the paper's
SAM) is timed in the very same step for comparison.

Timing: ``rounds`` rounds; in each, every method runs ``steps`` steps, each
timed to ``block_until_ready``. Interleaving the methods spreads a noisy
machine's load over all of them; the reported time is the median over all
timed steps. Ratios are to SGD's median in the same process.

Writes ``step_time_<backend>.json`` and ``step_time_<backend>.md`` into
``--out`` (default ``benchmarks/results``). CPU by default; on a machine
with a GPU, JAX uses it and the file names say so.
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
from sam_jax import models
from sam_jax.train import parallel
from sam_jax.train.losses import softmax_cross_entropy
from sam_jax.train.state import create_train_state
from sam_jax.train.step import make_train_step

LR = 0.05


def contrib_sam(rho: float) -> optax.GradientTransformationExtraArgs:
  """optax.contrib.sam (opaque mode, SGD outer) behind our grad_fn contract."""
  inner = optax.contrib.sam(
      optax.sgd(LR, momentum=0.9),
      optax.chain(optax.contrib.normalize(), optax.sgd(rho)),
      sync_period=2, opaque_mode=True)

  def update(updates, state, params=None, *, grad_fn, **extra):
    del extra
    return inner.update(updates, state, params, grad_fn=lambda p, i: grad_fn(p)[0])

  return optax.GradientTransformationExtraArgs(inner.init, update)


def methods() -> dict[str, optax.GradientTransformation]:
  sgd = lambda: optax.sgd(LR, momentum=0.9)
  return {
      "sgd": sgd(),
      "sam": optax.chain(sam_jax.sam(0.05), sgd()),
      "optax.contrib.sam": contrib_sam(0.05),
      "asam": optax.chain(sam_jax.asam(0.5, 0.01), sgd()),
      "gsam": optax.chain(sam_jax.gsam(0.05, alpha=0.1), sgd()),
      "wsam": sam_jax.wsam(0.05, 0.9, base_optimizer=sgd(), learning_rate=LR),
      "crsam (vmapped pair)": optax.chain(sam_jax.crsam(0.1, 0.1, 0.1, batched=True), sgd()),
      "crsam (two calls)": optax.chain(sam_jax.crsam(0.1, 0.1, 0.1, batched=False), sgd()),
      "gcsam": optax.chain(sam_jax.gcsam(0.05), sgd()),
      "friendly_sam": optax.chain(sam_jax.friendly_sam(0.05), sgd()),
      "stable_sam": optax.chain(sam_jax.stable_sam(0.05), sgd()),
  }


PASSES = {"sgd": 1, "crsam (vmapped pair)": 3, "crsam (two calls)": 3}


def parse_model(spec: str):
  """``resnet18:0.25`` (width) or ``vit_ti:4`` (patch size)."""
  name, _, arg = spec.partition(":")
  if name.startswith("vit"):
    return name, {"patch_size": int(arg or 4)}, f"{name} patch {int(arg or 4)}"
  return name, {"width": float(arg or 1.0)}, f"{name} width {float(arg or 1.0)}"


def time_interleaved(runs: dict, batch: dict, rounds: int, steps: int) -> None:
  """Appends each run's step times to ``run["times"]``, the runs taking turns in rounds.

  ``runs`` maps a name to ``{"step", "state", "times"}``; interleaving spreads a
  busy machine's noise over all of them.
  """
  for r in range(rounds):
    for run in runs.values():
      for i in range(steps):
        start = time.perf_counter()
        run["state"], metrics = run["step"](run["state"], batch, jax.random.key(r * steps + i))
        jax.block_until_ready((run["state"], metrics))
        run["times"].append(time.perf_counter() - start)


def sam_steps(opt_state):
  """How many updates took the second pass, for the methods that count them (else None)."""
  counts = [x.sam_steps for x in jax.tree.leaves(
      opt_state, is_leaf=lambda x: hasattr(x, "sam_steps")) if hasattr(x, "sam_steps")]
  return int(counts[0]) if counts else None


def benchmark_model(spec: str, batch_size: int, rounds: int, steps: int, only,
                    method_table=methods) -> dict:
  name, kwargs, label = parse_model(spec)
  model = models.create_model(name, 2, **kwargs)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (batch_size, 28, 28, 1), dtype=np.uint8),
           "label": rng.integers(0, 2, batch_size).astype(np.int32)}
  batch = jax.device_put(batch)
  apply_fn, params, model_state = models.from_linen(model, jax.random.key(0), batch["image"][:1])
  loss = softmax_cross_entropy()
  runs, compile_s = {}, {}
  for method, tx in method_table().items():
    if only and method not in only:
      continue
    state = create_train_state(jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, model_state), tx)
    step = parallel.jit_step(functools.partial(make_train_step, apply_fn, loss, tx))
    start = time.perf_counter()
    state, metrics = step(state, batch, jax.random.key(0))
    jax.block_until_ready(metrics)
    compile_s[method] = time.perf_counter() - start
    runs[method] = {"step": step, "state": state, "times": [],
                    "sam_steps_before": sam_steps(state.opt_state)}
  time_interleaved(runs, batch, rounds, steps)
  sgd = statistics.median(runs["sgd"]["times"]) if "sgd" in runs else None
  table = {}
  for method, run in runs.items():
    median = statistics.median(run["times"])
    mean = statistics.fmean(run["times"])
    before, after = run["sam_steps_before"], sam_steps(run["state"].opt_state)
    table[method] = {"median_s": median, "ratio_to_sgd": median / sgd if sgd else None,
                     "mean_s": mean,
                     "mean_ratio_to_sgd": mean / statistics.fmean(runs["sgd"]["times"])
                     if sgd else None,
                     "sam_fraction": None if before is None
                     else (after - before) / len(run["times"]),
                     "compile_s": compile_s[method], "timed_steps": len(run["times"]),
                     "passes": PASSES.get(method, 2)}
  return {"model": label, "params": int(sum(x.size for x in jax.tree.leaves(params))),
          "batch_size": batch_size, "methods": table}


def to_markdown(results: dict) -> str:
  lines = [f"# Step time ({results['backend']}: {results['device']}, jax {results['jax']})", "",
           "Median seconds per train step after compilation; ratio to SGD in the same process. "
           "Command: `" + results["command"] + "`.", ""]
  for block in results["runs"]:
    lines += [f"## {block['model']} ({block['params']:,} parameters), 28x28x1, batch "
              f"{block['batch_size']}", "",
              "| method | passes | s/step | / SGD | compile s |", "|---|---|---|---|---|"]
    for method, row in block["methods"].items():
      ratio = "" if row["ratio_to_sgd"] is None else f"{row['ratio_to_sgd']:.2f}"
      lines.append(f"| {method} | {row['passes']} | {row['median_s']:.4f} | {ratio} | "
                   f"{row['compile_s']:.1f} |")
    lines.append("")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=["resnet18:0.25", "vit_ti:4", "resnet18:1.0"])
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--methods", nargs="*", default=None, help="subset (always add sgd)")
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
  args = parser.parse_args()
  backend = jax.default_backend()
  results = {"backend": backend, "device": jax.devices()[0].device_kind, "jax": jax.__version__,
             "host": platform.platform(),
             "command": "python -m benchmarks.step_time --models " + " ".join(args.models)
                        + f" --batch-size {args.batch_size} --rounds {args.rounds} --steps {args.steps}",
             "runs": []}
  args.out.mkdir(parents=True, exist_ok=True)
  for spec in args.models:
    results["runs"].append(benchmark_model(spec, args.batch_size, args.rounds, args.steps,
                                           args.methods))
    # Written after every model, so a long run leaves partial results behind.
    (args.out / f"step_time_{backend}.json").write_text(json.dumps(results, indent=2))
    (args.out / f"step_time_{backend}.md").write_text(to_markdown(results))
    print(to_markdown({**results, "runs": results["runs"][-1:]}), flush=True)


if __name__ == "__main__":
  main()
