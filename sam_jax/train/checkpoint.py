"""Orbax checkpoints: the last K and the best, written atomically and synchronously.

Two ``orbax.checkpoint.CheckpointManager`` directories under the run's
``checkpoints/``:

* ``last/``: every save; the newest ``keep`` are kept. ``--resume`` starts
  from the newest.
* ``best/``: a save whenever the selection metric improves; one is kept.

Each checkpoint holds the train state (a pytree, ``StandardSave``) and the
loop's position and bookkeeping (``JsonSave``): the epoch, the next batch of
that epoch, the best metric so far, the early-stopping counter and the
running sums of the epoch's training metrics, so that a resumed run continues
exactly where the saved one was. Orbax writes into a temporary directory and
renames it when complete, so a killed process never leaves a half-written
checkpoint that would be restored. Saves are synchronous: when ``save``
returns, the checkpoint is on disk.
"""

from __future__ import annotations

import pathlib
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from sam_jax.errors import one_line


class DamagedCheckpointError(ValueError):
  """Every checkpoint of a kind failed to restore; the message names each and why."""


def _manager(directory: pathlib.Path, keep: int, alone: bool = False) -> ocp.CheckpointManager:
  extra = {}
  if alone and jax.process_count() > 1:
    # This process writes on its own: orbax's barriers then wait for it alone
    # (and orbax leaves creating the directory to us).
    extra["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
        primary_host=jax.process_index(), active_processes={jax.process_index()})
    directory.mkdir(parents=True, exist_ok=True)
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, enable_async_checkpointing=False, create=not extra, **extra)
  return ocp.CheckpointManager(directory.resolve(), options=options)


class Checkpointer:
  """The ``last`` and ``best`` checkpoints of one run.

  ``alone``: in a run over several processes, this one reads and writes
  them without the others (:class:`ProcessesCheckpointer`).
  """

  def __init__(self, directory: pathlib.Path, keep: int = 2, alone: bool = False):
    if keep < 1:
      raise ValueError(f"keep_checkpoints must be >= 1, got {keep}.")
    self.directory = pathlib.Path(directory)
    self.last = _manager(self.directory / "last", keep, alone)
    self.best = _manager(self.directory / "best", 1, alone)
    # Orbax refuses this process's own device arrays in a multi-process run
    # (it cannot tell they are not shards): they go through as NumPy arrays.
    self.as_numpy = alone and jax.process_count() > 1

  def save(self, step: int, state: Any, meta: dict, *, best: bool = False) -> None:
    if self.as_numpy:
      state = jax.device_get(state)
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    manager = self.best if best else self.last
    if step in manager.all_steps():  # the same step saved again (e.g. the final save)
      return
    manager.save(step, args=args)
    manager.wait_until_finished()

  def save_epoch(self, step: int, state: Any, meta: dict, *, best: bool, last: bool) -> None:
    """The end-of-epoch saves: ``best`` when the selection improved, ``last`` when due."""
    if best:
      self.save(step, state, meta, best=True)
    if last:
      self.save(step, state, meta)

  def latest_step(self, which: str = "last") -> Optional[int]:
    return getattr(self, which).latest_step()

  def restore(self, abstract_state: Any, which: str = "last",
              step: Optional[int] = None) -> tuple[Any, dict]:
    manager = getattr(self, which)
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no {which} checkpoint in {self.directory}.")
    if self.as_numpy:
      target = jax.tree.map(np.asarray, abstract_state)
    else:
      target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return restored.state, dict(restored.meta)

  def restore_newest_valid(self, abstract_state: Any, which: str = "last",
                           log=print) -> tuple[Any, dict, int]:
    """Restores the newest checkpoint that restores, newest first; says which were skipped.

    A checkpoint whose files were damaged after orbax committed it (a full
    disk, a truncated copy) fails to restore; resuming from the one before
    it loses one checkpoint interval instead of the run. Raises
    :class:`DamagedCheckpointError` naming every checkpoint and its error
    when none restores.
    """
    manager = getattr(self, which)
    failures, damaged = [], []
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        state, meta = self.restore(abstract_state, which, step)
      except Exception as error:  # orbax/tensorstore raise many kinds for damaged files
        reason = one_line(error)
        failures.append(f"{self.directory / which / str(step)} ({reason})")
        damaged.append(step)
        log(f"warning: skipping checkpoint {self.directory / which / str(step)}, which does not "
            f"restore: {reason}")
        continue
      # The run redoes the damaged steps' work and saves them again.
      for bad in damaged:
        manager.delete(bad)
      return state, meta, step
    if not failures:
      raise FileNotFoundError(f"no {which} checkpoint in {self.directory}.")
    raise DamagedCheckpointError(f"no {which} checkpoint in {self.directory} restores: "
                                 + "; ".join(failures))

  def close(self) -> None:
    self.last.close()
    self.best.close()


