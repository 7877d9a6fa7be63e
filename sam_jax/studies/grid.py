"""A study as a grid of runs: datasets × models × methods × seeds, each a run directory.

A study file (see ``experiments/studies/``) defines ``get_study(preset)``
returning a :class:`Study`: its runs (each a full
:class:`~sam_jax.train.config.TrainConfig`), which method each method is
compared with, and published reference numbers. :func:`expand` builds the
runs from :class:`Block` s (products of datasets, models and methods) and a
``configure(dataset, model, method)`` function.

The grid's state lives in the run directories only: a run is *done* when its
``results.json`` exists, *failed* when its ``error.json`` does, *running*
while a live process holds its work-directory lock (on this host or, on a
shared filesystem with working locks, another), *started* when it holds a
checkpoint, *pending* otherwise. So any executor (this
machine, a cluster) can run any subset, and the same study is resumed by
running it again. A done or started run whose saved config differs from the
one the study now gives it is *changed*: the study file (or ``--set``) was
edited after it ran. It is neither counted as done nor resumed, since
either would mix two settings in one cell without saying so.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
import runpy
import sys
from typing import Any, Callable, Iterable, Optional, Sequence

from sam_jax.train import config as config_lib
from sam_jax.train.config import TrainConfig
from sam_jax.train.workdir_lock import held_by

STATES = ("done", "changed", "failed", "running", "started", "pending")


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: configs are not hashable
class Run:
  """One training run of a study: a cell (dataset, model, method) and a seed."""

  dataset: str
  model: str
  method: str
  seed: int
  config: TrainConfig

  @property
  def cell(self) -> tuple[str, str, str]:
    return (self.dataset, self.model, self.method)

  def directory(self, root: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(root) / "runs" / self.dataset / self.model / self.method / f"seed{self.seed}"

  def __str__(self) -> str:
    return f"{self.dataset} {self.model} {self.method} seed {self.seed}"


@dataclasses.dataclass(frozen=True)
class Block:
  """Every combination of these datasets, models and methods."""

  datasets: Sequence[str]
  models: Sequence[str]
  methods: Sequence[str]


@dataclasses.dataclass
class Study:
  """Attributes:
    name: the study's name (its results go to ``experiments/results/<name>``).
    runs: every run, in the order they are executed.
    baselines: method -> the method (or a tuple of methods) its paired tests
      compare it with (e.g. every sharpness method against its base optimizer).
    references: dataset -> published numbers to print beside ours (text).
    description: what the study asks; the report's preamble.
    resources: what each run asks of a cluster under ``--executor slurm|ray``
      (fields of :class:`~sam_jax.studies.executors.Resources`, e.g.
      ``{"gpus": 1, "time_min": 240}``); the command line overrides them.
  """

  name: str
  runs: list[Run]
  baselines: dict[str, str | tuple[str, ...]] = dataclasses.field(default_factory=dict)
  references: dict[str, str] = dataclasses.field(default_factory=dict)
  description: str = ""
  resources: dict[str, Any] = dataclasses.field(default_factory=dict)

  def cells(self) -> dict[tuple[str, str, str], list[Run]]:
    out: dict[tuple[str, str, str], list[Run]] = {}
    for run in self.runs:
      out.setdefault(run.cell, []).append(run)
    return out


def expand(blocks: Iterable[Block], seeds: Sequence[int],
           configure: Callable[[str, str, str], TrainConfig]) -> list[Run]:
  """The runs of ``blocks`` × ``seeds``, each configured by ``configure``; duplicates dropped."""
  runs, seen = [], set()
  for block in blocks:
    for dataset, model, method in itertools.product(block.datasets, block.models, block.methods):
      if (dataset, model, method) in seen:
        continue
      seen.add((dataset, model, method))
      config = configure(dataset, model, method)
      runs += [Run(dataset, model, method, int(seed), config.replace(seed=int(seed)))
               for seed in seeds]
  return runs


def package_root(path: pathlib.Path) -> pathlib.Path:
  """The directory above the outermost package (``__init__.py``) that holds ``path``."""
  root = path.resolve().parent
  while (root / "__init__.py").is_file():
    root = root.parent
  return root


def load_study(path: str | pathlib.Path, preset: str) -> Study:
  """The :class:`Study` that the file's ``get_study(preset)`` returns."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"study file not found: {path}")
  from sam_jax.train.config import describe_file_error

  # A study file imports its package's siblings (experiments.studies.common) as it
  # would under `python -m` from the project root: that root goes on sys.path (the
  # console script `sam-jax` does not put the working directory there).
  root = package_root(path)
  added = str(root) not in sys.path
  if added:
    sys.path.insert(0, str(root))
  try:
    namespace = runpy.run_path(str(path))
  except Exception as error:  # a study file is executed code: its errors are the file's
    raise ValueError(f"study file {path} raised {describe_file_error(error, path)}") from None
  finally:
    if added:
      sys.path.remove(str(root))
  if "get_study" not in namespace:
    raise ValueError(f"{path} must define get_study(preset) returning a sam_jax.studies.Study.")
  try:
    study = namespace["get_study"](preset)
  except Exception as error:
    raise ValueError(f"get_study({preset!r}) in {path} raised {describe_file_error(error, path)}") from None
  if not isinstance(study, Study):
    raise ValueError(f"{path}: get_study({preset!r}) returned {type(study).__name__}, not a Study.")
  return study


