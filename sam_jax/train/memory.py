"""Memory checked before a run starts: XLA's compiled memory analysis against what there is.

A step that does not fit in memory used to end a run at its first
evaluation with ``std::bad_alloc`` (a 64^3 ResNet-18 3D evaluated at batch
256), losing the epoch. Here, before the first step:

* :func:`fit_eval_batch` compiles the evaluation step and lowers the
  evaluation batch until it fits. The evaluation batch is a throughput
  setting: the metrics do not depend on it (the last batch is padded and
  masked), so the configured ``eval_batch_size`` is an upper bound.
* :func:`check_train_step` compiles the train step and stops with one line
  (:class:`NotEnoughMemoryError`: what it needs, what there is, what reduces
  it) when it cannot fit.

What a step needs is XLA's own figure for the compiled executable
(:func:`compiled_bytes`: arguments, outputs and temporaries, less what is
aliased by donation). What there is (:func:`available_bytes`) is the
accelerator's memory limit, or on a CPU the memory this process could still
use: the smaller of the cgroup limit (v2 ``memory.max`` or v1
``memory.limit_in_bytes``, where one is set) and the machine's memory, less
what other processes use now (``MemAvailable`` plus this process's resident
set).
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Callable, Optional

import jax

# XLA:CPU's concurrency-optimized scheduler (on by default in jaxlib 0.10)
# orders a step for parallelism, which is faster (ResNet-18 w1/4 at 28 px: a
# SAM step 0.675 s with it, 0.755 s without, benchmarks/results/scheduler/)
# but keeps more alive (ResNet-18 at 224 px, batch 32: a SAM step's peak is
# 1122 MiB with it, 915 MiB without; benchmarks/results/scheduler/). XLA
# reads the flag once per process (per-executable compiler options leave it
# alone), so it is a process setting: `sam-jax --cpu-schedule memory`.
CPU_SCHEDULES = ("speed", "memory")
CPU_SCHEDULE_ENV = "SAM_JAX_CPU_SCHEDULE"
_SCHEDULER_FLAG = "xla_cpu_enable_concurrency_optimized_scheduler"


def use_cpu_schedule(schedule: Optional[str] = None, environ=None) -> str:
  """Sets how XLA:CPU orders a step, before JAX starts: ``"speed"`` (XLA's
  default) or ``"memory"`` (its concurrency-optimized scheduler off).

  Default: ``$SAM_JAX_CPU_SCHEDULE``, else ``"speed"``. ``XLA_FLAGS`` that
  already set the flag win. Returns the schedule in effect.
  """
  environ = os.environ if environ is None else environ
  schedule = schedule or environ.get(CPU_SCHEDULE_ENV) or "speed"
  if schedule not in CPU_SCHEDULES:
    raise ValueError(f"the CPU schedule must be one of {', '.join(CPU_SCHEDULES)}, "
                     f"got {schedule!r}.")
  flags = environ.get("XLA_FLAGS", "")
  already = _schedule_in(flags)
  if already is not None:
    return already
  if schedule == "memory":
    environ["XLA_FLAGS"] = f"{flags} --{_SCHEDULER_FLAG}=false".strip()
  return schedule


def _schedule_in(flags: str) -> Optional[str]:
  """The schedule ``XLA_FLAGS`` set (``None`` when they leave it to XLA)."""
  if _SCHEDULER_FLAG not in flags:
    return None
  return "memory" if f"{_SCHEDULER_FLAG}=false" in flags else "speed"


def _memory_schedule_hint() -> str:
  if (jax.default_backend() != "cpu"
      or _schedule_in(os.environ.get("XLA_FLAGS", "")) == "memory"):
    return ""
  return ", or let XLA:CPU schedule the step for memory (sam-jax --cpu-schedule memory)"


# A step is said to fit when it needs at most this share of what there is:
# the process also holds the data and the host copies of the state, and
# XLA:CPU's convolutions allocate scratch that the analysis does not count
# (measured: a 64³ ResNet-18 3D evaluation's peak resident memory grew by
# 1.1-1.55x what the analysis said, more at larger widths).
HEADROOM = 0.5
# XLA:CPU aborts with std::bad_alloc on 64³ ResNet-18 3D evaluations of 256
# volumes even where the analysis says 7 GB of 22 GB (batches of 192 at width
# 1/16 and 128 at width 1/8 ran); the cause was not found. So on a CPU an
# evaluation batch holds at most this many input elements (128 volumes of 64³).
CPU_EVAL_ELEMENTS = 2**25
_UNLIMITED = 1 << 60


class NotEnoughMemoryError(ValueError):
  """A train step needs more memory than this process can have."""


def _read_int(path: pathlib.Path) -> Optional[int]:
  try:
    text = path.read_text().strip()
  except OSError:
    return None
  if text == "max":
    return None
  try:
    value = int(text)
  except ValueError:
    return None
  return None if value >= _UNLIMITED else value


def cgroup_limit_bytes(root: pathlib.Path = pathlib.Path("/sys/fs/cgroup"),
                       proc_cgroup: pathlib.Path = pathlib.Path("/proc/self/cgroup")) -> Optional[int]:
  """This process's cgroup memory limit, or ``None`` where there is none."""
  try:
    lines = proc_cgroup.read_text().splitlines()
  except OSError:
    lines = []
  limits = []
  for line in lines:
    _, controllers, path = line.split(":", 2)
    path = path.lstrip("/")
    if controllers == "":  # cgroup v2
      for candidate in (root / path / "memory.max", root / "memory.max"):
        limits.append(_read_int(candidate))
    elif "memory" in controllers.split(","):  # cgroup v1
      for candidate in (root / "memory" / path / "memory.limit_in_bytes",
                        root / "memory" / "memory.limit_in_bytes"):
        limits.append(_read_int(candidate))
  found = [limit for limit in limits if limit is not None]
  return min(found) if found else None


