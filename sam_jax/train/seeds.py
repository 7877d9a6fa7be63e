"""Many seeds in one program: N runs of one configuration, ``jax.vmap``-ed.

``train_and_evaluate_seeds(config, seeds, workdirs)`` trains one model per
seed inside one jitted step: the train states (parameters, BatchNorm
statistics, optimizer and objective state) are stacked on a leading axis of
size N, and so are each step's batches (every seed draws its own batch order
from its seed, as a run of its own does) and step keys (augmentation and
dropout). Evaluation runs the N models on the same eval batch.

Seed ``k`` of a vmapped group is the run ``config.replace(seed=k)`` trained
alone, to float tolerance (``tests/train/test_seeds.py``): the same initial
weights, batches, keys and updates; only the order of floating-point
operations in the batched kernels may differ. Each seed writes its own run
directory (``config.json``, ``metrics.jsonl``, ``results.json``,
``curves.png``, ``checkpoints/``), the same files a solo run writes, so the
records, ``sam-jax eval`` and ``--resume`` do not care how a run was
trained. ``results.json`` adds ``"vmapped_seeds": N``; its
``time_per_step_s`` is the group's step time divided by N (the cost per run).

Why: a narrow model does not fill a GPU, so N seeds in one program can cost
far less than N programs. Not on XLA's CPU backend: vmapping a convolution
over its weights makes it a grouped convolution, which XLA:CPU runs about 5x
slower than N separate ones (``benchmarks/results/seeds_vmap_cpu.md``), so
the grid runner trains seeds one by one on CPU unless told otherwise.
One device only: data parallelism and m-sharpness use the device axis
already. Early stopping is per seed: a stopped seed's records and
checkpoints are frozen while the others go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import pathlib
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from sam_jax.data import augment as augment_lib
from sam_jax.train import config as config_lib
from sam_jax.train import memory as memory_lib
from sam_jax.train import records as records_lib
from sam_jax.train import setup
from sam_jax.train.checkpoint import Checkpointer
from sam_jax.train.config import TrainConfig
from sam_jax.train.epoch import EpochSums, train_epoch
from sam_jax.train.losses import loss_for_task
from sam_jax.train.optim import build_optimizer
from sam_jax.train.parallel import Placement
from sam_jax.train.selection import Selection, evaluate_split_runs
from sam_jax.train.state import for_evaluation
from sam_jax.train.step import make_eval_step, make_train_step
from sam_jax.train.workdir_lock import WorkdirLock


def stack(trees: Sequence[Any]) -> Any:
  """Pytrees of equal structure -> one pytree with a leading run axis."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: Any, n: int) -> list[Any]:
  """The inverse of :func:`stack`."""
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n)]


def seeds_placement(build) -> Placement:
  """The step vmapped over stacked states, batches and keys, jitted with the state donated."""
  step = jax.vmap(build(axis_name=None), in_axes=(0, 0, 0))
  same = lambda x: x
  return Placement(jax.jit(step, donate_argnums=(0,)), same, same, same, same)


def stacked_batches(batch_iterators: Sequence[Any]):
  """One ``(batch_index, batch)`` per step, each seed's batch stacked on axis 0."""
  for index, batches in enumerate(zip(*batch_iterators)):
    yield index, stack(batches)


def check_seeds(config: TrainConfig, seeds: Sequence[int], workdirs: Sequence[Any]) -> None:
  if not seeds:
    raise ValueError("vmapped seeds: give at least one seed.")
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"vmapped seeds must differ, got {list(seeds)}.")
  if len(workdirs) != len(seeds):
    raise ValueError(f"{len(seeds)} seeds need {len(seeds)} work directories, got {len(workdirs)}.")
  if config.parallel not in ("auto", "none") or config.m_sharpness > 1:
    raise ValueError("vmapped seeds run on one device without m-sharpness; use parallel 'auto' "
                     "and m_sharpness 1, or train the seeds one by one.")
  if config.init_from:
    raise ValueError("vmapped seeds start from fresh weights; init_from names one run, so "
                     "train such runs one by one.")


@dataclasses.dataclass
class _SeedRecords:
  """One seed's bookkeeping: where it writes, its selection, its epoch's sums."""

  config: TrainConfig
  workdir: pathlib.Path
  checkpointer: Checkpointer
  epoch_log: records_lib.EpochLog
  selection: Selection
  sums: EpochSums
  stopped: bool = False
  last_epoch: int = 0
  steps: int = 0


def train_and_evaluate_seeds(config: TrainConfig, seeds: Sequence[int],
                             workdirs: Sequence[str | pathlib.Path], *, resume: bool = False,
                             log=print) -> list[dict]:
  """Trains ``config`` once per seed in one vmapped program; returns each seed's results."""
  check_seeds(config, seeds, workdirs)
  setup.check_config(config)
  with contextlib.ExitStack() as stack:
    locks = [stack.enter_context(WorkdirLock(workdir, log)) for workdir in workdirs]

    def check_workdirs():
      for lock in locks:
        lock.check()

    return _train_and_evaluate_seeds(config, seeds, workdirs, resume, log, check_workdirs)


