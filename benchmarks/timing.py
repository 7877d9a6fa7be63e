"""Timing shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax


def interleaved_medians(fns: dict[Any, Callable], rounds: int, args: tuple = (),
                        warm_up: bool = True) -> dict[Any, float]:
  """Median seconds of each function, the functions taking turns in every round.

  Each call is timed to completion (``jax.block_until_ready`` on its result);
  taking turns spreads a noisy machine's load over all of them. With
  ``warm_up`` every function is called once first (it compiles).
  """
  if warm_up:
    for fn in fns.values():
      jax.block_until_ready(fn(*args))
  times: dict[Any, list[float]] = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}
