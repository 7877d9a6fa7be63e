"""Deep AUC maximization on MedMNIST, with and without SAM, against plain cross-entropy.

    python -m experiments.dam_medmnist [--preset cpu|paper] [--seeds 0 1 2]
        [--datasets breastmnist pneumoniamnist] [--workdir experiments/results/dam_medmnist]

For every dataset and seed it trains (``cpu`` preset: ResNet-18 at width 1/8,
28 px, batch 128; 3-D sets: ResNet-18 3D at width 1/8, batch 32):

``ce``          cross-entropy + Adam 1e-3 (MedMNIST protocol: lr x0.1 at 50%
                and 75%, test metrics at the best validation AUC);
``ce_x2``       the same for twice the epochs: the two-stage recipe's budget;
``aucm``        the two-stage recipe: AUC-M (v2, margin 1) + PESG from the
                ``ce`` run's best weights (LibAUC's MedMNIST recipe: lr 0.1,
                momentum 0.9 in LibAUC's convention, epoch decay 3e-3, weight
                decay 1e-5, reference point reset at the lr decays), dual
                sampler;
``ap``          one stage: AP loss (margin 0.6, γ 0.1) + SOAP (Adam 1e-3);
``pauc``        one stage: one-way pAUC, CVaR form (β 0.1, η 0.1 per step as
                LibAUC 2.0.1) + SOPA (Adam 1e-3, weight decay 5e-4);
``*_sam``       the same with SAM (ρ 0.05) wrapping the AUC optimizer.

Every AUC run uses the dual sampler with half of each batch positive. Runs
already finished (``results.json``) are skipped and interrupted ones resume
from their last checkpoint, so the command can be stopped and rerun. It
writes ``runs/<dataset>/<method>/seed<k>/`` records, ``summary.json`` (every
run's test metrics) and ``table.md``: test AUC and ACC mean ± std over seeds,
the paired difference to ``ce`` with a paired t-test, the MedMNIST v2
ResNet-18 baseline, and time per step.

Budget: the two-stage ``aucm`` runs train ``ce``'s epochs and then as many
again (compare them with ``ce_x2``); the one-stage methods train as many
epochs as ``ce``. An epoch of the
dual sampler is ``max(n₊ // num_pos, n₋ // num_neg)`` batches, so its number
of steps differs from a shuffled epoch's (``table.md`` reports steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import statistics
from typing import Callable, Optional

from experiments.breastmnist_sgd_vs_sam import find_data_dir
from sam_jax.train import config as config_lib
from sam_jax.train import loop

ROOT = pathlib.Path(__file__).resolve().parents[1]
MEDMNIST_V2_RESNET18 = {  # test AUC / ACC, ResNet-18 (28) or ResNet-18 + 3D
    "breastmnist": (0.901, 0.863), "pneumoniamnist": (0.944, 0.854),
    "adrenalmnist3d": (0.827, 0.721), "vesselmnist3d": (0.874, 0.877),
}
PRESETS = {
    # epochs per dataset (stage lengths) and the model width.
    "cpu": {"width": 0.125, "epochs": {"breastmnist": 20, "pneumoniamnist": 6,
                                       "adrenalmnist3d": 5, "vesselmnist3d": 5}},
    "paper": {"width": 1.0, "epochs": {"breastmnist": 100, "pneumoniamnist": 100,
                                       "adrenalmnist3d": 100, "vesselmnist3d": 100}},
}
METHODS = ("ce", "ce_x2", "aucm", "aucm_sam", "ap", "ap_sam", "pauc", "pauc_sam")


@dataclasses.dataclass
class Run:
  dataset: str
  method: str
  seed: int
  config: config_lib.TrainConfig
  after: Optional[str] = None  # the method whose run this one starts from


def base_config(dataset: str, seed: int, preset: str, data_dir: str, download: bool,
                progress: bool) -> config_lib.TrainConfig:
  spec = PRESETS[preset]
  return config_lib.preset("medmnist", dataset).replace(
      width=spec["width"], epochs=spec["epochs"][dataset], seed=seed, data_dir=data_dir,
      download=download, progress=progress)


AUC_COMMON = dict(sampler="dual", sampling_rate=0.5)
METHOD_CHANGES: dict[str, Callable[[config_lib.TrainConfig], dict]] = {
    "ce": lambda c: {},
    "ce_x2": lambda c: dict(epochs=2 * c.epochs),  # the two-stage recipe's budget
    "aucm": lambda c: dict(loss="aucm", optimizer="pesg", learning_rate=0.1, momentum=0.9,
                           momentum_convention="libauc", epoch_decay=3e-3, weight_decay=1e-5,
                           margin=1.0, **AUC_COMMON),
    "ap": lambda c: dict(loss="ap", optimizer="soap", learning_rate=1e-3, margin=0.6,
                         ap_gamma=0.1, weight_decay=0.0, **AUC_COMMON),
    "pauc": lambda c: dict(loss="pauc_cvar", optimizer="sopa", learning_rate=1e-3,
                           pauc_beta=0.1, pauc_eta=0.1, libauc_code=True, weight_decay=5e-4,
                           **AUC_COMMON),
}


def with_sam(changes: dict) -> dict:
  return {**changes, "optimizer": "sam", "base_optimizer": changes["optimizer"], "rho": 0.05}


def study(datasets, seeds, methods, preset, data_dir, download, progress, root) -> list[Run]:
  runs = []
  for dataset in datasets:
    for seed in seeds:
      base = base_config(dataset, seed, preset, data_dir, download, progress)
      for method in methods:
        family = method.removesuffix("_sam")
        changes = METHOD_CHANGES[family](base)
        if method.endswith("_sam"):
          changes = with_sam(changes)
        after = "ce" if family == "aucm" else None
        if after:
          changes["init_from"] = str(run_dir(root, dataset, after, seed))
        runs.append(Run(dataset, method, seed, base.replace(**changes), after))
  return runs


def run_dir(root: pathlib.Path, dataset: str, method: str, seed: int) -> pathlib.Path:
  return root / "runs" / dataset / method / f"seed{seed}"


def execute(run: Run, root: pathlib.Path) -> dict:
  directory = run_dir(root, run.dataset, run.method, run.seed)
  done = directory / "results.json"
  if done.exists():
    return json.loads(done.read_text())
  resume = (directory / "checkpoints" / "last").exists() and any(
      (directory / "checkpoints" / "last").iterdir())
  print(f"\n== {run.dataset} {run.method} seed {run.seed}" + (" (resuming)" if resume else ""),
        flush=True)
  return loop.train_and_evaluate(run.config, directory, resume=resume)


# ----------------------------------------------------------------------------
# Aggregation.


def paired_t(differences: list[float]) -> tuple[Optional[float], Optional[float]]:
  """``(t, two-sided p)`` of the paired differences (SciPy for p when present)."""
  n = len(differences)
  if n < 2:
    return None, None
  sd = statistics.stdev(differences)
  if sd == 0:
    return None, None
  t = statistics.mean(differences) / (sd / math.sqrt(n))
  try:
    from scipy import stats
    return t, float(2 * stats.t.sf(abs(t), n - 1))
  except ImportError:
    return t, None


def mean_std(values: list[float]) -> str:
  if not values:
    return "–"
  if len(values) == 1:
    return f"{values[0]:.4f}"
  return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def aggregate(results: dict, methods, preset: str) -> str:
  lines = [f"# Deep AUC maximization on MedMNIST (`{preset}` preset)", "",
           "Test split at the epoch of best validation AUC; mean ± sample std over seeds; "
           "Δ AUC is the mean paired difference (same seed) to the CE run named in `vs` (the "
           "two-stage runs against CE at their budget), p from a paired t-test. "
           "Written by `python -m experiments.dam_medmnist`.", ""]
  for dataset, by_method in results.items():
    baseline = MEDMNIST_V2_RESNET18.get(dataset)
    first = next(iter(by_method.values()))[0]["config"]
    lines += [f"## {dataset}", "",
              f"{first['model']} at width {first['width']}, {first['epochs']} epochs per stage, "
              f"batch {first['batch_size']}; s/step is the median epoch time per step on the "
              "machine that ran the grid (shared with other work; see the step-time benchmark "
              "for clean ratios).", "",
              f"MedMNIST v2 ResNet-18 baseline (full width, 100 epochs): AUC {baseline[0]}, "
              f"ACC {baseline[1]}." if baseline else "", "",
              "| method | seeds | test AUC | test ACC | vs | Δ AUC | p | steps | s/step |",
              "|---|---|---|---|---|---|---|---|---|"]
    by_seed = {m: {r["config"]["seed"]: r["test"]["auc"] for r in rows}
               for m, rows in by_method.items()}
    ce_steps = statistics.mean(r["steps"] for r in by_method["ce"]) if "ce" in by_method else 0
    for method in methods:
      rows = by_method.get(method, [])
      if not rows:
        continue
      # Compare with CE at the same budget: the two-stage runs with ce_x2 when it exists.
      versus = "ce_x2" if method.startswith("aucm") and "ce_x2" in by_seed else "ce"
      aucs = [r["test"]["auc"] for r in rows]
      accs = [r["test"]["acc"] for r in rows]
      diffs = [r["test"]["auc"] - by_seed[versus][r["config"]["seed"]] for r in rows
               if method not in ("ce", versus) and r["config"]["seed"] in by_seed.get(versus, {})]
      _, p = paired_t(diffs)
      delta = f"{statistics.mean(diffs):+.4f}" if diffs else "–"
      steps = statistics.mean(r["steps"] for r in rows) + (ce_steps if method.startswith("aucm") else 0)
      per_step = statistics.median(r["time_per_step_s"] for r in rows)
      lines.append(f"| {method} | {len(rows)} | {mean_std(aucs)} | {mean_std(accs)} | "
                   f"{versus if diffs else '–'} | {delta} | {'–' if p is None else f'{p:.3f}'} | "
                   f"{steps:.0f} | {per_step:.3f} |")
    pairs = [(m.removesuffix("_sam"), m) for m in methods
             if m.endswith("_sam") and m in by_seed and m.removesuffix("_sam") in by_seed]
    if pairs:
      lines += ["", "SAM on top (paired by seed): Δ AUC = with SAM − without.", "",
                "| objective | Δ AUC | p |", "|---|---|---|"]
      for plain, sharp in pairs:
        diffs = [auc_ - by_seed[plain][seed] for seed, auc_ in by_seed[sharp].items()
                 if seed in by_seed[plain]]
        _, p = paired_t(diffs)
        lines.append(f"| {plain} | {statistics.mean(diffs):+.4f} | "
                     f"{'–' if p is None else f'{p:.3f}'} |")
    lines.append("")
  lines += ["`aucm*` steps include the CE stage they start from.", ""]
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
  parser.add_argument("--datasets", nargs="+", default=["breastmnist", "pneumoniamnist"],
                      choices=tuple(MEDMNIST_V2_RESNET18))
  parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
  parser.add_argument("--data-dir")
  parser.add_argument("--workdir", default=str(ROOT / "experiments" / "results" / "dam_medmnist"))
  parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
  args = parser.parse_args()
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".cache" / "jax"))

  data_dir, download = find_data_dir(args.data_dir)
  root = pathlib.Path(args.workdir)
  methods = list(args.methods)
  if any(m.startswith("aucm") for m in methods) and "ce" not in methods:
    methods.insert(0, "ce")  # the two-stage runs start from it
  runs = study(args.datasets, args.seeds, methods, args.preset, str(data_dir), download,
               args.progress, root)
  results: dict[str, dict[str, list]] = {}
  for i, run in enumerate(runs):
    outcome = execute(run, root)
    results.setdefault(run.dataset, {}).setdefault(run.method, []).append(outcome)
    print(f"[{i + 1}/{len(runs)}] {run.dataset} {run.method} seed {run.seed}: test AUC "
          f"{outcome['test']['auc']:.4f} ACC {outcome['test']['acc']:.4f}", flush=True)
    summary = {d: {m: [{"seed": r["config"]["seed"], "test": r["test"], "val": r["val"],
                        "selected_epoch": r["selected_epoch"], "steps": r["steps"],
                        "time_per_step_s": r["time_per_step_s"]} for r in rs]
                   for m, rs in by.items()} for d, by in results.items()}
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    (root / "table.md").write_text(aggregate(results, methods, args.preset))
  print("\n" + (root / "table.md").read_text())


if __name__ == "__main__":
  main()
