"""Running a step on one device, with pmap, with shard_map, sharded, or with m-sharpness.

All parallelism lives here. Each wrapper takes a *step builder* (a function
``axis_name, vary -> step``, e.g. a ``functools.partial`` of
:func:`~sam_jax.train.step.make_train_step`) and returns a compiled step with
the same call signature ``(state, batch, rng) -> (state, metrics)``:

* :func:`jit_step`: one device, ``jax.jit`` with the state donated.
* :func:`pmap_step`: ``jax.pmap`` over the leading device axis of the state
  (replicated with :func:`replicate`) and of the batch (see
  :func:`shard_batch`); the rng is shared and folded with the device index
  inside.
* :func:`shard_map_step`: ``jax.shard_map`` over a 1-D mesh; state and rng
  replicated, the batch split along its first axis. Under ``shard_map`` JAX
  sums the gradient of a replicated input over the mesh by itself, so the
  weights are made device-varying before differentiation (:func:`vary`).
* :func:`sharded_step`: one program over a 1-D mesh of all devices,
  ``jax.jit`` with the batch split along its first axis and the state
  replicated; XLA partitions the computation and inserts the cross-device
  sums. Unlike pmap and shard_map it changes no math: BatchNorm statistics,
  the loss and SAM's perturbation are those of the whole batch, so a step
  equals the one-device step to float tolerance. It is what ``"auto"``
  picks when a run sees several devices (on a CPU, several host devices:
  see :func:`use_host_devices`; over several processes, every process's:
  see :func:`start_distributed` and :func:`put_global`).
* :func:`msharpness_step`: m-sharpness on one device: the batch is split
  into ``k`` sub-batches, each perturbed with its own gradient, as ``k``
  devices would, by a ``jax.vmap`` with an axis name; the directions are
  averaged, and so are the BatchNorm statistics (each sub-batch normalizes
  with its own statistics, like ghost BatchNorm).
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

StepBuilder = Callable[..., Callable]
PMAP_AXIS = "batch"
MESH_AXIS = "data"
MSHARP_AXIS = "msharp"


def jit_step(build: StepBuilder) -> Callable:
  return jax.jit(build(axis_name=None), donate_argnums=(0,))


def replicate(tree: Any, num_devices: Optional[int] = None) -> Any:
  """``tree`` stacked once per device on a leading axis, as pmap takes it.

  (``jax.device_put_replicated`` is deprecated; pmap shards a leading axis
  of the right size by itself.)
  """
  n = num_devices or jax.local_device_count()
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + jnp.shape(x)), tree)


def unreplicate(tree: Any) -> Any:
  """The first device's copy."""
  return jax.tree.map(lambda x: x[0], tree)


def shard_batch(batch: dict, num_devices: int) -> dict:
  """Splits a host batch into ``(num_devices, per_device, ...)``."""
  def split(x):
    if x.shape[0] % num_devices:
      raise ValueError(
          f"batch of {x.shape[0]} does not split evenly over {num_devices} devices; "
          "use a batch size divisible by the device count."
      )
    return x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:])
  return jax.tree.map(split, batch)


def pmap_step(build: StepBuilder) -> Callable:
  step = build(axis_name=PMAP_AXIS)
  return jax.pmap(step, axis_name=PMAP_AXIS, in_axes=(0, 0, None), donate_argnums=(0,))


def vary(tree: Any, axis_name: str = MESH_AXIS) -> Any:
  """Makes every leaf device-varying along ``axis_name`` (inside shard_map).

  Adding a varying zero works whether a leaf was replicated (the clean
  weights) or varying already (weights plus a local perturbation), without
  asking JAX which it is (an API that moved between releases).
  """
  zero = jax.lax.pcast(jnp.zeros([], jnp.float32), axis_name, to="varying")
  return jax.tree.map(lambda x: x + zero.astype(x.dtype), tree)


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
  devices = jax.devices()[: num_devices or jax.device_count()]
  return Mesh(np.asarray(devices), (MESH_AXIS,))


def shard_map_step(build: StepBuilder, mesh: Mesh) -> Callable:
  step = build(axis_name=MESH_AXIS, vary=lambda t: vary(t, MESH_AXIS))
  mapped = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(MESH_AXIS), P()),
                         out_specs=(P(), P()))
  return jax.jit(mapped, donate_argnums=(0,))


