"""Tables and plots from run directories: a study's report and ``sam-jax compare``.

Everything here reads the records the runs wrote (``results.json``,
``metrics.jsonl`` and, when measured, ``sharpness.json``); nothing is typed
by hand. Per dataset and model, each method's test AUC, ACC, macro F1 and
balanced accuracy are given as mean ± sample std over seeds, with the number
of seeds, and each method is paired by seed with its baseline
(:mod:`sam_jax.studies.stats`): ``*`` marks a paired t-test p < 0.05,
``**`` one that also survives Holm's correction over the table's tests.
"""

from __future__ import annotations

import json
import math
import pathlib
import statistics
from typing import Optional, Sequence

import numpy as np

from sam_jax.studies import grid, stats
from sam_jax.train import config as config_lib

METRICS = (("auc", "test AUC"), ("acc", "test ACC"), ("f1_macro", "F1 (macro)"),
           ("balanced_acc", "bal. ACC"))
# Fields that do not make two runs different methods.
NOT_A_METHOD = ("seed",) + config_lib.RECORD_FIELDS


def load_run(directory: str | pathlib.Path) -> Optional[dict]:
  """A finished run's results, epoch records and sharpness measurements (None if unfinished)."""
  directory = pathlib.Path(directory)
  path = directory / "results.json"
  if not path.is_file():
    return None
  run = {"results": json.loads(path.read_text()), "directory": str(directory)}
  log = directory / "metrics.jsonl"
  run["epochs"] = ([json.loads(line) for line in log.read_text().splitlines() if line.strip()]
                   if log.is_file() else [])
  measured = directory / "sharpness.json"
  run["sharpness"] = json.loads(measured.read_text()) if measured.is_file() else None
  return run


def study_groups(study: grid.Study, root: pathlib.Path) -> dict[tuple[str, str], dict[str, dict]]:
  """(dataset, model) -> method -> seed -> finished run."""
  out: dict = {}
  for run in study.runs:
    if grid.run_state(run.directory(root), run.config) != "done":
      continue  # a changed run belongs to other settings: never mixed into a cell
    loaded = load_run(run.directory(root))
    if loaded is not None:
      out.setdefault((run.dataset, run.model), {}).setdefault(run.method, {})[run.seed] = loaded
  return out


def _value(run: dict, key: str) -> float:
  value = (run["results"].get("test") or {}).get(key)
  return math.nan if value is None else float(value)


def _gap(run: dict) -> float:
  """Train − test accuracy at the selected epoch (from the epoch records)."""
  selected = run["results"].get("selected_epoch")
  for record in run["epochs"]:
    if record["epoch"] == selected and "train_accuracy" in record:
      return record["train_accuracy"] - record["test"]["acc"]
  return math.nan


def _baselines_of(baselines: dict, method: str) -> tuple[str, ...]:
  value = baselines.get(method, ())
  return (value,) if isinstance(value, str) else tuple(value)


def _auc_by_seed(runs: dict[int, dict]) -> dict[int, float]:
  return {s: _value(r, "auc") for s, r in runs.items()}