def _meminfo_bytes(key: str) -> Optional[int]:
  try:
    for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
      if line.startswith(key + ":"):
        return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return None


def _resident_bytes() -> int:
  try:
    return int(pathlib.Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, IndexError):
    return 0


def available_bytes(device: Optional[jax.Device] = None) -> Optional[int]:
  """The memory a step on ``device`` can use (``None`` when it cannot be told)."""
  device = device or jax.devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    return stats.get("bytes_limit")
  candidates = []
  total = _meminfo_bytes("MemTotal")
  if total is None:
    try:
      total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
      total = None
  if total is not None:
    candidates.append(total)
  limit = cgroup_limit_bytes()
  if limit is not None:
    candidates.append(limit)
  free = _meminfo_bytes("MemAvailable")
  if free is not None:
    candidates.append(free + _resident_bytes())
  return min(candidates) if candidates else None


def compiled_bytes(compiled: Any) -> Optional[int]:
  """Peak bytes of a compiled executable by XLA's analysis (``None`` if unknown)."""
  try:
    analysis = compiled.memory_analysis()
  except Exception:  # some backends do not implement it
    return None
  if analysis is None:
    return None
  if isinstance(analysis, (list, tuple)):  # one per device (pmap): the largest
    analysis = max(analysis, key=lambda a: a.temp_size_in_bytes)
  return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
             + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes
             + analysis.generated_code_size_in_bytes)


def human_bytes(n: float) -> str:
  return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def abstract(tree: Any) -> Any:
  """Shapes, dtypes and (for device arrays) shardings of ``tree``: what lowering needs."""
  def one(x):
    sharding = x.sharding if isinstance(x, jax.Array) else None
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.tree.map(one, tree)