class ProcessesCheckpointer:
  """The checkpoints of a run over several processes, written once.

  Process 0 reads and writes them (a :class:`Checkpointer` of its own); the
  others write nothing and receive what it read by a broadcast, so they need
  not see the files. Every method is a collective: all processes call it in
  the same order, as the loop does. An error on process 0 (a damaged
  checkpoint, a missing directory) is raised on every process.
  """

  def __init__(self, directory: pathlib.Path, keep: int = 2):
    self.directory = pathlib.Path(directory)
    self.inner: Optional[Checkpointer] = None

    def open_on_process_0():
      self.inner = Checkpointer(directory, keep, alone=True)

    # Opened inside the collective, so that a failure there reaches every process.
    from_process_0(open_on_process_0)

  def save(self, step: int, state: Any, meta: dict, *, best: bool = False) -> None:
    if self.inner is not None:
      self.inner.save(step, state, meta, best=best)

  def save_epoch(self, step: int, state: Any, meta: dict, *, best: bool, last: bool) -> None:
    if self.inner is not None:
      self.inner.save_epoch(step, state, meta, best=best, last=last)

  def latest_step(self, which: str = "last") -> Optional[int]:
    inner = self.inner
    return from_process_0(lambda: inner.latest_step(which) if inner else None)

  def restore_newest_valid(self, abstract_state: Any, which: str = "last",
                           log=print) -> tuple[Any, dict, int]:
    inner, found = self.inner, {}

    def restore():
      assert inner is not None
      state, meta, step = inner.restore_newest_valid(abstract_state, which, log)
      found["state"] = state
      return {"meta": meta, "step": step}

    outcome = from_process_0(restore)
    from jax.experimental import multihost_utils
    state = multihost_utils.broadcast_one_to_all(found.get("state", abstract_state))
    return state, outcome["meta"], outcome["step"]

  def close(self) -> None:
    if self.inner is not None:
      self.inner.close()


def from_process_0(fn) -> Any:
  """``fn()``'s JSON value on process 0, on every process; its error raised everywhere.

  A collective: every process calls it, and only process 0 calls ``fn``. The
  error reaches the others as the same class where it is one of the run's
  own (a busy or missing work directory, a damaged checkpoint), else as a
  ``ValueError`` with the same one-line message.
  """
  if jax.process_count() == 1:
    return fn()
  import json

  from jax.experimental import multihost_utils

  from sam_jax.train.workdir_lock import WorkdirBusyError

  if jax.process_index() == 0:
    try:
      message = {"value": fn()}
    except Exception as error:  # pylint: disable=broad-except
      message = {"error": one_line(error), "kind": type(error).__name__}
    data = np.frombuffer(json.dumps(message).encode(), np.uint8)
  else:
    data = np.zeros(0, np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
  buffer = data if data.size == size else np.zeros(size, np.uint8)
  message = json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer))).decode())
  if "error" in message:
    kinds = {kind.__name__: kind for kind in (
        FileNotFoundError, FileExistsError, NotADirectoryError, DamagedCheckpointError,
        WorkdirBusyError)}
    raise kinds.get(message["kind"], ValueError)(message["error"])
  return message["value"]


def for_run(directory: pathlib.Path, keep: int = 2) -> Checkpointer | ProcessesCheckpointer:
  """The checkpointer of a run: one process's, or the processes' shared one."""
  if jax.process_count() > 1:
    return ProcessesCheckpointer(directory, keep)
  return Checkpointer(directory, keep)
