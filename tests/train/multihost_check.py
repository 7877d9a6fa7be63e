"""A SAM train step across 2 processes x 2 CPU devices equals 1 process x 4 devices.

    python -m tests.train.multihost_check worker PROCESS_ID PORT OUT   (2 devices each)
    python -m tests.train.multihost_check single OUT                   (4 devices)

Each worker joins JAX's distributed runtime over loopback
(``jax.distributed.initialize``, gloo collectives on CPU), builds the global
mesh over all 4 devices, feeds its half of the global batch
(``jax.make_array_from_process_local_data``) and runs two shard_map train
steps of SAM (per-device and synchronized perturbation); process 0 writes the
new weights. ``single`` runs the same steps on one process with 4 devices.
Driven by test_multihost.py.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from tests.train.parallel_check import BATCH, BatchNormNet, TXS, setup

MODES = ("per_device", "synchronized")


def run(process_index: int, process_count: int) -> dict:
  from sam_jax.train import parallel

  mesh = parallel.make_mesh()
  assert mesh.devices.size == 4, mesh
  rows = len(BATCH["label"]) // process_count
  local = {k: v[process_index * rows:(process_index + 1) * rows] for k, v in BATCH.items()}
  batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(
      NamedSharding(mesh, P(parallel.MESH_AXIS)), x), local)
  out = {}
  for mode in MODES:
    state, build = setup(BatchNormNet(), TXS["sam"](), perturbation=mode)
    state = jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        NamedSharding(mesh, P()), np.asarray(x)), state)
    step = parallel.shard_map_step(build, mesh)
    for i in range(2):
      state, _ = step(state, batch, jax.random.key(i))
    for path, leaf in jax.tree_util.tree_flatten_with_path((state.params, state.model_state))[0]:
      out[f"{mode}{jax.tree_util.keystr(path)}"] = np.asarray(leaf.addressable_data(0))
  return out


def main(argv: list[str]) -> int:
  if argv[0] == "worker":
    process_id, port, path = int(argv[1]), int(argv[2]), argv[3]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                               process_id=process_id)
    assert jax.process_count() == 2 and jax.local_device_count() == 2
    out = run(jax.process_index(), 2)
    if process_id == 0:
      np.savez(path, **out)
    jax.distributed.shutdown()
  else:
    np.savez(argv[1], **run(0, 1))
  print("ok", argv[0], flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