def run_state(directory: pathlib.Path, config: Optional[TrainConfig] = None) -> str:
  """``done``, ``changed``, ``failed``, ``running``, ``started`` or ``pending``, from the run directory
  alone; ``changed`` (only with ``config``) when what it saved was configured otherwise."""
  if (directory / "results.json").is_file():
    return "changed" if config is not None and config_changes(directory, config) else "done"
  if (directory / "error.json").is_file():
    return "failed"
  if held_by(directory):
    return "running"
  last = directory / "checkpoints" / "last"
  if last.is_dir() and any(p.name.isdigit() for p in last.iterdir()):
    return "changed" if config is not None and config_changes(directory, config) else "started"
  return "pending"


def config_changes(directory: pathlib.Path, config: TrainConfig) -> dict[str, tuple]:
  """The fields in which the run saved in ``directory`` differs from ``config``: from its
  ``results.json`` if finished, else its ``config.json`` (a started run may still be given
  more epochs or steps: :data:`~sam_jax.train.config.RESUMABLE_CHANGES`)."""
  for name, ignore in (("results.json", config_lib.RECORD_FIELDS),
                       ("config.json", config_lib.RESUMABLE_CHANGES)):
    path = directory / name
    if path.is_file():
      try:
        saved = json.loads(path.read_text())
      except (OSError, ValueError):
        return {"(unreadable)": (str(path), None)}
      saved = saved.get("config", {}) if name == "results.json" else saved
      return config_lib.config_differences(saved, config.to_dict(), ignore=ignore)
  return {}


def status(study: Study, root: pathlib.Path) -> dict[tuple[str, str, str], dict[str, list[int]]]:
  """Per cell: the seeds in each state."""
  out: dict = {}
  for run in study.runs:
    state = run_state(run.directory(root), run.config)
    out.setdefault(run.cell, {s: [] for s in STATES})[state].append(run.seed)
  return out


def status_lines(study: Study, root: pathlib.Path) -> list[str]:
  """A table of the grid's state per cell, the failed runs' error lines and the changed
  runs' first differences."""
  lines = ["| dataset | model | method | done | changed | running | started | failed | pending |",
           "|---|---|---|---|---|---|---|---|---|"]
  totals = dict.fromkeys(STATES, 0)
  errors, changed = [], []
  cells = study.cells()
  for cell, states in status(study, root).items():
    for state in STATES:
      totals[state] += len(states[state])
    lines.append(f"| {' | '.join(cell)} | " + " | ".join(
        str(len(states[s])) for s in ("done", "changed", "running", "started", "failed",
                                      "pending")) + " |")
    runs = {r.seed: r for r in cells[cell]}
    errors += [f"- {runs[seed]}: {read_error(runs[seed].directory(root))}"
               for seed in states["failed"]]
    changed += [f"- {runs[seed]}: {describe_changes(runs[seed], root)}"
                for seed in states["changed"]]
  lines += ["", f"{study.name}: {totals['done']} done, {totals['changed']} changed, "
            f"{totals['running']} running, {totals['started']} started, {totals['failed']} "
            f"failed, {totals['pending']} pending of {len(study.runs)} runs."]
  if errors:
    lines += ["", "Failed runs (last error line):", *errors]
  if changed:
    lines += ["", "Changed runs (made with other settings than the study now gives; move "
              "them away to run them again):", *changed]
  return lines


def describe_changes(run: Run, root: pathlib.Path) -> str:
  return config_lib.describe_differences(config_changes(run.directory(root), run.config),
                                         now="study", limit=3)


def check_unchanged(states: dict[Run, str], root: pathlib.Path) -> None:
  """Refuses a grid whose finished or started runs were made with other settings
  (``states``: each run's :func:`run_state` with its config)."""
  changed = [run for run, state in states.items() if state == "changed"]
  if changed:
    first = changed[0]
    raise ValueError(
        f"{len(changed)} runs under {root} were made with other settings than the study now "
        f"gives them, e.g. {first}: {describe_changes(first, root)}. Move those run "
        f"directories away (or restore the study's settings) and run again; "
        f"`sam-jax grid status` lists them.")


def read_error(directory: pathlib.Path) -> Optional[str]:
  path = directory / "error.json"
  if not path.is_file():
    return None
  return json.loads(path.read_text()).get("error")
