"""Each 3-D convolution of ResNet-18 3D, forward + backward, by every implementation.

    python -m benchmarks.conv3d_cpu [--configs 28:0.25:32 64:0.125:32] [--rounds 3]

For every distinct convolution shape of ResNet-18 3D (CIFAR stem) at the
given ``size:width:batch`` configurations, times one jitted
``value_and_grad`` of ``sum(conv(x, k)**2)`` with respect to both the input
and the kernel (what a train step computes for every layer), for each
implementation of ``sam_jax.models.conv3d``. The implementations take turns
in every round (a noisy machine's load falls on all of them), and the median
is reported, with the number of such layers in the model and the
implementation ``"auto"`` picks.

Writes ``conv3d_<backend>.json`` and ``.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp

from benchmarks.timing import interleaved_medians
from sam_jax.models import conv3d as conv3d_lib


def layer_shapes(size: int, width: float, batch: int) -> list[dict]:
  """ResNet-18 3D's convolutions: input shape, kernel, stride, padding, count."""
  base = max(1, int(round(64 * width)))
  layers: dict[tuple, int] = {}

  def add(spatial, cin, cout, k, s):
    key = (batch, spatial, cin, cout, k, s)
    layers[key] = layers.get(key, 0) + 1

  add(size, 1, base, 3, 1)  # stem
  spatial, cin = size, base
  for stage in range(4):
    cout = base * 2**stage
    for block in range(2):
      stride = 2 if stage > 0 and block == 0 else 1
      add(spatial, cin, cout, 3, stride)
      out_spatial = (spatial - 1) // stride + 1
      add(out_spatial, cout, cout, 3, 1)
      if stride != 1 or cin != cout:
        add(spatial, cin, cout, 1, stride)
      spatial, cin = out_spatial, cout
  return [{"batch": b, "spatial": sp, "cin": ci, "cout": co, "kernel": k, "stride": s, "count": n}
          for (b, sp, ci, co, k, s), n in layers.items()]


def implementations(kernel: int) -> list[str]:
  return ["xla", "depth_sum", "depth_concat"] + (["matmul"] if kernel == 1 else [])


