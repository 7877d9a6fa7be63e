"""XLA:CPU options tried on ResNet-18 3D's heaviest convolution, each in a fresh process.

    python -m benchmarks.conv3d_cpu_options [--rounds 3]

The layer is the 28^3 ResNet-18 3D (width 1/4, batch 32) stage-1
convolution, 32x28^3x16 -> 16, 3x3x3, forward + both gradients of
``sum(conv**2)``, for the ``xla``, ``depth_sum`` and ``depth_concat``
implementations. Each option runs in its own process, since ``XLA_FLAGS``
are read once when the backend starts:

* ``baseline``: no flags;
* ``eigen single-threaded``: ``--xla_cpu_multi_thread_eigen=false`` (does the
  convolution use the second core at all?);
* ``YNNPACK convolutions``: ``--xla_cpu_experimental_ynn_fusion_type=individual_convolution``;
* ``2 host devices``: ``--xla_force_host_platform_device_count=2`` with the
  batch sharded over them (plain ``jax.jit``: XLA partitions the computation,
  so the result is the single-device one).

The loss value is printed with each time, to show whether an option changes
results. Writes ``conv3d_options_<backend>.json`` and ``.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

OPTIONS = {
    "baseline": ("", 1),
    "eigen single-threaded": ("--xla_cpu_multi_thread_eigen=false", 1),
    "YNNPACK convolutions": ("--xla_cpu_experimental_ynn_fusion_type=individual_convolution", 1),
    "2 host devices, batch sharded": ("--xla_force_host_platform_device_count=2", 2),
}

CHILD = r"""
import json, statistics, sys, time
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
from sam_jax.models.conv3d import conv3d
devices, rounds = int(sys.argv[1]), int(sys.argv[2])
mesh = jax.make_mesh((devices,), ("batch",))
x = jax.random.normal(jax.random.key(0), (32, 28, 28, 28, 16))
k = jax.random.normal(jax.random.key(1), (3, 3, 3, 16, 16)) * 0.1
x = jax.device_put(x, NamedSharding(mesh, P("batch")))
k = jax.device_put(k, NamedSharding(mesh, P()))
out = {}
for impl in ("xla", "depth_sum", "depth_concat"):
  loss = lambda x, k, impl=impl: (conv3d(x, k, (1, 1, 1), [(1, 1)] * 3, impl) ** 2).sum()
  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  value = float(jax.block_until_ready(fn(x, k))[0])
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    jax.block_until_ready(fn(x, k))
    times.append(time.perf_counter() - start)
  out[impl] = {"seconds": statistics.median(times), "loss": value}
print(json.dumps(out))
"""


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
  args = parser.parse_args()
  results = {"command": f"python -m benchmarks.conv3d_cpu_options --rounds {args.rounds}",
             "options": {}}
  for name, (flags, devices) in OPTIONS.items():
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(devices), str(args.rounds)], env=env,
                          capture_output=True, text=True, check=True)
    results["options"][name] = {"xla_flags": flags, **json.loads(done.stdout.strip().splitlines()[-1])}
    print(name, results["options"][name], flush=True)
  lines = ["# XLA:CPU options on one 3-D convolution (32x28^3x16 -> 16, 3x3x3, forward + backward)", "",
           f"Median seconds of {args.rounds} runs after compilation, each option in a fresh process. "
           f"Command: `{results['command']}`.", "",
           "| option | XLA_FLAGS | xla | depth_sum | depth_concat | loss (depth_concat) |",
           "|---|---|---|---|---|---|"]
  for name, row in results["options"].items():
    lines.append(f"| {name} | `{row['xla_flags']}` | {row['xla']['seconds']:.3f} | "
                 f"{row['depth_sum']['seconds']:.3f} | {row['depth_concat']['seconds']:.3f} | "
                 f"{row['depth_concat']['loss']:.6e} |")
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "conv3d_options_cpu.json").write_text(json.dumps(results, indent=2))
  (args.out / "conv3d_options_cpu.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
