"""Where a grid's runs execute: this process, SLURM jobs (through submitit), or Ray tasks.

A grid's state lives in its run directories (:mod:`sam_jax.studies.grid`), so
an executor only hands out *tasks* and never keeps state of its own: a task
is one run, or with ``vmap_seeds`` the pending seeds of one cell, and
:func:`execute_task` does the same thing wherever it is called. It looks at
each run's directory first: a run finished meanwhile (by another submission),
running elsewhere (its lock is held) or made with other settings is left
alone, a started one resumes from its checkpoint. Submitting a grid twice
therefore never trains a finished run again, and two jobs never write one run
directory (the second finds the lock held and leaves the run to the first).

SLURM: each task is one element of a job array (``sbatch --array``; at most
``array_parallelism`` at once), with the resources of :class:`Resources`.
The task is checkpointable in submitit's sense: on a time-out or pre-emption
signal the job is requeued and the run resumes from its own last checkpoint
(the work since that checkpoint is lost: at most ``checkpoint_every``).
``submitit_cluster="local"`` runs the same jobs as processes on this machine,
which is how the SLURM path is tested without a cluster.

Ray: each task is a Ray task with the same resources, sent to an existing
cluster (``ray_address``) or to a Ray started here. The run directories must
be on storage every node sees, as for SLURM.

``submitit`` and ``ray`` are optional extras (``sam_jax[slurm]``,
``sam_jax[ray]``), imported only when their executor is chosen.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
import time
from typing import Any, Callable, Optional, Sequence

from sam_jax.studies import grid

EXECUTORS = ("local", "slurm", "ray")
EXTRAS = {"slurm": ("submitit", "sam_jax[slurm]"), "ray": ("ray", "sam_jax[ray]")}


@dataclasses.dataclass
class Resources:
  """What each task asks of a cluster; the local executor ignores them.

  Attributes:
    cpus: CPU cores per task (SLURM ``--cpus-per-task``, Ray ``num_cpus``).
    gpus: GPUs per task (SLURM ``--gpus-per-node``, Ray ``num_gpus``); a run
      with ``parallel="pmap"`` or ``"shard_map"`` uses all of them.
    mem_gb: memory per task in GB (SLURM ``--mem``, Ray ``memory``); None:
      the cluster's default.
    time_min: SLURM time limit per task in minutes; a run that reaches it is
      requeued and resumes.
    partition, account: SLURM partition and account (None: the defaults).
    array_parallelism: SLURM: at most this many tasks of the array at once.
    slurm_parameters: more ``sbatch`` options, e.g. ``{"qos": "high"}``.
    submitit_cluster: ``"slurm"``, or ``"local"`` to run the jobs as local
      processes (trying a submission without a cluster).
    ray_address: an existing Ray cluster (``"auto"``, ``"ray://host:10001"``);
      None starts a Ray on this machine.
  """

  cpus: int = 2
  gpus: int = 0
  mem_gb: Optional[float] = None
  time_min: int = 120
  partition: Optional[str] = None
  account: Optional[str] = None
  array_parallelism: int = 64
  slurm_parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
  submitit_cluster: str = "slurm"
  ray_address: Optional[str] = None

  def __post_init__(self):
    for name in ("cpus", "array_parallelism", "time_min"):
      if getattr(self, name) < 1:
        raise ValueError(f"resources: {name} must be at least 1, got {getattr(self, name)}.")
    if self.gpus < 0 or (self.mem_gb is not None and self.mem_gb <= 0):
      raise ValueError(f"resources: gpus must be >= 0 and mem_gb > 0, got gpus={self.gpus}, "
                       f"mem_gb={self.mem_gb}.")
    if self.submitit_cluster not in ("slurm", "local"):
      raise ValueError(f"resources: submitit_cluster is 'slurm' or 'local', got "
                       f"{self.submitit_cluster!r}.")


def require(executor: str):
  """The executor's module (submitit or ray), or a one-line error naming the extra."""
  if executor not in EXECUTORS:
    raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}.")
  module, extra = EXTRAS[executor]
  try:
    return importlib.import_module(module)
  except ImportError:
    raise ValueError(f"--executor {executor} needs {module}: pip install '{extra}' "
                     f"(or pip install {module}).") from None


def tasks_of(todo: Sequence[grid.Run], vmap_seeds: bool) -> list[list[grid.Run]]:
  """One task per run, or with ``vmap_seeds`` one per cell (its pending seeds together)."""
  if not vmap_seeds:
    return [[run] for run in todo]
  cells: dict = {}
  for run in todo:
    cells.setdefault(run.cell, []).append(run)
  return list(cells.values())


@dataclasses.dataclass
class Task:
  """A picklable task: :func:`execute_task` on these runs. ``checkpoint`` makes it
  requeueable by submitit (the runs resume from their own checkpoints)."""

  runs: list[grid.Run]
  root: str
  vmap_seeds: bool = False
  retry_failed: bool = False

  def __call__(self) -> dict[str, str]:
    # Each run's epoch lines go to the job's own log (SLURM: root/jobs/<id>/, Ray: the
    # worker logs of the Ray session).
    return execute_task(self.runs, self.root, vmap_seeds=self.vmap_seeds,
                        retry_failed=self.retry_failed, run_log=_print)

  def checkpoint(self, *args, **kwargs):
    import submitit
    return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _quiet(message: str) -> None:
  del message


def _print(message: str) -> None:
  print(message, flush=True)