def time_layer(layer: dict, rounds: int) -> dict:
  b, sp, ci, co, k, s = (layer[key] for key in ("batch", "spatial", "cin", "cout", "kernel", "stride"))
  x = jax.random.normal(jax.random.key(0), (b, sp, sp, sp, ci))
  kernel = jax.random.normal(jax.random.key(1), (k, k, k, ci, co)) * 0.1
  padding = [(k // 2, k // 2)] * 3
  fns = {}
  for impl in implementations(k):
    def loss(x, kernel, impl=impl):
      return jnp.sum(conv3d_lib.conv3d(x, kernel, (s,) * 3, padding, impl) ** 2)
    fns[impl] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  return {**layer, "seconds": interleaved_medians(fns, rounds, (x, kernel)),
          "auto": conv3d_lib.resolve_implementation("auto", (k, k, k))}


def time_parts(layer: dict, rounds: int, impl: str) -> dict:
  """Where one layer's time goes: forward alone, and each gradient alone, for ``impl``."""
  b, sp, ci, co, k, s = (layer[key] for key in ("batch", "spatial", "cin", "cout", "kernel", "stride"))
  x = jax.random.normal(jax.random.key(0), (b, sp, sp, sp, ci))
  kernel = jax.random.normal(jax.random.key(1), (k, k, k, ci, co)) * 0.1
  padding = [(k // 2, k // 2)] * 3
  loss = lambda x, kernel: jnp.sum(conv3d_lib.conv3d(x, kernel, (s,) * 3, padding, impl) ** 2)
  fns = {"forward": jax.jit(loss), "input gradient": jax.jit(jax.grad(loss, argnums=0)),
         "kernel gradient": jax.jit(jax.grad(loss, argnums=1)),
         "both gradients": jax.jit(jax.grad(loss, argnums=(0, 1)))}
  return interleaved_medians(fns, rounds, (x, kernel))


def add_parts(config: dict, rounds: int) -> None:
  """``config["parts"]``: the forward/gradient split of its heaviest layer."""
  heaviest = max(config["layers"], key=lambda row: row["count"] * row["seconds"][row["auto"]])
  config["parts"] = {"layer": {k: heaviest[k] for k in ("batch", "spatial", "cin", "cout", "kernel",
                                                         "stride")},
                     "impl": heaviest["auto"], "seconds": time_parts(heaviest, rounds, heaviest["auto"])}


def to_markdown(results: dict) -> str:
  lines = [f"# 3-D convolutions, forward + backward ({results['backend']}, jax {results['jax']})", "",
           f"Median seconds of {results['rounds']} rounds, implementations taking turns. "
           f"Command: `{results['command']}`.", ""]
  for config in results["configs"]:
    impls = ["xla", "depth_sum", "depth_concat", "matmul"]
    lines += [f"## ResNet-18 3D at {config['size']}^3, width {config['width']}, batch {config['batch']}", "",
              "| input | kernel / stride | layers | " + " | ".join(impls) + " | auto picks |",
              "|---|---|---|" + "---|" * len(impls) + "---|"]
    totals = dict.fromkeys(impls, 0.0)
    for row in config["layers"]:
      cells = []
      for impl in impls:
        t = row["seconds"].get(impl)
        cells.append("" if t is None else f"{t:.4f}")
      best_other = {impl: row["seconds"].get(impl, row["seconds"]["depth_concat"]) for impl in impls}
      for impl in impls:
        totals[impl] += row["count"] * best_other[impl]
      lines.append(f"| {row['batch']}x{row['spatial']}^3x{row['cin']} -> {row['cout']} | "
                   f"{row['kernel']}^3 / {row['stride']} | {row['count']} | " + " | ".join(cells)
                   + f" | {row['auto']} |")
    auto_total = sum(row["count"] * row["seconds"][row["auto"]] for row in config["layers"])
    lines += ["", "All layers (count × time; matmul only for 1x1x1, else depth_concat's): "
              + ", ".join(f"{impl} {totals[impl]:.2f} s" for impl in impls)
              + f"; auto {auto_total:.2f} s, {totals['xla'] / auto_total:.1f}x faster than xla.", ""]
    if config.get("parts"):
      layer = config["parts"]["layer"]
      lines += [f"Where the time of the layer with the largest total goes "
                f"({layer['batch']}x{layer['spatial']}^3x{layer['cin']} -> {layer['cout']}, "
                f"{config['parts']['impl']}): "
                + ", ".join(f"{name} {t:.3f} s" for name, t in config["parts"]["seconds"].items())
                + " (each a separate jitted function).", ""]
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", nargs="+", default=["28:0.25:32", "64:0.125:32"],
                      help="size:width:batch")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
  parser.add_argument("--parts-only", action="store_true",
                      help="only add the heaviest layer's forward/gradient split to the existing JSON")
  args = parser.parse_args()
  backend = jax.default_backend()
  if args.parts_only:
    results = json.loads((args.out / f"conv3d_{backend}.json").read_text())
    for config in results["configs"]:
      add_parts(config, args.rounds)
      (args.out / f"conv3d_{backend}.md").write_text(to_markdown(results))
      (args.out / f"conv3d_{backend}.json").write_text(json.dumps(results, indent=2))
    return
  results = {"backend": backend, "jax": jax.__version__, "rounds": args.rounds,
             "command": f"python -m benchmarks.conv3d_cpu --configs {' '.join(args.configs)} "
                        f"--rounds {args.rounds}",
             "configs": []}
  args.out.mkdir(parents=True, exist_ok=True)
  for spec in args.configs:
    size, width, batch = spec.split(":")
    config = {"size": int(size), "width": float(width), "batch": int(batch), "layers": []}
    results["configs"].append(config)
    for layer in layer_shapes(int(size), float(width), int(batch)):
      config["layers"].append(time_layer(layer, args.rounds))
      print(json.dumps(config["layers"][-1]), flush=True)
      (args.out / f"conv3d_{backend}.json").write_text(json.dumps(results, indent=2))
      (args.out / f"conv3d_{backend}.md").write_text(to_markdown(results))
    add_parts(config, args.rounds)
    (args.out / f"conv3d_{backend}.json").write_text(json.dumps(results, indent=2))
    (args.out / f"conv3d_{backend}.md").write_text(to_markdown(results))


if __name__ == "__main__":
  main()