def sharded_step(build: StepBuilder, mesh: Mesh) -> Callable:
  replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(MESH_AXIS))
  return jax.jit(build(axis_name=None), in_shardings=(replicated, split, replicated),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


def first_device_copy(tree: Any) -> Any:
  """Each replicated leaf as its first device's copy (no transfer): evaluation
  and checkpoints then see single-device arrays, as after a one-device step."""
  return jax.tree.map(lambda x: x.addressable_shards[0].data, tree)


def place_for_shard_map(mesh: Mesh, state: Any = None, batch: Any = None):
  """Puts the state (replicated) and the batch (split) where shard_map wants them.

  Over several processes each one holds the whole host batch (every process
  draws the same batches from the seed) and contributes the rows of its own
  devices (:func:`put_global`).
  """
  out = []
  if state is not None:
    out.append(put_global(state, NamedSharding(mesh, P())))
  if batch is not None:
    out.append(put_global(batch, NamedSharding(mesh, P(MESH_AXIS))))
  return out[0] if len(out) == 1 else tuple(out)


def put_global(tree: Any, sharding: NamedSharding) -> Any:
  """``tree`` (the same host values on every process) as global arrays with ``sharding``.

  One process: :func:`jax.device_put`. Several: each process passes the
  slice its own devices hold to :func:`jax.make_array_from_process_local_data`
  (for a split batch, its contiguous rows; for a replicated leaf, all of it),
  so no process sends data to another.
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    x = np.asarray(x)
    spans = sharding.addressable_devices_indices_map(x.shape).values()
    rows = [index[0] if index else slice(None) for index in spans]
    start = min(r.start or 0 for r in rows)
    stop = max(x.shape[0] if r.stop is None else r.stop for r in rows) if x.ndim else None
    local = x[start:stop] if x.ndim else x
    return jax.make_array_from_process_local_data(sharding, local, x.shape)

  return jax.tree.map(put, tree)


def msharpness_step(build: StepBuilder, k: int) -> Callable:
  """m-sharpness on one device with ``k`` sub-batches (m = batch / k)."""
  if k < 1:
    raise ValueError(f"m-sharpness needs k >= 1 sub-batches, got {k}.")
  step = build(axis_name=MSHARP_AXIS)

  def run(state, batch, rng):
    sub = shard_batch(batch, k)
    states, metrics = jax.vmap(step, in_axes=(None, 0, None), axis_name=MSHARP_AXIS)(
        state, sub, rng)
    # After the cross-sub-batch means every copy is the same: keep the first.
    return jax.tree.map(lambda x: x[0], states), jax.tree.map(lambda x: x[0], metrics)

  return jax.jit(run, donate_argnums=(0,))


class Placement(NamedTuple):
  """A compiled step with the state and batches where it wants them.

  Attributes:
    step_fn: ``(device_state, device_batch, rng) -> (device_state, metrics)``.
    to_device: host state -> what ``step_fn`` takes.
    to_host: ``step_fn``'s state -> one host copy (for evaluation and saving).
    place_batch: host batch -> what ``step_fn`` takes.
    first_copy: metrics -> one device's metrics (pmap returns one per device).
  """

  step_fn: Callable
  to_device: Callable
  to_host: Callable
  place_batch: Callable
  first_copy: Callable


def place(build: StepBuilder, mode: str = "none", m_sharpness: int = 1) -> Placement:
  """The step compiled for ``mode`` (``"none"``, ``"pmap"``, ``"shard_map"``,
  ``"sharded"``; ``"auto"`` must be resolved first, see :func:`resolve_mode`)."""
  same = lambda x: x
  if mode == "sharded":
    mesh = make_mesh()
    return Placement(sharded_step(build, mesh), lambda s: place_for_shard_map(mesh, state=s),
                     first_device_copy, lambda b: place_for_shard_map(mesh, batch=b), same)
  if mode == "pmap":
    n = jax.local_device_count()
    return Placement(pmap_step(build), lambda s: replicate(s, n), unreplicate,
                     lambda b: shard_batch(b, n), unreplicate)
  if mode == "shard_map":
    mesh = make_mesh()
    to_host = first_device_copy if jax.process_count() > 1 else same
    return Placement(shard_map_step(build, mesh), lambda s: place_for_shard_map(mesh, state=s),
                     to_host, lambda b: place_for_shard_map(mesh, batch=b), same)
  if m_sharpness > 1:
    return Placement(msharpness_step(build, m_sharpness), same, same, same, same)
  return Placement(jit_step(build), same, same, same, same)


def device_count(mode: str) -> int:
  """How many devices ``mode`` splits the batch over with per-device math
  (``"sharded"`` splits it too, but computes as one device: 1)."""
  return {"none": 1, "sharded": 1, "pmap": jax.local_device_count(),
          "shard_map": jax.device_count()}[mode]


def split_count(mode: str) -> int:
  """How many devices ``mode`` splits each batch over (whatever their math);
  the batch size must be a multiple of it."""
  if mode == "sharded":
    return jax.device_count()
  return device_count(mode)


MULTI_PROCESS_MODES = ("sharded", "shard_map")


def check_processes(mode: str, m_sharpness: int = 1) -> None:
  """Refuses a mode (or m-sharpness, a one-device placement) that runs on one
  process's devices in a run over several."""
  if jax.process_count() == 1:
    return
  if mode not in MULTI_PROCESS_MODES:
    raise ValueError(f"this run spans {jax.process_count()} processes, which parallel {mode!r} "
                     f"does not; use {' or '.join(MULTI_PROCESS_MODES)} (or auto).")
  if m_sharpness > 1:
    raise ValueError(f"m_sharpness > 1 splits the batch on one device; this run spans "
                     f"{jax.process_count()} processes: use --parallel shard_map, whose "
                     "per-device batch sets m.")


def resolve_mode(mode: str, batch_size: int, m_sharpness: int = 1,
                 accumulation_steps: int = 1) -> str:
  """``"auto"`` as a concrete mode; any other mode as it is.

  ``"auto"`` is ``"sharded"`` when the run sees more than one device (all
  processes' together) and the batch splits evenly over them with one
  micro-batch and no m-sharpness (a micro-batch or an m-sharpness sub-batch
  is a contiguous slice of the batch, which would sit on one device);
  otherwise ``"none"``. Both compute the same step, so the choice changes
  speed only. A run over several processes is always ``"sharded"`` (the
  checks then name what does not split).
  """
  if mode != "auto":
    return mode
  if jax.process_count() > 1:
    return "sharded"
  n = jax.device_count()
  if n > 1 and batch_size % n == 0 and m_sharpness == 1 and accumulation_steps == 1:
    return "sharded"
  return "none"


def start_distributed(coordinator_address: Optional[str] = None,
                      num_processes: Optional[int] = None,
                      process_id: Optional[int] = None) -> None:
  """Joins JAX's distributed runtime, before JAX's first computation.

  Arguments left ``None`` are detected by :func:`jax.distributed.initialize`
  (SLURM, Open MPI, TPU pods, Kubernetes). CPU processes exchange their
  collectives over gloo (TCP), so the same run works on CPU hosts and on
  GPU/TPU ones.
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


HOST_DEVICES_ENV = "SAM_JAX_CPU_DEVICES"
MAX_AUTO_HOST_DEVICES = 8


def use_host_devices(count: Optional[int] = None) -> Optional[int]:
  """Asks JAX for ``count`` CPU devices (default: ``$SAM_JAX_CPU_DEVICES``, else
  one per core up to 8); must run before JAX's first computation.

  Why: XLA:CPU runs some convolutions on one core however many it has (on
  the project's 2-core machine a ResNet-18 step's 28x28 layers do), so a
  batch split over one host device per core runs them side by side
  (``benchmarks/cpu_options.py``). GPU and TPU runs are unaffected (this
  sets only the host platform's device count). Returns the count set, or
  ``None`` when it was left alone: ``XLA_FLAGS`` already forces a count,
  or JAX has started (too late to change; the process keeps what it has).
  """
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return None
  if count is None:
    text = os.environ.get(HOST_DEVICES_ENV, "")
    if text:
      try:
        count = int(text)
      except ValueError:
        raise ValueError(f"{HOST_DEVICES_ENV} must be a whole number of CPU devices, "
                         f"got {text!r}.") from None
    else:
      cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)
      count = min(cores, MAX_AUTO_HOST_DEVICES)
  if count < 1:
    raise ValueError(f"{HOST_DEVICES_ENV} must be >= 1, got {count}.")
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:  # a backend is up already
    return None
  return count
