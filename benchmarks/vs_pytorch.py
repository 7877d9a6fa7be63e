"""ResNet-18 (2-D) train steps, sam_jax against PyTorch, SGD and SAM, in one process.

    python -m benchmarks.vs_pytorch [--widths 0.25 1.0] [--batch-size 128] [--rounds 3]
                                    [--size 28]

Needs the ``bench`` extra (PyTorch, CPU). The setting of issue 11's table
(``--size 28``, the default): ResNet-18 with the CIFAR stem, one input
channel, 2 classes, batch 128 of random ``uint8`` images; any other
``--size`` uses the ImageNet stem (7x7 stride-2 convolution, 3x3 stride-2
max-pool) and 3 channels, as for BUSI at 224 px, and writes
``vs_pytorch_<size>_<backend>.*``. Then SGD with momentum 0.9, and SAM (ρ 0.05): sam_jax's
jitted ``sam-jax train`` step (state donated), placed as that command places
it (on a CPU, split over one host device per core as one sharded program),
against PyTorch with davda54-style SAM (BatchNorm momentum 0 on the second
pass), both on every CPU core. The two models must have the same parameter count and
the same forward FLOPs: the parameter count is checked (an error if it
differs); the FLOPs are reported side by side, XLA's cost analysis of the
jitted forward pass (every op) against ``torch.utils.flop_counter``
(convolutions and matmuls, 2 FLOPs per multiply-add): two counters with
their own rules, so agreement to about 10 % is what to expect. Methods take turns in every round; the median
is reported with the ratio to PyTorch's same method. Writes
``vs_pytorch_<backend>.json`` and ``.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform

import jax
import numpy as np

from benchmarks.step_time_3d import jax_steps, torch_resnet18, torch_steps
from benchmarks.timing import interleaved_medians
from sam_jax import models
from sam_jax.train import parallel


def stem_for(size: int) -> tuple[str, int]:
  """The stem and input channels of the benchmark at ``size`` px."""
  return ("cifar", 1) if size == 28 else ("imagenet", 3)


def forward_flops(width: float, images: np.ndarray) -> dict[str, float]:
  """Forward FLOPs of one batch through each framework's model."""
  import torch
  from torch.utils.flop_counter import FlopCounterMode

  stem, channels = stem_for(images.shape[1])
  model = models.create_model("resnet18", 2, width=width, stem=stem)
  apply_fn, params, model_state = models.from_linen(model, jax.random.key(0), images[:1])
  forward = jax.jit(lambda p, s, x: apply_fn(p, s, x, train=False)[0])
  cost = forward.lower(params, model_state, images).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  net = torch_resnet18(width, dims=2, stem=stem, in_channels=channels).eval()
  x = torch.zeros((images.shape[0], channels, *images.shape[1:3]))
  with FlopCounterMode(display=False) as counter, torch.no_grad():
    net(x)
  return {"sam_jax": float(cost["flops"]), "pytorch": float(counter.get_total_flops())}


def benchmark_width(width: float, batch_size: int, rounds: int, size: int = 28) -> dict:
  import torch

  stem, channels = stem_for(size)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch_size, size, size, channels), dtype=np.uint8)
  labels = rng.integers(0, 2, batch_size).astype(np.int32)
  batch = jax.device_put({"image": images, "label": labels})
  jax_fns, compile_s, jax_count = jax_steps(width, None, batch, stem=stem)
  torch_fns, torch_count = torch_steps(width, images, labels, stem=stem)
  if jax_count != torch_count:
    raise RuntimeError(f"parameter counts differ: sam_jax {jax_count}, PyTorch {torch_count}")
  flops = forward_flops(width, images)
  runs = {}
  for method in ("sgd", "sam"):
    torch_fns[method]()  # warm-up
    runs[("sam_jax", method)] = jax_fns[method]
    runs[("pytorch", method)] = torch_fns[method]
  medians = interleaved_medians(runs, rounds, warm_up=False)
  return {"width": width, "batch_size": batch_size, "params": torch_count, "flops": flops,
          "torch_threads": torch.get_num_threads(), "compile_s": compile_s,
          "median_s": {f"{f} {m}": v for (f, m), v in medians.items()}}


def to_markdown(results: dict) -> str:
  size = results.get("size", 28)
  stem, channels = stem_for(size)
  lines = [f"# ResNet-18 ({size}x{size}x{channels}, {stem} stem) train step, sam_jax vs "
           f"PyTorch ({results['backend']}, "
           f"jax {results['jax']}, torch {results['torch']})", "",
           f"Median seconds per step over {results['rounds']} rounds (the four steps taking "
           f"turns), after compilation and a warm-up; forward MFLOPs per batch from XLA's cost "
           f"analysis and PyTorch's flop counter. sam_jax's step is placed as `sam-jax train` "
           f"places it: {results.get('placement', 'none')} over "
           f"{results.get('host_devices', 1)} host device(s) (`parallel='auto'`; "
           f"`benchmarks/cpu_options.py` compares placements). "
           f"Command: `{results['command']}`.", "",
           "| width | params | MFLOPs fwd (JAX / PyTorch) | JAX SGD | JAX SAM | PyTorch SGD | "
           "PyTorch SAM | JAX SAM / PyTorch SAM | JAX SGD / PyTorch SGD |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in results["widths"]:
    t = r["median_s"]
    lines.append(
        f"| {r['width']} | {r['params']:,} | {r['flops']['sam_jax'] / 1e6:,.0f} / "
        f"{r['flops']['pytorch'] / 1e6:,.0f} | {t['sam_jax sgd']:.3f} | {t['sam_jax sam']:.3f} | "
        f"{t['pytorch sgd']:.3f} | {t['pytorch sam']:.3f} | "
        f"{t['sam_jax sam'] / t['pytorch sam']:.2f} | {t['sam_jax sgd'] / t['pytorch sgd']:.2f} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 1.0])
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--size", type=int, default=28,
                      help="image size: 28 (CIFAR stem, 1 channel) or another (ImageNet stem, "
                           "3 channels)")
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
  args = parser.parse_args()
  host_devices = parallel.use_host_devices()  # as `sam-jax train` does
  try:
    import torch
  except ImportError:
    raise SystemExit("benchmarks.vs_pytorch needs PyTorch: pip install 'sam_jax[bench]'") from None
  torch.set_num_threads(os.cpu_count() or 1)
  backend = jax.default_backend()
  results = {"backend": backend, "jax": jax.__version__, "torch": torch.__version__,
             "host": platform.platform(), "rounds": args.rounds, "size": args.size,
             "host_devices": host_devices or jax.local_device_count(),
             "placement": parallel.resolve_mode("auto", args.batch_size),
             "command": f"python -m benchmarks.vs_pytorch --widths "
                        f"{' '.join(map(str, args.widths))} --batch-size {args.batch_size} "
                        f"--rounds {args.rounds}"
                        + ("" if args.size == 28 else f" --size {args.size}"),
             "widths": []}
  args.out.mkdir(parents=True, exist_ok=True)
  name = "vs_pytorch_" + ("" if args.size == 28 else f"{args.size}_") + backend
  for width in args.widths:
    results["widths"].append(benchmark_width(width, args.batch_size, args.rounds, args.size))
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2))
    (args.out / f"{name}.md").write_text(to_markdown(results))
    print(to_markdown(results), flush=True)


if __name__ == "__main__":
  main()
