"""Throughput of N seeds vmapped in one program against N runs one after another.

    python -m benchmarks.seeds_vmap [--model resnet18:0.125] [--seeds 4 8]
                                    [--optimizers adam sam] [--batch-size 128]
                                    [--rounds 3] [--steps 3]

For each optimizer and N: the jitted train step of one run (state donated)
and the same step ``jax.vmap``-ped over N stacked states, batches and keys
(:func:`sam_jax.train.seeds.seeds_placement`), on random 28x28x1 ``uint8``
batches, after compilation. Rounds interleave the two. The table reports
the median time of one vmapped step, N times the median solo step (what N
serial runs cost per step), and their ratio: the speed-up of training N
seeds in one program. Writes ``seeds_vmap_<backend>.{json,md}`` into
``--out`` (default ``benchmarks/results``).
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
import numpy as np
import optax

import sam_jax
from benchmarks.step_time import parse_model
from sam_jax import models
from sam_jax.train import parallel, seeds
from sam_jax.train.losses import loss_for_task
from sam_jax.train.state import create_train_state
from sam_jax.train.step import make_train_step

OPTIMIZERS = {
    "adam": lambda: optax.adam(1e-3),
    "sgd": lambda: optax.sgd(0.05, momentum=0.9),
    "sam": lambda: optax.chain(sam_jax.sam(0.05), optax.adam(1e-3)),
}


def timed(step, state, batch, keys, steps, times):
  for i in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, batch, keys(i))
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  return state


def benchmark(spec: str, optimizer: str, n: int, batch_size: int, rounds: int, steps: int) -> dict:
  name, kwargs, label = parse_model(spec)
  model = models.create_model(name, 2, **kwargs)
  rng = np.random.default_rng(0)
  batches = [{"image": rng.integers(0, 256, (batch_size, 28, 28, 1), dtype=np.uint8),
              "label": rng.integers(0, 2, batch_size).astype(np.int32)} for _ in range(n)]
  tx = OPTIMIZERS[optimizer]()
  states = []
  for seed in range(n):
    apply_fn, params, model_state = models.from_linen(model, jax.random.key(seed),
                                                      batches[0]["image"][:1])
    states.append(create_train_state(params, model_state, tx))
  build = functools.partial(make_train_step, apply_fn, loss_for_task("multiclass"), tx)
  solo_step = parallel.jit_step(build)
  group_step = seeds.seeds_placement(build).step_fn
  solo_batch = jax.device_put(batches[0])
  group_batch = jax.device_put(seeds.stack(batches))
  solo_state, group_state = states[0], seeds.stack(states)
  compile_s = {}
  for which, step, batch, keys in (
      ("solo", solo_step, solo_batch, lambda i: jax.random.key(i)),
      ("group", group_step, group_batch, lambda i: jax.random.split(jax.random.key(i), n))):
    start = time.perf_counter()
    state = timed(step, solo_state if which == "solo" else group_state, batch, keys, 1, [])
    compile_s[which] = time.perf_counter() - start
    if which == "solo":
      solo_state = state
    else:
      group_state = state
  solo_times, group_times = [], []
  for _ in range(rounds):
    solo_state = timed(solo_step, solo_state, solo_batch, lambda i: jax.random.key(i), steps,
                       solo_times)
    group_state = timed(group_step, group_state, group_batch,
                        lambda i: jax.random.split(jax.random.key(i), n), steps, group_times)
  solo, group = statistics.median(solo_times), statistics.median(group_times)
  return {"model": label, "optimizer": optimizer, "seeds": n, "batch_size": batch_size,
          "solo_step_s": solo, "serial_step_s": n * solo, "vmapped_step_s": group,
          "speedup": n * solo / group, "compile_s": compile_s}


def write_table(rows: list[dict], out: pathlib.Path, command: str) -> None:
  backend = jax.default_backend()
  device = jax.devices()[0].device_kind
  lines = [f"# N seeds vmapped in one program vs N serial runs ({backend}: {device})", "",
           f"Written by `{command}` on {platform.node() or 'this machine'} "
           f"({jax.device_count()} device(s), jax {jax.__version__}). Median step time after "
           "compilation, solo and vmapped steps interleaved in rounds; serial = N × solo.", "",
           "| model | optimizer | N | batch/seed | solo s/step | N serial s/step | vmapped s/step "
           "| speed-up | compile solo / vmapped (s) |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['model']} | {r['optimizer']} | {r['seeds']} | {r['batch_size']} | "
                 f"{r['solo_step_s']:.3f} | {r['serial_step_s']:.3f} | {r['vmapped_step_s']:.3f} | "
                 f"{r['speedup']:.2f}× | {r['compile_s']['solo']:.1f} / "
                 f"{r['compile_s']['group']:.1f} |")
  out.mkdir(parents=True, exist_ok=True)
  (out / f"seeds_vmap_{backend}.md").write_text("\n".join(lines) + "\n")
  (out / f"seeds_vmap_{backend}.json").write_text(json.dumps(
      {"device": device, "backend": backend, "jax": jax.__version__, "rows": rows}, indent=2))
  print("\n".join(lines))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet18:0.125")
  parser.add_argument("--seeds", nargs="+", type=int, default=[4, 8])
  parser.add_argument("--optimizers", nargs="+", default=["adam", "sam"], choices=OPTIMIZERS)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
  args = parser.parse_args()
  rows = []
  for optimizer in args.optimizers:
    for n in args.seeds:
      rows.append(benchmark(args.model, optimizer, n, args.batch_size, args.rounds, args.steps))
      print(json.dumps({k: v for k, v in rows[-1].items() if k != "compile_s"}), flush=True)
  command = "python -m benchmarks.seeds_vmap " + " ".join(
      f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
      for k, v in vars(args).items() if k != "out")
  write_table(rows, pathlib.Path(args.out), command)


if __name__ == "__main__":
  main()
