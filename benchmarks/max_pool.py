"""Max pooling's gradient: flax's (XLA select-and-scatter) against ``sam_jax.models.pooling``.

    python -m benchmarks.max_pool [--size 224] [--batch-size 32] [--width 1.0]
                                  [--rounds 5] [--out benchmarks/results]

ResNet-18's ImageNet stem ends in a 3x3 stride-2 max-pool. Its gradient in
flax is ``select-and-scatter``, which XLA:CPU expands into a scatter with
``s32`` index tensors the size of the padded input;
:func:`sam_jax.models.pooling.max_pool` gives the same values and gradient
with strided views and one elementwise pass. For each implementation this
compiles (AOT, state donated) the SGD and SAM train steps of ResNet-18 at
``--size`` px and reads the peak from XLA's memory analysis
(``memory.compiled_bytes``), then times the steps, and the pooling layer's
own forward+backward at the stem's output shape, the two implementations
taking turns in every round (median). The flax rows swap the stem's pooling
function for ``flax.linen.max_pool`` while the step is traced.

Writes ``max_pool_<backend>.json`` and ``.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import platform
import statistics

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import sam_jax
from benchmarks.step_time import time_interleaved
from benchmarks.timing import interleaved_medians
from sam_jax import models
from sam_jax.models import pooling, resnet
from sam_jax.train import memory
from sam_jax.train.losses import softmax_cross_entropy
from sam_jax.train.state import create_train_state
from sam_jax.train.step import make_train_step

IMPLEMENTATIONS = {"flax.linen.max_pool": nn.max_pool, "sam_jax max_pool": pooling.max_pool}
METHODS = {"sgd": lambda: optax.sgd(0.01, momentum=0.9),
           "sam": lambda: optax.chain(sam_jax.sam(0.05), optax.sgd(0.01, momentum=0.9))}


@contextlib.contextmanager
def stem_pool(fn):
  saved = resnet.max_pool
  resnet.max_pool = fn
  try:
    yield
  finally:
    resnet.max_pool = saved


def compiled_steps(size: int, batch_size: int, width: float) -> tuple[dict, dict]:
  rng = np.random.default_rng(0)
  batch = jax.device_put({
      "image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
      "label": rng.integers(0, 2, batch_size).astype(np.int32)})
  model = models.create_model("resnet18", 2, stem="imagenet", width=width)
  apply_fn, params, model_state = models.from_linen(model, jax.random.key(0), batch["image"][:1])
  runs = {}
  for impl, fn in IMPLEMENTATIONS.items():
    for method, make_tx in METHODS.items():
      tx = make_tx()
      state = create_train_state(jax.tree.map(jnp.copy, params),
                                 jax.tree.map(jnp.copy, model_state), tx)
      step = jax.jit(make_train_step(apply_fn, softmax_cross_entropy(), tx), donate_argnums=(0,))
      with stem_pool(fn):
        compiled = step.lower(state, batch, jax.random.key(0)).compile()
      state, _ = compiled(state, batch, jax.random.key(0))  # warm-up
      runs[(impl, method)] = {"step": compiled, "state": state, "times": [],
                              "peak_bytes": memory.compiled_bytes(compiled)}
  return runs, batch


def layer_times(size: int, batch_size: int, width: float, rounds: int) -> dict:
  channels = max(1, int(round(64 * width)))
  rng = np.random.default_rng(1)
  x = jnp.asarray(np.maximum(rng.standard_normal((batch_size, size // 2, size // 2, channels)),
                             0), jnp.float32)
  def grad_fn(pool):
    return jax.jit(jax.grad(lambda v: jnp.sum(pool(v, (3, 3), (2, 2), [(1, 1), (1, 1)]) ** 2)))
  fns = {impl: grad_fn(fn) for impl, fn in IMPLEMENTATIONS.items()}
  temps = {impl: int(fn.lower(x).compile().memory_analysis().temp_size_in_bytes)
           for impl, fn in fns.items()}
  medians = interleaved_medians(fns, rounds * 4, (x,))
  return {impl: {"seconds": medians[impl], "temp_bytes": temps[impl]} for impl in fns}


def to_markdown(results: dict) -> str:
  lines = [f"# Max pooling's gradient ({results['backend']}, jax {results['jax']})", "",
           f"ResNet-18, ImageNet stem, {results['size']} px, batch {results['batch_size']}, "
           f"width {results['width']} ({results['param_bytes'] / 2**20:.1f} MiB of float32 "
           "parameters). Peak: XLA's compiled memory analysis (arguments + outputs + "
           "temporaries − aliased). s/step: median over the timed steps, the four steps taking "
           "turns. Command: `" + results["command"] + "`.", "",
           "| stem pooling | method | peak MiB | SAM − SGD (param buffers) | s/step |",
           "|---|---|---|---|---|"]
  steps = results["steps"]
  for impl in IMPLEMENTATIONS:
    sgd = steps[f"{impl} / sgd"]
    for method in METHODS:
      row = steps[f"{impl} / {method}"]
      excess = (row["peak_bytes"] - sgd["peak_bytes"]) / results["param_bytes"]
      lines.append(f"| {impl} | {method} | {row['peak_bytes'] / 2**20:.0f} | "
                   f"{'' if method == 'sgd' else f'{excess:+.2f}'} | {row['seconds']:.3f} |")
  lines += ["", f"The pooling layer alone (gradient of its output's squared sum at the stem's "
            f"output shape, {results['layer_shape']}):", "",
            "| implementation | s | temporaries MiB |", "|---|---|---|"]
  for impl, row in results["layer"].items():
    lines.append(f"| {impl} | {row['seconds']:.4f} | {row['temp_bytes'] / 2**20:.0f} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
  args = parser.parse_args()
  runs, batch = compiled_steps(args.size, args.batch_size, args.width)
  time_interleaved(runs, batch, args.rounds, 1)
  state = next(iter(runs.values()))["state"]
  param_bytes = 4 * sum(x.size for x in jax.tree.leaves(state.params))
  channels = max(1, int(round(64 * args.width)))
  results = {
      "backend": jax.default_backend(), "jax": jax.__version__, "host": platform.platform(),
      "command": f"python -m benchmarks.max_pool --size {args.size} --batch-size "
                 f"{args.batch_size} --width {args.width} --rounds {args.rounds}",
      "size": args.size, "batch_size": args.batch_size, "width": args.width,
      "param_bytes": param_bytes,
      "layer_shape": [args.batch_size, args.size // 2, args.size // 2, channels],
      "steps": {f"{impl} / {method}": {"peak_bytes": run["peak_bytes"],
                                       "seconds": statistics.median(run["times"]),
                                       "times": run["times"]}
                for (impl, method), run in runs.items()},
      "layer": layer_times(args.size, args.batch_size, args.width, args.rounds),
  }
  args.out.mkdir(parents=True, exist_ok=True)
  stem = f"max_pool_{results['backend']}"
  (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2))
  (args.out / f"{stem}.md").write_text(to_markdown(results))
  print(to_markdown(results), flush=True)


if __name__ == "__main__":
  main()
