"""One training epoch: steps over the batches, metrics settled one step late, resumable.

The device runs step ``t + 1`` while the host reads step ``t``'s metrics
(checking finiteness and adding them to the epoch's sums), so the host never
waits on the device except where it must: a mid-epoch checkpoint, whose sums
must include the step before it.

The same epoch drives several runs stacked on a leading axis (vmapped seeds,
:mod:`sam_jax.train.seeds`): give one :class:`EpochSums` per run and a
stacked step key; each run's metrics are then settled into its own sums.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import jax
import numpy as np

from sam_jax.train.parallel import Placement
from sam_jax.train.step import NonFiniteError, nonfinite_message

TRAIN_KEYS = ("loss", "accuracy", "perturbed_loss", "sharpness", "grad_norm")


@dataclasses.dataclass
class EpochSums:
  """Running sums of one epoch's train metrics (saved in checkpoints)."""

  sums: dict = dataclasses.field(default_factory=dict)
  steps: int = 0
  skipped: int = 0

  def add(self, metrics: dict) -> None:
    self.steps += 1
    if not bool(metrics["finite"]):
      self.skipped += 1  # not applied; its non-finite values stay out of the means
      return
    for key in TRAIN_KEYS:
      if key in metrics:
        self.sums[key] = self.sums.get(key, 0.0) + float(metrics[key])

  def means(self) -> dict:
    counted = max(self.steps - self.skipped, 1)
    return {f"train_{k}": v / counted for k, v in self.sums.items()}


@dataclasses.dataclass
class EpochResult:
  state: Any              # the device state after the epoch's last step
  step: int               # updates applied so far
  stopped_at_max_steps: bool
  first_step_s: Optional[float]


def train_epoch(
    placement: Placement,
    device_state: Any,
    batches: Iterable[tuple[int, dict]],
    *,
    step: int,
    step_key: jax.Array,
    sums: Union[EpochSums, Sequence[EpochSums]],
    param_paths_of: Any,
    nonfinite: str = "error",
    max_steps: Optional[int] = None,
    checkpoint_due: Callable[[int, int], bool] = lambda step, batch_index: False,
    save: Callable[[int, Any, int], None] = lambda step, state, next_batch: None,
    bar: Any = None,
    batch_size: int = 0,
    time_first_step: bool = False,
    run_names: Optional[Sequence[str]] = None,
    on_step: Optional[Callable[[int, dict], None]] = None,
) -> EpochResult:
  """Runs ``batches`` (``(batch_index, batch)`` pairs) through the step.

  ``sums`` is updated in place. ``checkpoint_due(step, batch_index)`` asks
  for a mid-epoch checkpoint after a step; ``save(step, device_state,
  next_batch)`` writes it. A non-finite step raises :class:`NonFiniteError`
  naming the step and parameters (``nonfinite="error"``) or is counted as
  skipped. ``param_paths_of`` is a host pytree with the parameters' structure
  (for the message). With ``time_first_step`` the first step is waited for
  and timed (compilation included); otherwise the host never waits on it.

  Several stacked runs: ``sums`` is a sequence (one per run), ``step_key``
  holds one key per run, and ``run_names`` (e.g. ``"seed 3"``) prefix the
  non-finite messages. ``on_step(step, metrics)`` receives each step's host
  metrics of a single run (TensorBoard), one step late, as they settle.
  """
  first_step_s = None
  pending = None
  stacked = not isinstance(sums, EpochSums)
  all_sums = list(sums) if stacked else [sums]
  names = list(run_names or [""] * len(all_sums))
  fold_in = jax.vmap(jax.random.fold_in, in_axes=(0, None)) if stacked else jax.random.fold_in

  def settle(pending):
    index, metrics = pending
    metrics = placement.first_copy(jax.device_get(metrics))
    per_run = ([jax.tree.map(lambda x, i=i: np.asarray(x)[i], metrics)
                for i in range(len(all_sums))] if stacked else [metrics])
    for name, run_sums, run_metrics in zip(names, all_sums, per_run):
      if not bool(run_metrics["finite"]):
        message = (f"{name}: " if name else "") + nonfinite_message(
            index, run_metrics, param_paths_of)
        if nonfinite == "error":
          raise NonFiniteError(message + " Lower the learning rate or rho, or pass "
                               "--nonfinite skip to skip such steps.")
        if bar is not None:
          bar.write(f"skipped: {message}")
      run_sums.add(run_metrics)
    if on_step is not None and not stacked:
      on_step(index, per_run[0])
    return per_run[0]

  stopped = False
  for batch_index, batch in batches:
    tick = time.perf_counter()
    rng = fold_in(step_key, step)
    device_state, metrics = placement.step_fn(device_state, placement.place_batch(batch), rng)
    if time_first_step and first_step_s is None:
      jax.block_until_ready(metrics["loss"])
      first_step_s = time.perf_counter() - tick
    if pending is not None:  # settle the previous step while this one runs
      shown = settle(pending)
      if bar is not None:
        bar.set_postfix(loss=f"{shown['loss']:.4f}",
                        img_s=f"{batch_size / max(time.perf_counter() - tick, 1e-9):.0f}")
    step += 1
    pending = (step, metrics)  # 1-based: the update's number
    if bar is not None:
      bar.update(1)
    if max_steps is not None and step >= max_steps:
      stopped = True
      break
    if checkpoint_due(step, batch_index):
      settle(pending)  # the sums saved must include this step
      pending = None
      save(step, device_state, batch_index + 1)
  if pending is not None:
    settle(pending)
  return EpochResult(device_state, step, stopped, first_step_s)