def table(methods: dict[str, dict[int, dict]], baselines: dict) -> list[str]:
  """The markdown rows of one (dataset, model) table.

  ``baselines`` maps a method to the method (or methods) it is paired with;
  the table's comparison columns use the first, and when any method has
  several a table of every pair follows.
  """
  measured = any(r["sharpness"] for runs in methods.values() for r in runs.values())
  header = ["method", "seeds", *(label for _, label in METRICS), "train−test ACC", "vs",
            "Δ AUC", "p (t)", "p (Wilcoxon)", "s/step"]
  if measured:
    header += ["λ_max", "ρ-sharpness"]
  pairs = {}
  for method, runs in methods.items():
    for base in _baselines_of(baselines, method):
      if base in methods and base != method:
        pairs[(method, base)] = stats.paired_test(_auc_by_seed(runs), _auc_by_seed(methods[base]))
  holm = dict(zip(pairs, stats.holm([t.t_p for t in pairs.values()])))
  mark = lambda pair: ("**" if holm[pair] else
                       "*" if pairs[pair].t_p is not None and pairs[pair].t_p < 0.05 else "")
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for method, runs in methods.items():
    ordered = [runs[s] for s in sorted(runs)]
    cells = [method, str(len(ordered))]
    cells += [stats.format_mean_std([_value(r, key) for r in ordered]) for key, _ in METRICS]
    cells.append(stats.format_mean_std([_gap(r) for r in ordered]))
    first = next(((m, b) for (m, b) in pairs if m == method), None)
    if first is None:
      cells += ["–"] * 4
    else:
      test = pairs[first]
      cells += [first[1], f"{test.mean_difference:+.3f}{mark(first)}", _p(test.t_p),
                _p(test.wilcoxon_p)]
    per_step = [r["results"].get("time_per_step_s") for r in ordered]
    per_step = [t for t in per_step if t]
    cells.append(f"{statistics.median(per_step):.3f}" if per_step else "–")
    if measured:
      for key in ("hessian_top_eigenvalue", "rho_sharpness"):
        cells.append(stats.format_mean_std(
            [r["sharpness"][key] for r in ordered if r["sharpness"]], 2))
    lines.append("| " + " | ".join(cells) + " |")
  if any(len(_baselines_of(baselines, m)) > 1 for m in methods):
    lines += ["", "Every paired comparison (test AUC):", "",
              "| method | vs | seeds | Δ AUC | p (t) | p (Wilcoxon) |", "|---|---|---|---|---|---|"]
    for (method, base), test in pairs.items():
      lines.append(f"| {method} | {base} | {test.n} | {test.mean_difference:+.3f}"
                   f"{mark((method, base))} | {_p(test.t_p)} | {_p(test.wilcoxon_p)} |")
  return lines


def _p(p: Optional[float]) -> str:
  return "–" if p is None else f"{p:.3f}"


def study_report(study: grid.Study, root: pathlib.Path, preset: str) -> str:
  groups = study_groups(study, root)
  lines = [f"# {study.name} (`{preset}` preset)", "", study.description, "",
           "Test metrics at the epoch of best validation AUC; mean ± sample std over seeds. "
           "Δ AUC: mean paired difference (same seed) to the method in `vs`; `*` paired t-test "
           "p < 0.05, `**` also after Holm's correction over the table. With 5 seeds the "
           "Wilcoxon test cannot go below p = 0.0625. train−test ACC: the generalization gap "
           "at the selected epoch. s/step: median time per step on the machine that ran it. "
           f"Written by `sam-jax grid report` from the run directories under `{root}`.", ""]
  status = grid.status(study, root)
  done = sum(len(s["done"]) for s in status.values())
  changed = sum(len(s["changed"]) for s in status.values())
  # A vmapped program's seeds each record the program's time: count it once.
  run_hours = sum(run["results"].get("wall_seconds", 0.0) / run["results"].get("vmapped_seeds", 1)
                  for methods in groups.values() for seeds in methods.values()
                  for run in seeds.values()) / 3600
  lines += [f"{done} of {len(study.runs)} runs finished, in {run_hours:.2f} hours of run time "
            "(the sum of the runs' own wall-clock times)."
            + (f" {changed} runs made with other settings than the study now gives are left "
               "out (`sam-jax grid status` lists them)." if changed else ""), ""]
  for (dataset, model), methods in groups.items():
    first = next(iter(next(iter(methods.values())).values()))["results"]
    config = first["config"]
    lines += [f"## {dataset}, {model}", "",
              f"{config['model']} width {config['width']}, {config['epochs']} epochs, batch "
              f"{config['batch_size']}, image size {first['dataset']['image_shape']}, splits "
              f"{first['dataset']['sizes']}.", ""]
    if dataset in study.references:
      lines += [f"Published: {study.references[dataset]}", ""]
    lines += table(methods, study.baselines) + [""]
  return "\n".join(lines)


