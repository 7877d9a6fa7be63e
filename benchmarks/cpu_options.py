"""What makes the sam_jax ResNet-18 step faster on a CPU: XLA options, placement, dtype.

    python -m benchmarks.cpu_options [--widths 0.25 1.0] [--rounds 3] [--only NAME ...]

Needs the ``bench`` extra (PyTorch, CPU). The setting of
``benchmarks/vs_pytorch.py`` (ResNet-18, CIFAR stem, 28x28x1, batch 128, SGD
momentum 0.9 and SAM ρ 0.05): each option runs in a fresh process (XLA
flags and the host device count are read once, when JAX starts), where
sam_jax's SGD and SAM steps and PyTorch's take turns, so every ratio to
PyTorch is measured in one process. Options: XLA:CPU flags (threading,
the XNNPACK/YNNPACK/oneDNN convolution and fusion paths, fast math, the
scheduler), the batch split over several host devices as one sharded program
(``parallel="sharded"``), bfloat16 computation, and no state donation.

Whether an option changes results: every process also takes one SAM step
from the same weights on the same batch, and the table gives the largest
difference of the new weights from the same step computed in float64 (its
own process, first). The baseline's own difference is what float32 rounding
does to this step: an option within a small multiple of it changes nothing
beyond float tolerance.

Writes ``cpu_options_<backend>.json`` and ``.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class Option:
  name: str
  xla_flags: str = ""
  host_devices: int = 1
  placement: str = "none"
  dtype: str = "float32"
  donate: bool = True
  kernel_grad_chunk: Optional[int] = None  # ResNet(kernel_grad_chunk=...); None: XLA's own


OPTIONS = (
    Option("baseline (one device, float32)"),
    Option("sharded over 2 host devices", host_devices=2, placement="sharded"),
    Option("sharded over 2 host devices, Eigen single-threaded",
           "--xla_cpu_multi_thread_eigen=false", 2, "sharded"),
    Option("sharded over 4 host devices", host_devices=4, placement="sharded"),
    Option("Eigen single-threaded", "--xla_cpu_multi_thread_eigen=false"),
    Option("bfloat16 computation", dtype="bfloat16"),
    Option("no state donation", donate=False),
    Option("XNNPACK convolutions",
           "--xla_cpu_experimental_xnn_fusion_type=individual_convolution"),
    Option("YNNPACK convolutions",
           "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"),
    Option("oneDNN convolutions",
           "--xla_cpu_experimental_onednn_fusion_type=individual_convolution"),
    Option("XNNPACK graph fusion (greedy)",
           "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"),
    Option("use XNNPACK", "--xla_cpu_use_xnnpack=true"),
    Option("use oneDNN", "--xla_cpu_use_onednn=true"),
    Option("fast math", "--xla_cpu_enable_fast_math=true"),
    Option("concurrency-optimized scheduler",
           "--xla_cpu_enable_concurrency_optimized_scheduler=true"),
    # The default of jaxlib 0.10 is on; off, a step keeps less alive
    # (benchmarks/memory_2d.py --cpu-schedule memory).
    Option("concurrency-optimized scheduler off",
           "--xla_cpu_enable_concurrency_optimized_scheduler=false"),
    Option("sharded over 2 host devices, concurrency-optimized scheduler off",
           "--xla_cpu_enable_concurrency_optimized_scheduler=false", 2, "sharded"),
    # Session 25: each convolution's kernel gradient summed over batch chunks
    # (sam_jax.models.chunked_conv; ResNet(kernel_grad_chunk=32), off by default).
    Option("kernel gradient by batch chunks of 32", kernel_grad_chunk=32),
    Option("sharded over 2 host devices, kernel gradient by batch chunks of 32",
           host_devices=2, placement="sharded", kernel_grad_chunk=32),
)
BASELINE = OPTIONS[0]
FLOAT64 = Option("float64 reference (not timed)", dtype="float64")
LR, RHO, BATCH = 0.01, 0.05, 128


def measure(option: Option, width: float, rounds: int, reference: pathlib.Path) -> dict:
  """In this process (started with the option's flags): the four medians and
  the largest weight difference after one SAM step from the float64 step's
  (which the ``FLOAT64`` option writes to ``reference`` instead)."""
  import jax
  import jax.numpy as jnp
  import optax
  import torch

  import sam_jax
  from benchmarks.step_time_3d import torch_steps
  from benchmarks.timing import interleaved_medians
  from sam_jax import models
  from sam_jax.train import parallel
  from sam_jax.train.losses import softmax_cross_entropy
  from sam_jax.train.state import create_train_state
  from sam_jax.train.step import make_train_step

  torch.set_num_threads(os.cpu_count() or 1)
  assert jax.local_device_count() == option.host_devices, jax.devices()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (BATCH, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 2, BATCH).astype(np.int32)
  # The same initial weights for every option: float32's, cast for float64.
  model = models.create_model("resnet18", 2, width=width)
  _, params, model_state = models.from_linen(model, jax.random.key(0), images[:1])
  wide = option.dtype == "float64"
  if wide:
    jax.config.update("jax_enable_x64", True)
    params, model_state = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), (params, model_state))
    model = models.create_model("resnet18", 2, width=width, dtype=jnp.float64,
                                param_dtype=jnp.float64, kernel_grad_chunk=None)
  else:
    model = models.create_model("resnet18", 2, width=width, dtype=getattr(jnp, option.dtype),
                                kernel_grad_chunk=option.kernel_grad_chunk)
  apply_fn = models.from_linen(model, jax.random.key(0), images[:1])[0]

  def placed(tx):
    build = functools.partial(make_train_step, apply_fn, softmax_cross_entropy(), tx)
    placement = parallel.place(build, option.placement)
    if not option.donate:
      placement = placement._replace(step_fn=jax.jit(build(axis_name=None)))
    state = create_train_state(jax.tree.map(jnp.copy, params),
                               jax.tree.map(jnp.copy, model_state), tx)
    return placement, placement.to_device(state)

  def one_sam_step_weights():
    placement, state = placed(optax.chain(sam_jax.sam(RHO), optax.sgd(LR, momentum=0.9)))
    batch = placement.place_batch({"image": images, "label": labels})
    state, _ = placement.step_fn(state, batch, jax.random.key(0))
    return np.concatenate([np.asarray(x, np.float64).ravel()
                           for x in jax.tree.leaves(placement.to_host(state).params)])

  if wide:
    np.save(reference, one_sam_step_weights())
    return {}
  runs = {}
  for method, tx in {"sgd": optax.sgd(LR, momentum=0.9),
                     "sam": optax.chain(sam_jax.sam(RHO), optax.sgd(LR, momentum=0.9))}.items():
    placement, state = placed(tx)
    batch = placement.place_batch({"image": images, "label": labels})
    holder = {"state": state}

    def run(step=placement.step_fn, holder=holder, batch=batch):
      holder["state"], metrics = step(holder["state"], batch, jax.random.key(0))
      jax.block_until_ready((holder["state"], metrics))

    run()  # compiles
    runs[("sam_jax", method)] = run
  torch_fns, _ = torch_steps(width, images, labels)
  for method, fn in torch_fns.items():
    fn()  # warm-up
    runs[("pytorch", method)] = fn
  medians = interleaved_medians(runs, rounds, warm_up=False)

  exact = np.load(reference)
  return {"median_s": {f"{f} {m}": v for (f, m), v in medians.items()},
          "max_weight_difference": float(np.max(np.abs(one_sam_step_weights() - exact)))}


def run_option(option: Option, width: float, rounds: int, reference: pathlib.Path) -> dict:
  """``measure`` in a fresh process with the option's flags and device count."""
  env = dict(os.environ)
  flags = [option.xla_flags]
  if option.host_devices > 1:
    flags.append(f"--xla_force_host_platform_device_count={option.host_devices}")
  env["XLA_FLAGS"] = " ".join(f for f in flags if f)
  command = [sys.executable, "-m", "benchmarks.cpu_options", "--child", option.name,
             "--widths", str(width), "--rounds", str(rounds), "--reference", str(reference)]
  done = subprocess.run(command, env=env, capture_output=True, text=True)
  if done.returncode:
    return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
  return json.loads(done.stdout.strip().splitlines()[-1])


def to_markdown(results: dict) -> str:
  lines = [f"# sam_jax ResNet-18 step on CPU: options ({results['backend']}, jax {results['jax']}, "
           f"torch {results['torch']}, {results['cores']} cores)", "",
           "ResNet-18 (CIFAR stem), 28x28x1, batch 128. Median seconds per step over "
           f"{results['rounds']} rounds; each option in its own process, where sam_jax's and "
           "PyTorch's steps take turns (the ratios are within one process). "
           "max |Δw|: the largest difference of the weights after one SAM step (learning "
           "rate 0.01) from the same step in float64; the baseline's is float32's rounding. "
           f"Command: `{results['command']}`.", ""]
  for width in results["widths"]:
    rows = [r for r in results["rows"] if r["width"] == width]
    lines += [f"## width {width}", "",
              "| option | XLA_FLAGS | JAX SGD | JAX SAM | PyTorch SGD | PyTorch SAM | "
              "JAX SAM / PyTorch SAM | JAX SGD / PyTorch SGD | max \\|Δw\\| |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
      flags = f"`{r['xla_flags']}`" if r["xla_flags"] else ""
      if "error" in r:
        lines.append(f"| {r['option']} | {flags} | failed: {r['error']} |||||||")
        continue
      t = r["median_s"]
      lines.append(
          f"| {r['option']} | {flags} | {t['sam_jax sgd']:.3f} | {t['sam_jax sam']:.3f} | "
          f"{t['pytorch sgd']:.3f} | {t['pytorch sam']:.3f} | "
          f"{t['sam_jax sam'] / t['pytorch sam']:.2f} | "
          f"{t['sam_jax sgd'] / t['pytorch sgd']:.2f} | {r['max_weight_difference']:.1e} |")
    lines.append("")
  return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 1.0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--only", nargs="+", help="option names to run (default: all)")
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
  parser.add_argument("--child", help=argparse.SUPPRESS)
  parser.add_argument("--reference", type=pathlib.Path, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    option = next(o for o in (*OPTIONS, FLOAT64) if o.name == args.child)
    print(json.dumps(measure(option, args.widths[0], args.rounds, args.reference)))
    return
  try:
    import torch
  except ImportError:
    raise SystemExit("benchmarks.cpu_options needs PyTorch: pip install 'sam_jax[bench]'") from None
  import jax

  options = [o for o in OPTIONS if not args.only or o.name in args.only or o == BASELINE]
  results = {"backend": jax.default_backend(), "jax": jax.__version__, "torch": torch.__version__,
             "host": platform.platform(), "cores": os.cpu_count(), "rounds": args.rounds,
             "widths": args.widths,
             "command": f"python -m benchmarks.cpu_options --widths "
                        f"{' '.join(map(str, args.widths))} --rounds {args.rounds}",
             "rows": []}
  args.out.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as scratch:
    for width in args.widths:
      reference = pathlib.Path(scratch) / f"weights_{width}.npy"
      failed = run_option(FLOAT64, width, args.rounds, reference)  # writes the reference
      if failed:
        raise SystemExit(f"the float64 reference step failed: {failed}")
      for option in options:
        row = {"option": option.name, "xla_flags": option.xla_flags, "width": width,
               **dataclasses.asdict(option), **run_option(option, width, args.rounds, reference)}
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
        (args.out / f"cpu_options_{results['backend']}.json").write_text(
            json.dumps(results, indent=2))
        (args.out / f"cpu_options_{results['backend']}.md").write_text(to_markdown(results))


if __name__ == "__main__":
  main()
