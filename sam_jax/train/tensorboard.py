"""TensorBoard event files for a run (``--tensorboard``), through ``tensorboardX``.

Per step, as each step's metrics settle on the host: ``step/loss``,
``step/accuracy``, ``step/grad_norm``, ``step/lr``, and for sharpness methods
``step/perturbed_loss`` and ``step/sharpness`` (perturbed minus clean loss).
Per epoch: the epoch's training means (``train/*``), every validation and test
metric (``val/*``, ``test/*``), the learning rate and, when the config sets
one, ``rho``. An optional dependency (``pip install sam_jax[tensorboard]``):
imported only when asked for. ``tensorboard --logdir <workdir>/tensorboard``
shows them; a resumed run appends to the same directory from its step on.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Callable, Optional

STEP_METRICS = ("loss", "accuracy", "grad_norm", "perturbed_loss", "sharpness")


class TensorBoard:
  """Writes a run's scalars; :meth:`close` flushes them."""

  def __init__(self, workdir: pathlib.Path, lr_at: Callable[[int], float],
               rho: Optional[float] = None):
    try:
      from tensorboardX import SummaryWriter
    except ImportError:
      raise ValueError("--tensorboard needs tensorboardX: pip install 'sam_jax[tensorboard]' "
                       "(or pip install tensorboardX).") from None
    self._writer = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))
    self._lr_at = lr_at
    self._rho = rho

  def step(self, step: int, metrics: dict) -> None:
    for name in STEP_METRICS:
      if name in metrics:
        self._scalar(f"step/{name}", metrics[name], step)
    self._scalar("step/lr", self._lr_at(max(step - 1, 0)), step)

  def epoch(self, record: dict) -> None:
    step = record["step"]
    for name, value in record.items():
      if name.startswith("train_") and name != "train_seconds":
        self._scalar(f"train/{name[len('train_'):]}", value, step)
    for split in ("val", "test"):
      for name, value in (record.get(split) or {}).items():
        self._scalar(f"{split}/{name}", value, step)
    self._scalar("epoch/lr", record["lr"], step)
    self._scalar("epoch/epoch", record["epoch"], step)
    if self._rho is not None:
      self._scalar("epoch/rho", self._rho, step)
    self._writer.flush()

  def _scalar(self, tag: str, value: Any, step: int) -> None:
    try:
      value = float(value)
    except (TypeError, ValueError):
      return  # confusion matrices and other non-scalars
    if math.isfinite(value):
      self._writer.add_scalar(tag, value, step)

  def close(self) -> None:
    self._writer.close()


class _Off:
  """The writer when ``tensorboard`` is off: does nothing."""

  def step(self, step: int, metrics: dict) -> None:
    pass

  def epoch(self, record: dict) -> None:
    pass

  def close(self) -> None:
    pass


def writer(enabled: bool, workdir: pathlib.Path, lr_at: Callable[[int], float],
           rho: Optional[float] = None):
  """A :class:`TensorBoard` writer, or one that does nothing."""
  return TensorBoard(workdir, lr_at, rho) if enabled else _Off()