def _panels(groups: dict, path: pathlib.Path):
  """Yields ``(axis, key)``, one panel per (dataset, model), two per row; saves ``path``."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  keys = list(groups)
  if not keys:
    return
  cols = min(2, len(keys))
  rows = math.ceil(len(keys) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 3.6 * rows), squeeze=False)
  yield from zip(axes.flat, keys)
  for axis in list(axes.flat)[len(keys):]:
    axis.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_bars(groups: dict[tuple[str, str], dict[str, dict]], path: pathlib.Path,
              metric: str = "auc") -> None:
  """Test ``metric`` per method (mean ± std over seeds), one panel per dataset and model."""
  for axis, key in _panels(groups, path):
    methods = groups[key]
    names = list(methods)
    values = [[_value(r, metric) for r in methods[m].values()] for m in names]
    means = [stats.mean_std(v)[0] for v in values]
    stds = [stats.mean_std(v)[1] for v in values]
    axis.bar(range(len(names)), means, yerr=stds, capsize=3, color="tab:blue", alpha=0.8)
    for i, v in enumerate(values):
      axis.plot([i] * len(v), v, ".", color="black", markersize=3)
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    finite = [m - s for m, s in zip(means, stds) if not math.isnan(m)]
    if finite:
      axis.set_ylim(max(0.0, min(finite) - 0.05), 1.0)
    axis.set_title(f"{key[0]}, {key[1]}: test {metric.upper()}", fontsize=10)


def plot_validation_curves(groups: dict[tuple[str, str], dict[str, dict]], path: pathlib.Path,
                           metric: str = "auc") -> None:
  """Mean validation ``metric`` per epoch for each method (band: ± std over seeds)."""
  for axis, key in _panels(groups, path):
    for method, runs in groups[key].items():
      curves = [[r["val"][metric] for r in run["epochs"]] for run in runs.values() if run["epochs"]]
      if not curves:
        continue
      length = min(len(c) for c in curves)
      values = np.asarray([c[:length] for c in curves], dtype=float)
      epochs = np.arange(1, length + 1)
      mean = np.nanmean(values, axis=0)
      line, = axis.plot(epochs, mean, label=method, linewidth=1)
      if len(curves) > 1:
        std = np.nanstd(values, axis=0, ddof=1)
        axis.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.1)
    axis.set_xlabel("epoch")
    axis.set_ylabel(f"val {metric.upper()}")
    axis.set_title(f"{key[0]}, {key[1]}", fontsize=10)
    axis.legend(fontsize=6, ncol=2)


def plot_sharpness_vs_auc(groups: dict[tuple[str, str], dict[str, dict]],
                          path: pathlib.Path) -> bool:
  """Each measured run's Hessian λ_max against its test AUC, coloured by method."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  keys = [k for k, methods in groups.items()
          if any(r["sharpness"] for runs in methods.values() for r in runs.values())]
  if not keys:
    return False
  fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4), squeeze=False)
  for axis, key in zip(axes.flat, keys):
    for method, runs in groups[key].items():
      points = [(r["sharpness"]["hessian_top_eigenvalue"], _value(r, "auc"))
                for r in runs.values() if r["sharpness"]]
      if points:
        axis.scatter(*zip(*points), label=method, s=14)
    axis.set_xscale("symlog")
    axis.set_xlabel("top Hessian eigenvalue (train loss)")
    axis.set_ylabel("test AUC")
    axis.set_title(f"{key[0]}, {key[1]}", fontsize=10)
    axis.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def write_study_report(study: grid.Study, root: pathlib.Path, path: pathlib.Path,
                       preset: str) -> pathlib.Path:
  """The report at ``path`` (markdown) with ``<stem>_auc.png``, ``<stem>_curves.png`` and,
  when runs were measured, ``<stem>_sharpness.png`` beside it."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  groups = study_groups(study, root)
  stem = path.stem
  text = study_report(study, root, preset)
  plot_bars(groups, path.parent / f"{stem}_auc.png")
  plot_validation_curves(groups, path.parent / f"{stem}_curves.png")
  text += (f"\n![test AUC per method]({stem}_auc.png)\n\n"
           f"![validation AUC per epoch]({stem}_curves.png)\n")
  if plot_sharpness_vs_auc(groups, path.parent / f"{stem}_sharpness.png"):
    text += f"\n![sharpness against test AUC]({stem}_sharpness.png)\n"
  path.write_text(text)
  return path


# ----------------------------------------------------------------------------
# Any set of runs: sam-jax compare.


def find_runs(paths: Sequence[str | pathlib.Path]) -> list[pathlib.Path]:
  """Run directories from paths and quoted globs: a run directory itself, or every finished
  run below a directory (a study's results, a folder of runs)."""
  import glob

  found = []
  for path in paths:
    matches = [pathlib.Path(m) for m in sorted(glob.glob(str(path)))] or [pathlib.Path(path)]
    if not any(m.exists() for m in matches):
      raise FileNotFoundError(f"no run directory or folder matches {path}.")
    for match in matches:
      if (match / "results.json").is_file():
        found.append(match)
      elif match.is_dir():
        found += sorted(p.parent for p in match.rglob("results.json")
                        if "checkpoints" not in p.parts)
  return list(dict.fromkeys(found))


def group_runs(directories: Sequence[str | pathlib.Path]) -> dict[tuple[str, str], dict[str, dict]]:
  """Finished runs grouped as a study: (dataset, model) -> label -> seed -> run.

  ``directories`` are run directories, folders holding runs, or globs
  (:func:`find_runs`). A run's label names the config fields in which the
  runs differ (seed and bookkeeping fields aside), e.g. ``optimizer=sam,
  rho=0.1``.
  """
  runs = [r for r in (load_run(d) for d in find_runs(directories)) if r is not None]
  if not runs:
    raise FileNotFoundError("no finished runs (results.json) among the given directories.")
  configs = [{k: v for k, v in r["results"]["config"].items() if k not in NOT_A_METHOD}
             for r in runs]
  differing = sorted(k for k in configs[0] if len({json.dumps(c.get(k)) for c in configs}) > 1)
  shown = [k for k in differing if k not in ("dataset", "model")]
  out: dict = {}
  for run, config in zip(runs, configs):
    label = ", ".join(f"{k}={config[k]}" for k in shown) or "runs"
    key = (pathlib.Path(str(config["dataset"])).name, str(config["model"]))
    seeds = out.setdefault(key, {}).setdefault(label, {})
    seed = run["results"]["config"]["seed"]
    if seed in seeds:
      raise ValueError(f"two runs of {label!r} with seed {seed}: {seeds[seed]['directory']} and "
                       f"{run['directory']}; compare one of them.")
    seeds[seed] = run
  return out


def compare(directories: Sequence[str | pathlib.Path], baseline: Optional[str] = None,
            out_dir: Optional[pathlib.Path] = None) -> str:
  """The study table for any runs; ``baseline`` (a label) is what the others are paired with."""
  groups = group_runs(directories)
  lines = ["# Comparison of runs", "",
           "Mean ± sample std over seeds at the epoch of best validation AUC; paired by seed "
           "with the baseline (`*` t-test p < 0.05, `**` after Holm).", ""]
  for (dataset, model), methods in groups.items():
    base = baseline if baseline in methods else next(iter(methods))
    lines += [f"## {dataset}, {model}", "", *table(methods, {m: base for m in methods}), ""]
  if out_dir is not None:
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_validation_curves(groups, out_dir / "compare_curves.png")
    plot_bars(groups, out_dir / "compare_auc.png")
    (out_dir / "compare.md").write_text("\n".join(lines))
  return "\n".join(lines)
