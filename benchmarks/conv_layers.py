"""Where ResNet-18's CPU step loses to PyTorch: each stage's 3x3 convolution, pass by pass.

    python -m benchmarks.conv_layers [--size 28] [--batch-size 128] [--rounds 7]

Needs the ``bench`` extra (PyTorch, CPU). For the 3x3 stride-1 convolution
of each of ResNet-18's four stages at full width (64, 128, 256, 512
channels; the CIFAR stem at 28 px gives maps of 28, 14, 7 and 4 px), times
the forward pass, the input gradient and the kernel (weight) gradient:
XLA's (``lax.conv_general_dilated``, NHWC/HWIO, each pass its own jitted
function, on one device) and PyTorch's (``conv2d`` in its default NCHW layout, as the
``vs_pytorch`` benchmark's model runs it; its gradients are timed as
forward + that gradient, less the forward). Median over ``--rounds``, the
six functions of a stage taking turns; both frameworks on every core.
Writes ``conv_layers_<backend>.json`` and ``.md`` into ``--out``
(``conv_layers_<size>_<backend>.*`` for another ``--size``; ResNet-18's
ImageNet stem at 224 px gives stage 1 maps of 56 px).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks.timing import interleaved_medians

STAGES = [(64, 1), (128, 2), (256, 4), (512, 8)]  # (channels, downsampling so far)


def jax_passes(x, w, dy) -> dict:
  dims = ("NHWC", "HWIO", "NHWC")
  conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), [(1, 1), (1, 1)],
                                               dimension_numbers=dims)
  forward = jax.jit(conv)
  input_grad = jax.jit(lambda x, w, dy: jax.vjp(lambda v: conv(v, w), x)[1](dy)[0])
  kernel_grad = jax.jit(lambda x, w, dy: jax.vjp(lambda v: conv(x, v), w)[1](dy)[0])
  return {"forward": lambda: forward(x, w), "input gradient": lambda: input_grad(x, w, dy),
          "kernel gradient": lambda: kernel_grad(x, w, dy)}


def torch_passes(x, w, dy) -> dict:
  import torch

  x, w, dy = (torch.from_numpy(np.asarray(a)) for a in (x, w, dy))
  x = x.permute(0, 3, 1, 2).contiguous()
  w = w.permute(3, 2, 0, 1).contiguous()
  dy = dy.permute(0, 3, 1, 2).contiguous()
  conv = torch.nn.functional.conv2d
  x_grad, w_grad = x.clone().requires_grad_(True), w.clone().requires_grad_(True)

  def forward():
    with torch.no_grad():
      return conv(x, w, padding=1)

  def with_input_grad():
    return torch.autograd.grad(conv(x_grad, w, padding=1), (x_grad,), dy)

  def with_kernel_grad():
    return torch.autograd.grad(conv(x, w_grad, padding=1), (w_grad,), dy)

  return {"forward": forward, "forward + input gradient": with_input_grad,
          "forward + kernel gradient": with_kernel_grad}


def benchmark_stage(channels: int, size: int, batch_size: int, rounds: int) -> dict:
  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch_size, size, size, channels)).astype(np.float32)
  w = rng.standard_normal((3, 3, channels, channels)).astype(np.float32)
  dy = rng.standard_normal((batch_size, size, size, channels)).astype(np.float32)
  fns = {("sam_jax", k): f for k, f in jax_passes(*map(jnp.asarray, (x, w, dy))).items()}
  fns.update({("pytorch", k): f for k, f in torch_passes(x, w, dy).items()})
  medians = interleaved_medians(fns, rounds)
  torch_forward = medians[("pytorch", "forward")]
  return {"channels": channels, "size": size,
          "sam_jax": {k: medians[("sam_jax", k)] for k in ("forward", "input gradient",
                                                            "kernel gradient")},
          "pytorch": {"forward": torch_forward,
                      "input gradient": medians[("pytorch", "forward + input gradient")]
                      - torch_forward,
                      "kernel gradient": medians[("pytorch", "forward + kernel gradient")]
                      - torch_forward}}


def to_markdown(results: dict) -> str:
  lines = [f"# ResNet-18's 3x3 convolutions, pass by pass, sam_jax (XLA) vs PyTorch "
           f"({results['backend']}, jax {results['jax']}, torch {results['torch']})", "",
           f"Batch {results['batch_size']}, one stride-1 3x3 convolution per stage at full "
           "width. Median seconds over the rounds; PyTorch's gradients are forward + gradient "
           "less its forward. Command: `" + results["command"] + "`.", "",
           "| stage | map | channels | pass | XLA s | PyTorch s | XLA / PyTorch |",
           "|---|---|---|---|---|---|---|"]
  for i, stage in enumerate(results["stages"], 1):
    for name in ("forward", "input gradient", "kernel gradient"):
      ours, theirs = stage["sam_jax"][name], stage["pytorch"][name]
      lines.append(f"| {i} | {stage['size']}x{stage['size']} | {stage['channels']} | {name} | "
                   f"{ours:.4f} | {theirs:.4f} | {ours / theirs:.1f} |")
    ours, theirs = sum(stage["sam_jax"].values()), sum(stage["pytorch"].values())
    lines.append(f"| {i} | | | **all three** | {ours:.4f} | {theirs:.4f} | "
                 f"{ours / theirs:.1f} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=28, help="stage 1's map size")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
  args = parser.parse_args()
  try:
    import torch
  except ImportError:
    raise SystemExit("benchmarks.conv_layers needs PyTorch: pip install 'sam_jax[bench]'") from None
  torch.set_num_threads(os.cpu_count() or 1)
  results = {"backend": jax.default_backend(), "jax": jax.__version__,
             "torch": torch.__version__, "host": platform.platform(),
             "batch_size": args.batch_size,
             "command": f"python -m benchmarks.conv_layers --size {args.size} --batch-size "
                        f"{args.batch_size} --rounds {args.rounds}",
             "stages": [benchmark_stage(channels, -(-args.size // down), args.batch_size,
                                        args.rounds) for channels, down in STAGES]}
  args.out.mkdir(parents=True, exist_ok=True)
  stem = "conv_layers_" + ("" if args.size == 28 else f"{args.size}_") + results["backend"]
  (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2))
  (args.out / f"{stem}.md").write_text(to_markdown(results))
  print(to_markdown(results), flush=True)


if __name__ == "__main__":
  main()
