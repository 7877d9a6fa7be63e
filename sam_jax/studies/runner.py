"""Running a study's pending runs on this machine, resumably, with progress.

:func:`run_grid` walks the study cell by cell. A done run is skipped, a
started one resumes from its last checkpoint, a failed one is skipped (its
``error.json`` names the error) unless ``retry_failed``. If any run was made
with other settings than the study now gives it, nothing runs: the error
names it (see :func:`sam_jax.studies.grid.check_unchanged`). With
``vmap_seeds`` the pending seeds of a cell train together in one vmapped
program (:mod:`sam_jax.train.seeds`; worth it on accelerators, not on CPU).
After each finished run ``on_done(run, directory)`` is called (the CLI's
``--commit`` commits the run's small records there), and one progress line
gives runs done / total and the estimated time left.

A run that stops on a user-level error (bad option for this dataset,
non-finite training) records ``error.json`` and the grid goes on; any other
exception stops the grid, since it is a bug to look at.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Callable, Optional

from sam_jax.errors import one_line
from sam_jax.studies import executors, grid
from sam_jax.train import loop, seeds
from sam_jax.train.step import NonFiniteError
from sam_jax.train.workdir_lock import WorkdirBusyError

RUN_ERRORS = (ValueError, FileNotFoundError, NonFiniteError)


def _record_error(directory: pathlib.Path, error: Exception) -> None:
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "error.json").write_text(json.dumps(
      {"error": one_line(error), "type": type(error).__name__},
      indent=2))


class Progress:
  """Runs done / total and the time left, from the mean wall time of this session's runs."""

  def __init__(self, total: int, done: int, log: Callable[[str], None]):
    self.total, self.done, self.log = total, done, log
    self.start, self.finished_here = time.perf_counter(), 0

  def advance(self, what: str, count: int = 1) -> None:
    self.done += count
    self.finished_here += count
    elapsed = time.perf_counter() - self.start
    left = (self.total - self.done) * elapsed / max(self.finished_here, 1)
    self.log(f"[{self.done}/{self.total}] {what} | elapsed {_hms(elapsed)}, "
             f"about {_hms(left)} left")


def _hms(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_grid(study: grid.Study, root: str | pathlib.Path, *, vmap_seeds: bool = False,
             retry_failed: bool = False, only: Optional[Callable[[grid.Run], bool]] = None,
             on_done: Callable[[grid.Run, pathlib.Path], None] = lambda run, directory: None,
             log: Callable[[str], None] = print, run_log: Callable[[str], None] = lambda m: None,
             executor: str = "local", resources: Optional[executors.Resources] = None,
             wait: bool = True) -> dict[str, int]:
  """Runs what is not done yet on ``executor``; returns the count of runs per state.

  ``local`` trains here, one task after another; ``slurm`` submits the tasks as one
  job array and, with ``wait``, follows them to the end; ``ray`` sends them to a Ray
  cluster and follows them (see :mod:`sam_jax.studies.executors`).
  """
  root = pathlib.Path(root)
  if executor != "local":
    executors.require(executor)  # a missing extra is named before anything happens
  resources = resources or executors.read_resources(study.resources)
  runs = [r for r in study.runs if only is None or only(r)]
  states = {r: grid.run_state(r.directory(root), r.config) for r in runs}
  grid.check_unchanged(states, root)
  progress = Progress(len(runs), sum(s == "done" for s in states.values()), log)
  log(f"{study.name}: {progress.done} of {len(runs)} runs done; results in {root}")
  running = [r for r in runs if states[r] == "running"]
  if running:
    log(f"{len(running)} runs are running elsewhere (their directories are locked); left to them")
  todo = [r for r in runs if states[r] in ("pending", "started")
          or (retry_failed and states[r] == "failed")]
  tasks = executors.tasks_of(todo, vmap_seeds)

  def finished(task_runs: list[grid.Run], outcomes: dict[str, str]) -> None:
    for run in task_runs:
      outcome = outcomes.get(str(run), "?")
      if outcome == "done":
        on_done(run, run.directory(root))
        progress.advance(f"{run}: {_summary([run], root)}")
      elif outcome == "failed":
        progress.advance(f"{run}: FAILED {grid.read_error(run.directory(root))}")
      else:  # running elsewhere, changed meanwhile, or its job died: not counted
        log(f"{run}: {outcome}")

  if executor == "local":
    for task_runs in tasks:
      finished(task_runs, executors.execute_task(task_runs, root, vmap_seeds=vmap_seeds,
                                                 retry_failed=retry_failed, run_log=run_log))
  elif executor == "slurm" and tasks:
    # Jobs start elsewhere (another node, another working directory): absolute paths.
    jobs = executors.submit_slurm(tasks, root.resolve(), resources, name=study.name,
                                  vmap_seeds=vmap_seeds, retry_failed=retry_failed)
    log(executors.describe_jobs(jobs, root))
    if wait:
      executors.wait_slurm(jobs, tasks, finished)
  elif executor == "ray" and tasks:
    executors.run_ray(tasks, root.resolve(), resources, vmap_seeds=vmap_seeds, retry_failed=retry_failed,
                      on_task=finished)
  final = grid.status(study, root)
  return {state: sum(len(s[state]) for s in final.values()) for state in grid.STATES}


def run_alone(run: grid.Run, root: pathlib.Path, run_log) -> str:
  """Trains (or resumes) one run; ``done``, ``failed`` (error.json written) or ``running``."""
  directory = run.directory(root)
  try:
    loop.train_and_evaluate(run.config, directory, resume=True, log=run_log)
  except WorkdirBusyError as error:  # another process (grid, job) is running it
    run_log(f"{run}: skipped, {error}")
    return "running"
  except RUN_ERRORS as error:
    _record_error(directory, error)
    return "failed"
  return "done"


def run_together(todo: list[grid.Run], root: pathlib.Path, run_log) -> bool:
  """Trains the cell's pending seeds in one vmapped program; False if they cannot be."""
  config = todo[0].config
  try:
    seeds.check_seeds(config, [r.seed for r in todo], [r.directory(root) for r in todo])
    seeds.train_and_evaluate_seeds(config, [r.seed for r in todo],
                                   [r.directory(root) for r in todo], resume=True, log=run_log)
  except NonFiniteError as error:  # one seed diverged: the others run alone, it fails alone
    run_log(f"vmapped seeds stopped ({error}); running them one by one")
    return False
  except WorkdirBusyError as error:  # one of them runs elsewhere: take the others alone
    run_log(f"cannot vmap these seeds ({error}); running them one by one")
    return False
  except ValueError as error:  # e.g. checkpoints at different steps
    run_log(f"cannot vmap these seeds ({error}); running them one by one")
    return False
  return True


def _summary(runs: list[grid.Run], root: pathlib.Path) -> str:
  parts = []
  for run in runs:
    results = json.loads((run.directory(root) / "results.json").read_text())
    test = results.get("test") or {}
    parts.append(f"AUC {test.get('auc', float('nan')):.4f} ACC {test.get('acc', float('nan')):.4f}")
  return "; ".join(parts)