def _train_and_evaluate_seeds(config, seeds, workdirs, resume, log,
                              check_workdirs=lambda: None) -> list[dict]:
  start_time = time.perf_counter()
  n = len(seeds)
  configs = [config.replace(seed=int(seed)) for seed in seeds]
  dataset = setup.load_data(config)
  setup.check_against_data(config, dataset)
  train_split = dataset["train"]
  steps_per_epoch = setup.steps_per_epoch(config, train_split)
  tx, schedule = build_optimizer(config, steps_per_epoch)
  objective = setup.build_objective(config, dataset)
  init_keys, step_keys = zip(*(jax.random.split(jax.random.key(c.seed)) for c in configs))
  initial = [setup.initial_state(c, dataset, tx, objective, k) for c, k in zip(configs, init_keys)]
  apply_fn, states = initial[0][0], [state for _, state in initial]
  augment_fn = augment_lib.augment_fn(setup.augment_config(config, dataset.spatial_dims))
  build = functools.partial(make_train_step, apply_fn, objective, tx, task=dataset.task,
                            augment_fn=augment_fn, perturbation=config.perturbation,
                            accumulation_steps=config.accumulation_steps)
  eval_step = jax.jit(jax.vmap(
      make_eval_step(apply_fn, loss_for_task(dataset.task), task=dataset.task,
                     augment_fn=augment_fn), in_axes=(0, None)))

  runs = []
  for run_config, workdir in zip(configs, workdirs):
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    runs.append(_SeedRecords(
        run_config, workdir, Checkpointer(workdir / "checkpoints", config.keep_checkpoints),
        records_lib.EpochLog(workdir), Selection(config.select_by, config.early_stopping),
        EpochSums()))
  try:
    start_epoch, start_batch = _start(runs, states, resume, log)
    for run in runs:
      records_lib.write_json(run.workdir / "config.json", run.config.to_dict())
    device_state, placement, keys = stack(states), seeds_placement(build), jnp.stack(step_keys)
    if config.memory_check:  # as train_and_evaluate does, for the N stacked models
      first = stack([next(iter(setup.train_batches(c, train_split, 0))) for c in configs])
      train_step, eval_batch_size, eval_step = memory_lib.check_run(
          lambda: placement.step_fn.lower(device_state, first, keys), eval_step, device_state,
          dataset["val"], config.batch_size * n, config.eval_batch_size, log)
      placement = placement._replace(step_fn=train_step)
      config = config.replace(eval_batch_size=eval_batch_size)
    first_step_s, epoch_times = _train(
        config, runs, device_state, placement, eval_step, dataset, schedule,
        steps_per_epoch, keys, start_epoch, start_batch, log, check_workdirs)
  finally:
    for run in runs:
      run.checkpointer.close()

  check_workdirs()
  results = []
  for run in runs:
    epochs = run.epoch_log.read()
    result = records_lib.run_results(
        run.config, dataset, objective.name, run.selection, epochs, last_epoch=run.last_epoch,
        stopped_early=run.stopped, steps=run.steps, steps_per_epoch=steps_per_epoch,
        epoch_times=[t / n for t in epoch_times], first_step_s=first_step_s,
        wall_seconds=time.perf_counter() - start_time)
    result["vmapped_seeds"] = n
    records_lib.write_json(run.workdir / "results.json", result)
    records_lib.plot_curves(epochs, run.workdir / "curves.png",
                            title=f"{dataset.name} {config.model} {config.optimizer} "
                                  f"{config.loss} seed {run.config.seed}")
    results.append(result)
  return results


def _start(runs: list[_SeedRecords], states: list[Any], resume: bool, log) -> tuple[int, int]:
  """Restores every seed's last checkpoint (resume) or starts fresh; ``(epoch, batch)``."""
  latest = [run.checkpointer.latest_step() for run in runs]
  if any(step is not None for step in latest) and not resume:
    held = [str(run.workdir) for run, step in zip(runs, latest) if step is not None]
    raise FileExistsError(f"{', '.join(held)} already hold checkpoints: pass resume to continue, "
                          "or choose new work directories.")
  if resume and any(step is not None for step in latest):
    for run in runs:
      config_lib.check_saved_config(run.workdir, run.config)
    # A process killed between the seeds' saves leaves some a checkpoint
    # ahead: all resume from the newest step every seed still holds.
    held = [set(run.checkpointer.last.all_steps()) for run in runs]
    common = set.intersection(*held)
    if not common:
      raise ValueError("vmapped seeds resume together, but these runs hold no checkpoint at a "
                       f"common step (newest: {latest}): resume them one by one.")
    step = max(common)
    positions = set()
    for i, run in enumerate(runs):
      states[i], meta = run.checkpointer.restore(states[i], step=step)
      positions.add((meta["epoch"], meta["batch"]))
      run.sums = EpochSums(**meta["sums"])
      run.selection = Selection.from_meta(meta, run.config.select_by, run.config.early_stopping)
      run.stopped = bool(meta.get("stopped", False))
      run.last_epoch, run.steps = meta["epoch"], step
      run.epoch_log.truncate(meta["epoch"])
    (start_epoch, start_batch), = positions
    log(f"resumed {len(runs)} seeds from step {step} (epoch {start_epoch + 1}, "
        f"batch {start_batch + 1})")
    return start_epoch, start_batch
  for run in runs:
    run.epoch_log.start()
  return 0, 0


