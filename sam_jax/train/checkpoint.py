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
import orbax.checkpoint as ocp

from sam_jax.errors import one_line


class DamagedCheckpointError(ValueError):
  """Every checkpoint of a kind failed to restore; the message names each and why."""


def _manager(directory: pathlib.Path, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, enable_async_checkpointing=False, create=True)
  return ocp.CheckpointManager(directory.resolve(), options=options)


class Checkpointer:
  """The ``last`` and ``best`` checkpoints of one run."""

  def __init__(self, directory: pathlib.Path, keep: int = 2):
    if keep < 1:
      raise ValueError(f"keep_checkpoints must be >= 1, got {keep}.")
    self.directory = pathlib.Path(directory)
    self.last = _manager(self.directory / "last", keep)
    self.best = _manager(self.directory / "best", 1)

  def save(self, step: int, state: Any, meta: dict, *, best: bool = False) -> None:
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
