"""Step time of the cheap sharpness variants against SGD and SAM, averaged over steps.

    python -m benchmarks.variants_step_time [--models resnet18:0.25 vit_ti:4]
                                            [--batch-size 128] [--rounds 3] [--steps 10]

LookSAM (period 5, α 0.7), AE-SAM (threshold 0, decay 0.9) and randomized SAM
(RST, p 0.5) take SAM's second pass on some steps only, through
``lax.cond`` (``skip="cond"``; ``"select"`` computes both branches, the
CPU default, and both are timed); so their cost is the *mean* step time over many consecutive
steps (a median would report the cheap steps only). Each method runs
``steps`` consecutive steps per round, the methods interleaved in rounds, all
through the same jitted train step as :mod:`benchmarks.step_time` (same
model, batch, SGD with momentum). The table gives the mean s/step, its ratio
to SGD's mean, the measured share of SAM steps ``f``, and the ratio the
share predicts, ``1 + f·(SAM/SGD − 1)``: a measured ratio above it is what
the ``cond`` and the variant's own arithmetic cost. Momentum-SAM (ρ 0.3) never
takes a second pass: its ratio is its own arithmetic over SGD's step. ESAM
(β 0.6, γ 0.5) takes a ranking forward pass and a second pass on half the
batch on every step (about 1 + 1/3 + 1/2 passes).

Writes ``variants_step_time_<backend>.json`` and ``.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform

import jax
import optax

import sam_jax
from benchmarks.step_time import LR, benchmark_model


def variant_methods() -> dict[str, optax.GradientTransformation]:
  sgd = lambda: optax.sgd(LR, momentum=0.9)
  return {
      "sgd": sgd(),
      "sam": optax.chain(sam_jax.sam(0.05), sgd()),
      **{f"looksam (period 5, {skip})":
         optax.chain(sam_jax.looksam(0.05, period=5, alpha=0.7, skip=skip), sgd())
         for skip in SKIPS},
      **{f"ae_sam (threshold 0, {skip})":
         optax.chain(sam_jax.ae_sam(0.05, threshold=0.0, skip=skip), sgd()) for skip in SKIPS},
      **{f"randomized_sam (p 0.5, {skip})":
         optax.chain(sam_jax.randomized_sam(0.05, 0.5, skip=skip), sgd()) for skip in SKIPS},
      # One pass on every step, the perturbation along SGD's own step.
      "momentum_sam (rho 0.3)": optax.chain(sgd(), sam_jax.momentum_sam(0.3)),
      # Every step: a ranking forward pass, then the second pass on half the batch.
      "esam (beta 0.6, gamma 0.5)": optax.chain(sam_jax.esam(0.05, 0.6, 0.5), sgd()),
  }


# Both ways of skipping: "cond" (lax.cond, the default off CPU) and "select" (both
# branches computed, the default on CPU, where XLA's convolution gradients are slow
# inside a conditional: jax-ml/jax#12868).
SKIPS = ("cond", "select")


def to_markdown(results: dict) -> str:
  lines = [f"# Cheap sharpness variants: step time ({results['backend']}: {results['device']}, "
           f"jax {results['jax']})", "",
           "Mean seconds per train step over consecutive steps after compilation (the variants "
           "take SAM's second pass on some steps only); ratios to SGD's mean in the same "
           "process; f: the measured share of steps that took SAM; predicted: 1 + f·(SAM/SGD − 1). "
           "Command: `" + results["command"] + "`.", ""]
  for block in results["runs"]:
    sam = block["methods"]["sam"]["mean_ratio_to_sgd"]
    lines += [f"## {block['model']} ({block['params']:,} parameters), 28x28x1, batch "
              f"{block['batch_size']}", "",
              "| method | mean s/step | / SGD | f (SAM steps) | predicted / SGD | timed steps |",
              "|---|---|---|---|---|---|"]
    for method, row in block["methods"].items():
      f = row["sam_fraction"]
      if f is None and method not in ("sgd", "sam"):  # no branch: nothing to predict from
        shares = "– | –"
      else:
        f = 1.0 if method == "sam" else (0.0 if f is None else f)
        shares = f"{f:.2f} | {1 + f * (sam - 1):.2f}"
      lines.append(f"| {method} | {row['mean_s']:.4f} | {row['mean_ratio_to_sgd']:.2f} | "
                   f"{shares} | {row['timed_steps']} |")
    lines.append("")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=["resnet18:0.25", "vit_ti:4"])
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
  args = parser.parse_args()
  backend = jax.default_backend()
  results = {"backend": backend, "device": jax.devices()[0].device_kind, "jax": jax.__version__,
             "host": platform.platform(),
             "command": "python -m benchmarks.variants_step_time --models " + " ".join(args.models)
                        + f" --batch-size {args.batch_size} --rounds {args.rounds}"
                        f" --steps {args.steps}",
             "runs": []}
  args.out.mkdir(parents=True, exist_ok=True)
  for spec in args.models:
    results["runs"].append(benchmark_model(spec, args.batch_size, args.rounds, args.steps, None,
                                           method_table=variant_methods))
    (args.out / f"variants_step_time_{backend}.json").write_text(json.dumps(results, indent=2))
    (args.out / f"variants_step_time_{backend}.md").write_text(to_markdown(results))
    print(to_markdown({**results, "runs": results["runs"][-1:]}), flush=True)


if __name__ == "__main__":
  main()
