"""The training driver: ``train_and_evaluate(config, workdir)``.

It wires the pieces, each in its own module:

* set-up (:mod:`~sam_jax.train.setup`): data, model, objective, optimizer,
  the initial state (fresh, or another run's best weights with
  ``init_from``);
* one epoch (:mod:`~sam_jax.train.epoch`), on the placement chosen by
  :func:`sam_jax.train.parallel.place`;
* evaluation and selection (:mod:`~sam_jax.train.selection`): val and test
  every epoch, the test metrics of the epoch with the best validation AUC (or
  loss) reported (the MedMNIST protocol), early stopping;
* records (:mod:`~sam_jax.train.records`) and checkpoints
  (:mod:`~sam_jax.train.checkpoint`).

In ``workdir``: ``config.json``, ``metrics.jsonl``, ``results.json``,
``curves.png``, ``checkpoints/{last,best}``. With ``resume=True`` the run
continues from the newest checkpoint and produces the same records as an
uninterrupted run with the same seed: the batch order and every key are
functions of the seed, the epoch and the step only.

Over several processes (``jax.distributed``; ``sam-jax --distributed``)
every process runs this loop on the same batches and feeds its devices'
rows of each; process 0 alone holds the work directory's lock and writes
the records and checkpoints, and the others receive what it restores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import pathlib
import time

import jax

from sam_jax.data import augment as augment_lib
from sam_jax.train import checkpoint as checkpoint_lib
from sam_jax.train import config as config_lib
from sam_jax.train import memory as memory_lib
from sam_jax.train import parallel, setup, tensorboard
from sam_jax.train import records as records_lib
from sam_jax.train.config import TrainConfig
from sam_jax.train.epoch import EpochSums, train_epoch
from sam_jax.train.losses import loss_for_task
from sam_jax.train.optim import build_optimizer
from sam_jax.train.selection import Selection, evaluate_split
from sam_jax.train.state import for_evaluation
from sam_jax.train.step import make_eval_step, make_train_step
from sam_jax.train.workdir_lock import WorkdirBusyError, WorkdirLock  # noqa: F401 (re-export)

# Kept here for callers of the earlier single-module loop.
load_data = setup.load_data
build_model = setup.build_model
augment_config = setup.augment_config
check_config = setup.check_config
plot_curves = records_lib.plot_curves
versions = records_lib.versions
device_info = records_lib.device_info
PARALLEL_MODES = setup.PARALLEL_MODES


def train_and_evaluate(
    config: TrainConfig, workdir: str | pathlib.Path, *, resume: bool = False,
    log=print,
) -> dict:
  """Runs ``config``, writing its records in ``workdir``; returns the results.

  The work directory is locked for the run (:mod:`~sam_jax.train.workdir_lock`):
  a second run on it stops with :class:`WorkdirBusyError` before writing.
  """
  setup.check_config(config)
  workdir = pathlib.Path(workdir)
  if jax.process_count() > 1:
    return _train_across_processes(config, workdir, resume, log)
  with WorkdirLock(workdir, log) as lock:
    return _train_and_evaluate(config, workdir, resume, log, lock.check)


def _train_across_processes(config: TrainConfig, workdir: pathlib.Path, resume: bool,
                            log) -> dict:
  """Process 0 locks the work directory, writes and prints; the others compute.

  The lock is taken inside a collective, so that a busy work directory stops
  every process at once with process 0's error, instead of the others
  failing at their first collective.
  """
  with contextlib.ExitStack() as stack:
    held = []
    checkpoint_lib.from_process_0(lambda: held.append(stack.enter_context(
        WorkdirLock(workdir, log))))
    if not held:
      return _train_and_evaluate(config, workdir, resume, lambda *args, **kwargs: None)
    return _train_and_evaluate(config, workdir, resume, log, held[0].check)


def _train_and_evaluate(config: TrainConfig, workdir: pathlib.Path, resume: bool, log,
                        check_workdir=lambda: None) -> dict:
  start_time = time.perf_counter()
  # config.json records the mode that ran; "auto" and what it resolves to
  # compute the same step, so a resume may give either.
  config = config.replace(parallel=parallel.resolve_mode(
      config.parallel, config.batch_size, config.m_sharpness, config.accumulation_steps))
  parallel.check_processes(config.parallel, config.m_sharpness)
  writes = jax.process_index() == 0
  dataset = setup.load_data(config)
  setup.check_against_data(config, dataset)
  for warning in setup.data_warnings(dataset):
    log(warning)
  train_split = dataset["train"]
  num_devices = parallel.device_count(config.parallel)
  if config.batch_size % parallel.split_count(config.parallel):
    raise ValueError(f"batch size {config.batch_size} does not split over "
                     f"{parallel.split_count(config.parallel)} devices.")
  if config.batch_size // num_devices % config.accumulation_steps:
    raise ValueError(f"each device's batch of {config.batch_size // num_devices} does not split "
                     f"into accumulation_steps {config.accumulation_steps} micro-batches.")
  steps_per_epoch = setup.steps_per_epoch(config, train_split)
  tx, schedule = build_optimizer(config, steps_per_epoch)
  objective = setup.build_objective(config, dataset)
  init_key, step_key = jax.random.split(jax.random.key(config.seed))
  apply_fn, state = setup.initial_state(config, dataset, tx, objective, init_key)
  augment_fn = augment_lib.augment_fn(setup.augment_config(config, dataset.spatial_dims))
  build = functools.partial(make_train_step, apply_fn, objective, tx, task=dataset.task,
                            augment_fn=augment_fn, perturbation=config.perturbation,
                            accumulation_steps=config.accumulation_steps)
  # Validation loss is the task's cross-entropy whatever the training objective,
  # so that runs with different objectives report comparable losses.
  eval_step = jax.jit(make_eval_step(apply_fn, loss_for_task(dataset.task), task=dataset.task,
                                     augment_fn=augment_fn))

  workdir.mkdir(parents=True, exist_ok=True)
  checkpointer = checkpoint_lib.for_run(workdir / "checkpoints", config.keep_checkpoints)
  epoch_log = records_lib.EpochLog(workdir, write=writes)
  start_epoch, start_batch, sums = 0, 0, EpochSums()
  selection = Selection(config.select_by, config.early_stopping)
  if resume and checkpointer.latest_step() is not None:
    try:
      # Read where the files are: process 0's disk (the others need not see it).
      checkpoint_lib.from_process_0(lambda: config_lib.check_saved_config(workdir, config))
    except ValueError:
      checkpointer.close()
      raise
    state, meta, _ = checkpointer.restore_newest_valid(state, log=log)
    start_epoch, start_batch = meta["epoch"], meta["batch"]
    sums = EpochSums(**meta["sums"])
    selection = Selection.from_meta(meta, config.select_by, config.early_stopping)
    epoch_log.truncate(start_epoch)
    log(f"resumed from step {int(state.step)} (epoch {start_epoch + 1}, "
        + ("its evaluation)" if meta.get("pending_evaluation") else f"batch {start_batch + 1})"))
  elif checkpointer.latest_step() is not None:
    checkpointer.close()
    raise FileExistsError(f"{workdir} already holds checkpoints: pass --resume to continue "
                          "that run, or choose a new work directory.")
  else:
    epoch_log.start()
  if writes:
    records_lib.write_json(workdir / "config.json", config.to_dict())

  placement = parallel.place(build, config.parallel, config.m_sharpness)
  device_state = placement.to_device(state)
  eval_batch_size = config.eval_batch_size
  if config.memory_check:
    # Compile both steps now and compare XLA's memory analysis with what the
    # process has: a step that cannot fit stops here, in one line, instead of
    # aborting later; the evaluation batch is lowered until it fits.
    # The compiled train step is the one the run uses (every train batch has one
    # shape), so the check compiles it once. So is the evaluation step on one
    # device; with pmap or shard_map the evaluated state's sharding after a
    # step is not the initial one, and the jitted step compiles it again.
    first_batch = placement.place_batch(next(iter(setup.train_batches(config, train_split, 0))))
    train_step, eval_batch_size, compiled_eval = memory_lib.check_run(
        lambda: placement.step_fn.lower(device_state, first_batch, jax.random.key(0)),
        eval_step, placement.to_host(device_state), dataset["val"],
        config.batch_size, config.eval_batch_size, log)
    placement = placement._replace(step_fn=train_step)
    if config.parallel in ("none", "sharded"):  # evaluation sees one device's copy
      eval_step = compiled_eval
  param_paths = state.params
  progress = records_lib.progress_bars(config.progress and writes)
  board = tensorboard.writer(config.tensorboard and writes, workdir, lambda s: float(schedule(s)), config.rho)

  def meta_for(epoch, batch, sums_):
    return {"epoch": epoch, "batch": batch, "sums": dataclasses.asdict(sums_),
            **selection.to_meta()}

  epoch_times: list[float] = []
  first_step_s = None
  step = int(state.step)
  last_epoch, stopped_early = start_epoch, False
  try:
    for epoch in range(start_epoch, config.epochs):
      epoch_start = time.perf_counter()
      bar = progress(total=steps_per_epoch, initial=start_batch,
                     desc=f"epoch {epoch + 1}/{config.epochs}")
      every = config.checkpoint_every_steps
      result = train_epoch(
          placement, device_state,
          enumerate(setup.train_batches(config, train_split, epoch, start_batch),
                    start=start_batch),
          step=step, step_key=step_key, sums=sums, param_paths_of=param_paths,
          nonfinite=config.nonfinite, max_steps=config.max_steps,
          checkpoint_due=lambda s, b: bool(every) and s % every == 0 and b + 1 < steps_per_epoch,
          save=lambda s, st, next_batch, epoch=epoch: checkpointer.save(
              s, placement.to_host(st), meta_for(epoch, next_batch, sums)),
          bar=bar, batch_size=config.batch_size, time_first_step=first_step_s is None,
          on_step=board.step)
      bar.close()
      device_state, step = result.state, result.step
      first_step_s = first_step_s if first_step_s is not None else result.first_step_s
      train_seconds = time.perf_counter() - epoch_start
      if sums.steps > start_batch:  # not a resume that only had this epoch's evaluation left
        epoch_times.append(train_seconds / (sums.steps - start_batch))

      host_state = placement.to_host(device_state)
      done = epoch + 1 == config.epochs or result.stopped_at_max_steps
      due = (epoch + 1) % config.checkpoint_every == 0 or done
      if due:
        # Saved before the evaluation, so that an evaluation that fails (out of
        # memory, a killed process) does not lose the epoch's training. A run
        # resumed from it starts at the end of this epoch: it evaluates, then
        # goes on. The end-of-epoch save below then finds this step saved.
        checkpointer.save(step, host_state, {**meta_for(epoch, steps_per_epoch, sums),
                                             "pending_evaluation": True})
      evaluate = lambda split: evaluate_split(eval_step, for_evaluation(host_state), dataset[split],
                                              dataset.task, eval_batch_size)
      record = records_lib.epoch_record(epoch + 1, step, float(schedule(max(step - 1, 0))), sums,
                                        evaluate("val"), evaluate("test"), train_seconds)
      improved = selection.update(record)
      check_workdir()
      epoch_log.append(record)
      board.epoch(record)
      log(records_lib.epoch_line(record, config.epochs, improved))
      sums, start_batch = EpochSums(), 0
      stop = selection.should_stop
      checkpointer.save_epoch(step, host_state, meta_for(epoch + 1, 0, sums), best=improved,
                              last=due or stop)
      last_epoch = epoch + 1
      if stop:
        stopped_early = True
        log(f"early stopping: no improvement in {selection.stale} epochs")
      if done or stop:
        break
  finally:
    checkpointer.close()
    board.close()

  check_workdir()
  epochs = epoch_log.read()
  results = records_lib.run_results(
      config, dataset, objective.name, selection, epochs, last_epoch=last_epoch,
      stopped_early=stopped_early, steps=step, steps_per_epoch=steps_per_epoch,
      epoch_times=epoch_times, first_step_s=first_step_s,
      wall_seconds=time.perf_counter() - start_time)
  if writes:
    records_lib.write_json(workdir / "results.json", results)
    records_lib.plot_curves(epochs, workdir / "curves.png",
                            title=f"{dataset.name} {config.model} {config.optimizer} {config.loss}")
  return results