def fit_eval_batch(lower_eval: Callable[[int], Any], requested: int, budget: Optional[int],
                   log: Callable[[str], None] = lambda message: None) -> tuple[int, Any]:
  """The largest power-of-two batch below ``requested`` whose evaluation fits in ``budget``.

  ``requested`` itself when it fits. ``lower_eval(batch_size)`` returns the
  lowered evaluation step for that batch size. Memory is close to affine in
  the batch, so the search starts from the size estimated from ``requested``
  and a batch of one, and moves by factors of two from there. Returns the
  size and its compiled step (the run uses it, so the check costs no
  compilation when the requested size fits).
  """
  compiled = lower_eval(requested).compile()
  needed = compiled_bytes(compiled)
  if budget is None or needed is None or needed <= HEADROOM * budget or requested <= 1:
    return requested, compiled
  limit = HEADROOM * budget
  tried: dict[int, tuple[Optional[int], Any]] = {}

  def fits(size: int) -> bool:
    if size not in tried:
      executable = lower_eval(size).compile()
      tried[size] = (compiled_bytes(executable), executable)
    got = tried[size][0]
    return got is None or got <= limit

  one = tried[1][0] if fits(1) else None
  if one is None:  # not even one example fits: evaluate one at a time; training will say more
    size = 1
  else:
    per_example = max((needed - one) / max(requested - 1, 1), 1.0)
    estimate = max(1, int((limit - one) // per_example) + 1)
    size = 1 << max(0, int(math.log2(min(estimate, requested - 1))))
    while size > 1 and not fits(size):
      size //= 2
    while 2 * size < requested and fits(2 * size):
      size *= 2
  log(f"evaluation batch {requested} needs {human_bytes(needed)} of {human_bytes(budget)}: "
      f"evaluating in batches of {size} instead (the metrics do not depend on it)")
  return size, tried[size][1]


def check_train_step(lowered: Any, budget: Optional[int], batch_size: int) -> Any:
  """Compiles the lowered train step; raises if it needs more than ``budget``.

  Returns the compiled step, for the run to use.
  """
  compiled = lowered.compile()
  needed = compiled_bytes(compiled)
  if needed is None or budget is None or needed <= HEADROOM * budget:
    return compiled
  raise NotEnoughMemoryError(
      f"one train step at batch {batch_size} needs {human_bytes(needed)} and this process has "
      f"{human_bytes(budget)} (a step may use {HEADROOM:.0%} of it): lower --batch-size or --width, "
      "split the batch into micro-batches (--accumulation-steps), recompute activations "
      f"(--remat), or compute in --dtype bfloat16{_memory_schedule_hint()}.")


def check_run(lower_train: Callable[[], Any], eval_step: Any, eval_state: Any, split: Any,
              batch_size: int, eval_batch_size: int,
              log: Callable[[str], None] = lambda message: None) -> tuple[Any, int, Any]:
  """Both checks before a run's first step.

  ``lower_train()`` lowers the train step on a real batch; ``eval_step``
  (jitted) evaluates ``eval_state`` on batches of ``split``. Returns the
  compiled train step, the evaluation batch size and the compiled evaluation
  step; raises :class:`NotEnoughMemoryError` for a train step that cannot fit.
  """
  budget = available_bytes()
  train_step = check_train_step(lower_train(), budget, batch_size)
  capped = cpu_eval_cap(eval_batch_size, math.prod(split.images.shape[1:]))
  if capped < eval_batch_size:
    log(f"evaluating in batches of {capped} instead of {eval_batch_size}: on a CPU an evaluation "
        f"batch holds at most {CPU_EVAL_ELEMENTS:,} input elements")
  size, compiled_eval = fit_eval_batch(eval_batch_lowering(eval_step, eval_state, split), capped,
                                       budget, log)
  return train_step, size, compiled_eval


def cpu_eval_cap(requested: int, example_elements: int) -> int:
  """``requested``, or on a CPU the largest power of two under :data:`CPU_EVAL_ELEMENTS`."""
  if jax.default_backend() != "cpu" or requested * example_elements <= CPU_EVAL_ELEMENTS:
    return requested
  return 1 << int(math.log2(max(1, CPU_EVAL_ELEMENTS // example_elements)))


def eval_batch_lowering(eval_step: Any, state: Any, split: Any) -> Callable[[int], Any]:
  """``n -> eval_step`` lowered at batch ``n`` for ``split``'s examples."""
  from sam_jax.data import batches as batches_lib

  def lower(n: int) -> Any:
    batch = next(iter(batches_lib.eval_batches(split, n)))
    return eval_step.lower(abstract(state), abstract(batch))

  return lower