def execute_task(runs: Sequence[grid.Run], root: str | pathlib.Path, *, vmap_seeds: bool = False,
                 retry_failed: bool = False, run_log: Callable[[str], None] = _quiet,
                 ) -> dict[str, str]:
  """Trains what ``runs`` still need, as their directories say now; ``{run: outcome}``
  with outcome ``done``, ``failed``, ``running`` (another process has it) or ``changed``."""
  from sam_jax.studies import runner

  root = pathlib.Path(root)
  outcomes, todo = {}, []
  for run in runs:
    state = grid.run_state(run.directory(root), run.config)
    if state in ("done", "changed", "running") or (state == "failed" and not retry_failed):
      outcomes[str(run)] = state
    else:
      todo.append(run)
  for run in todo:
    (run.directory(root) / "error.json").unlink(missing_ok=True)
  if vmap_seeds and len(todo) > 1 and runner.run_together(todo, root, run_log):
    return {**outcomes, **{str(run): "done" for run in todo}}
  for run in todo:
    outcomes[str(run)] = runner.run_alone(run, root, run_log)
  return outcomes


def submit_slurm(tasks: list[list[grid.Run]], root: pathlib.Path, resources: Resources, *,
                 name: str, vmap_seeds: bool, retry_failed: bool) -> list:
  """Submits the tasks as one job array; returns submitit's jobs. Job logs go to
  ``root/jobs/<job id>/``."""
  submitit = require("slurm")
  executor = submitit.AutoExecutor(folder=str(root / "jobs" / "%j"),
                                   cluster=resources.submitit_cluster)
  executor.update_parameters(**slurm_parameters(resources, name))
  calls = [Task(runs, str(root), vmap_seeds, retry_failed) for runs in tasks]
  with executor.batch():
    jobs = [executor.submit(call) for call in calls]
  return jobs


def slurm_parameters(resources: Resources, name: str) -> dict[str, Any]:
  """submitit's ``update_parameters`` for these resources (``slurm_*`` ones are dropped by
  its local cluster)."""
  parameters: dict[str, Any] = dict(
      name=name, timeout_min=resources.time_min, cpus_per_task=resources.cpus,
      slurm_array_parallelism=resources.array_parallelism)
  if resources.gpus:
    parameters["gpus_per_node"] = resources.gpus
  if resources.mem_gb is not None:
    parameters["mem_gb"] = resources.mem_gb
  if resources.partition:
    parameters["slurm_partition"] = resources.partition
  if resources.account:
    parameters["slurm_account"] = resources.account
  if resources.slurm_parameters:
    parameters["slurm_additional_parameters"] = dict(resources.slurm_parameters)
  return parameters


def wait_slurm(jobs: list, tasks: list[list[grid.Run]], on_task: Callable, poll_s: float = 5.0
               ) -> None:
  """Calls ``on_task(runs, outcomes)`` as each job ends (a job that died gives each of its
  runs the outcome ``job <id> ended: <error>``)."""
  pending = dict(enumerate(jobs))
  while pending:
    for i in [i for i, job in pending.items() if job.done()]:
      job = pending.pop(i)
      try:
        outcomes = job.result()
      except Exception as error:  # the job died (killed, cancelled, out of memory): the
        # run's directory still says where it stands; the next submission resumes it
        outcomes = {str(r): f"job {job.job_id} ended: {type(error).__name__}" for r in tasks[i]}
      on_task(tasks[i], outcomes)
    if pending:
      time.sleep(poll_s)


def run_ray(tasks: list[list[grid.Run]], root: pathlib.Path, resources: Resources, *,
            vmap_seeds: bool, retry_failed: bool, on_task: Callable) -> None:
  """Runs the tasks as Ray tasks and calls ``on_task(runs, outcomes)`` as each ends."""
  ray = require("ray")
  started_here = not ray.is_initialized()
  if started_here:
    ray.init(address=resources.ray_address, log_to_driver=False,
             include_dashboard=False, **({} if resources.ray_address else
                                         {"num_cpus": max(resources.cpus, _cpu_count())}))
  options: dict[str, Any] = dict(num_cpus=resources.cpus, num_gpus=resources.gpus,
                                 max_retries=0)
  if resources.mem_gb is not None:
    options["memory"] = int(resources.mem_gb * 2**30)
  remote = ray.remote(_call_task).options(**options)
  try:
    refs = {remote.remote(Task(runs, str(root), vmap_seeds, retry_failed)): runs
            for runs in tasks}
    while refs:
      ready, _ = ray.wait(list(refs), num_returns=1)
      for ref in ready:
        runs = refs.pop(ref)
        try:
          outcomes = ray.get(ref)
        except Exception as error:  # the worker died: the run directory says the rest
          outcomes = {str(r): f"ray task ended: {type(error).__name__}" for r in runs}
        on_task(runs, outcomes)
  finally:
    if started_here:
      ray.shutdown()


def _call_task(task: Task) -> dict[str, str]:
  return task()


def _cpu_count() -> int:
  import os
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def read_resources(values: dict[str, Any]) -> Resources:
  """:class:`Resources` from a study's ``resources`` mapping (with the command line's on top)."""
  known = {f.name for f in dataclasses.fields(Resources)}
  unknown = set(values) - known
  if unknown:
    raise ValueError(f"unknown resource fields {sorted(unknown)}; known: {sorted(known)}.")
  return Resources(**values)


def describe_jobs(jobs: list, root: pathlib.Path) -> str:
  ids = sorted({str(job.job_id).split("_")[0] for job in jobs})
  return (f"submitted {len(jobs)} tasks as job {', '.join(ids)}; logs in {root / 'jobs'}; "
          f"results.json in each run directory")