def _meta(run: _SeedRecords, epoch: int, batch: int) -> dict:
  return {"epoch": epoch, "batch": batch, "sums": dataclasses.asdict(run.sums),
          "stopped": run.stopped, **run.selection.to_meta()}


def _train(config, runs, device_state, placement, eval_step, dataset, schedule, steps_per_epoch,
           step_keys, start_epoch, start_batch, log, check_workdirs=lambda: None):
  n = len(runs)
  names = [f"seed {run.config.seed}" for run in runs]
  progress = records_lib.progress_bars(config.progress)
  every = config.checkpoint_every_steps
  step = int(jax.device_get(device_state.step)[0])
  first_step_s, epoch_times = None, []
  param_paths = _first(device_state)  # the structure the non-finite message names

  def save_mid_epoch(step_, state, next_batch, epoch):
    for run, host in zip(runs, unstack(state, n)):
      if not run.stopped:
        run.checkpointer.save(step_, host, _meta(run, epoch, next_batch))

  for epoch in range(start_epoch, config.epochs):
    tick = time.perf_counter()
    bar = progress(total=steps_per_epoch, initial=start_batch,
                   desc=f"epoch {epoch + 1}/{config.epochs} ({n} seeds)")
    batches = stacked_batches([
        setup.train_batches(run.config, dataset["train"], epoch, start_batch) for run in runs])
    result = train_epoch(
        placement, device_state, ((start_batch + i, b) for i, b in batches),
        step=step, step_key=step_keys, sums=[run.sums for run in runs],
        param_paths_of=param_paths,
        nonfinite=config.nonfinite, max_steps=config.max_steps,
        checkpoint_due=lambda s, b: bool(every) and s % every == 0 and b + 1 < steps_per_epoch,
        save=lambda s, st, nb, epoch=epoch: save_mid_epoch(s, st, nb, epoch),
        bar=bar, batch_size=config.batch_size * n, time_first_step=first_step_s is None,
        run_names=names)
    bar.close()
    device_state, step = result.state, result.step
    first_step_s = first_step_s if first_step_s is not None else result.first_step_s
    train_seconds = time.perf_counter() - tick
    if runs[0].sums.steps > start_batch:  # not a resume that only had the evaluation left
      epoch_times.append(train_seconds / (runs[0].sums.steps - start_batch))

    host_states = unstack(device_state, n)
    done = epoch + 1 == config.epochs or result.stopped_at_max_steps
    due = (epoch + 1) % config.checkpoint_every == 0 or done
    if due:  # before the evaluation, as train_and_evaluate does (see there)
      for run, host in zip(runs, host_states):
        if not run.stopped:
          run.checkpointer.save(step, host, {**_meta(run, epoch, steps_per_epoch),
                                             "pending_evaluation": True})
    evaluated = for_evaluation(device_state)
    val = evaluate_split_runs(eval_step, evaluated, dataset["val"], dataset.task,
                              config.eval_batch_size, n)
    test = evaluate_split_runs(eval_step, evaluated, dataset["test"], dataset.task,
                               config.eval_batch_size, n)
    lr = float(schedule(max(step - 1, 0)))
    check_workdirs()
    for run, host, run_val, run_test in zip(runs, host_states, val, test):
      if run.stopped:  # its records ended at its own early stop
        run.sums = EpochSums()
        continue
      record = records_lib.epoch_record(epoch + 1, step, lr, run.sums, run_val, run_test,
                                        train_seconds / n)
      improved = run.selection.update(record)
      run.epoch_log.append(record)
      run.last_epoch, run.steps = epoch + 1, step
      run.stopped = run.selection.should_stop
      log(f"seed {run.config.seed} " + records_lib.epoch_line(record, config.epochs, improved))
      run.sums = EpochSums()
      run.checkpointer.save_epoch(step, host, _meta(run, epoch + 1, 0), best=improved,
                                  last=due or run.stopped)
    start_batch = 0
    if done or all(run.stopped for run in runs):
      break
  return first_step_s, epoch_times


def _first(stacked_state: Any) -> Any:
  """One seed's parameters on the host: the structure the non-finite message names."""
  return jax.tree.map(lambda x: x[0], stacked_state.params)
