"""A convolution's weight gradient at top level and inside ``lax.cond``, on this backend.

    python -m benchmarks.cond_conv_cpu [--rounds 10]

Why the cheap sharpness variants' ``skip="auto"`` computes both branches on
CPU for convolutional models: the weight gradient of one 3x3 convolution
(128x28x28x16 → 16 channels) as XLA rewrites it (``jax.vjp``) and written
out as an explicit canonical convolution (transposes and a ``VALID`` conv),
each jitted at top level and inside a ``lax.cond`` whose predicate (an
argument, true) is not known at compile time;
a 1024x1024 matmul the same two ways for comparison. Mean seconds per call
after a warm-up. Prints a markdown table and writes
``cond_conv_<backend>.{json,md}`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp

DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def weight_grad_by_vjp(x, dy):
  conv = lambda w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DIMENSIONS)
  return jax.vjp(conv, jnp.zeros((3, 3, x.shape[-1], dy.shape[-1])))[1](dy)[0]


def weight_grad_canonical(x, dy):
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  lhs = jnp.transpose(padded, (3, 1, 2, 0))   # (c_in, H, W, n): batch c_in, features n
  rhs = jnp.transpose(dy, (1, 2, 0, 3))       # (h, w, n, c_out)
  out = jax.lax.conv_general_dilated(lhs, rhs, (1, 1), "VALID", dimension_numbers=DIMENSIONS)
  return jnp.transpose(out, (1, 2, 0, 3))     # (kh, kw, c_in, c_out)


def mean_seconds(fn, args, rounds):
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(rounds):
    result = fn(*args)
  jax.block_until_ready(result)
  return (time.perf_counter() - start) / rounds


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
  args = parser.parse_args()
  x = jax.random.normal(jax.random.key(0), (128, 28, 28, 16))
  dy = jax.random.normal(jax.random.key(1), (128, 28, 28, 16))
  a = jax.random.normal(jax.random.key(2), (1024, 1024))
  cases = {"conv weight gradient (XLA's rewrite)": (weight_grad_by_vjp, (x, dy)),
           "conv weight gradient (explicit canonical conv)": (weight_grad_canonical, (x, dy)),
           "matmul 1024x1024": (lambda m: m @ m, (a,))}
  rows = []
  for name, (fn, operands) in cases.items():
    top = jax.jit(fn)
    zero = jax.eval_shape(fn, *operands)
    # The predicate is an argument: a constant one is folded away with the cond.
    in_cond = jax.jit(lambda take, *o, fn=fn, zero=zero: jax.lax.cond(
        take, lambda: fn(*o), lambda: jnp.zeros(zero.shape, zero.dtype)))
    rows.append({"op": name, "top_level_s": mean_seconds(top, operands, args.rounds),
                 "in_cond_s": mean_seconds(in_cond, (jnp.asarray(True), *operands),
                                           args.rounds)})
  backend = jax.default_backend()
  command = f"python -m benchmarks.cond_conv_cpu --rounds {args.rounds}"
  lines = [f"# Inside `lax.cond` vs top level ({backend}, jax {jax.__version__})", "",
           f"Mean seconds per call after a warm-up. Command: `{command}`.", "",
           "| op | top level s | in cond s | cond / top |", "|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['op']} | {r['top_level_s']:.4f} | {r['in_cond_s']:.4f} | "
                 f"{r['in_cond_s'] / r['top_level_s']:.1f} |")
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / f"cond_conv_{backend}.json").write_text(json.dumps(
      {"command": command, "backend": backend, "jax": jax.__version__, "rows": rows}, indent=2))
  (args.out / f"cond_conv_{backend}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
