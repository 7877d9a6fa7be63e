"""Every method on 4 CPU devices, under jax.pmap and jax.shard_map.

Run by test_multidevice.py in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the flag must be set
before JAX starts). Checks, for every method:

* per-device perturbation (``axis_name`` given, local gradients): the
  direction equals the mean over devices of the single-device direction on
  each device's shard, and is the same on every device;
* synchronized perturbation (averaged gradients, an averaging ``grad_fn``, no
  ``axis_name``): the direction equals the single-device direction on the
  global batch;
* the optimizer state stays identical on every device over two steps.

Prints one line per check and exits non-zero on the first mismatch.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import sam_jax
from tests.optimizers import mlp_problem as mp
from tests.optimizers.test_common import METHODS, assert_same, build

DEVICES = 4
AXIS = "data"


def single_device_direction(tx, params, x, y, steps=1):
  grad_fn = sam_jax.grad_fn_from_loss(mp.jax_loss, x, y)
  state = tx.init(params)
  for _ in range(steps):
    out, state = tx.update(grad_fn(params)[0], state, params, grad_fn=grad_fn)
  return out


def local_grad_fn(x, y, *, synchronized, vary=None):
  """grad_fn on this device's shard; averaged over devices when synchronized.

  ``vary`` marks the replicated params as device-varying first (shard_map):
  otherwise JAX sums their gradient over the mesh axis by itself.
  """
  local = sam_jax.grad_fn_from_loss(mp.jax_loss, x, y)

  def grad_fn(p):
    grads, aux = local(vary(p) if vary else p)
    return (jax.lax.pmean(grads, AXIS), aux) if synchronized else (grads, aux)

  return grad_fn


def device_step(tx, *, synchronized, vary=None):
  def step(params, state, x, y):
    grad_fn = local_grad_fn(x, y, synchronized=synchronized, vary=vary)
    extra = {} if synchronized else {"axis_name": AXIS}
    return tx.update(grad_fn(params)[0], state, params, grad_fn=grad_fn, **extra)

  return step


def run_pmap(tx, params, xs, ys, *, synchronized, steps):
  step = jax.pmap(device_step(tx, synchronized=synchronized), axis_name=AXIS,
                  in_axes=(None, 0, 0, 0))
  state = jax.tree.map(lambda a: jnp.stack([a] * DEVICES), tx.init(params))
  outputs = []
  for _ in range(steps):
    out, state = step(params, state, xs, ys)
    outputs.append(out)
  return outputs, state


def run_shard_map(tx, params, xs, ys, *, synchronized, steps):
  mesh = jax.make_mesh((DEVICES,), (AXIS,))
  def vary(p):
    # Adding a device-varying zero makes a point varying whether it was
    # replicated (the clean weights) or varying already (w + a local ε).
    zero = jax.lax.pcast(jnp.zeros([], jnp.float32), AXIS, to="varying")
    return jax.tree.map(lambda a: a + zero.astype(a.dtype), p)
  inner = device_step(tx, synchronized=synchronized, vary=vary)

  def step(params, state, x, y):
    out, state = inner(params, state, x[0], y[0])
    return out, state

  mapped = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(), P(AXIS), P(AXIS)),
                                 out_specs=(P(), P())))
  # make_mesh gives Explicit axes: inputs must already carry their sharding.
  put = lambda t, spec: jax.device_put(t, NamedSharding(mesh, spec))
  params, xs, ys = put(params, P()), put(xs, P(AXIS)), put(ys, P(AXIS))
  state = put(tx.init(params), P())
  # Replicated outputs: present them like pmap's, one copy per device.
  per_device = lambda t: jax.tree.map(
      lambda a: np.stack([np.asarray(s.data) for s in a.addressable_shards]), t)
  outputs = []
  for _ in range(steps):
    out, state = mapped(params, state, xs, ys)
    outputs.append(per_device(out))
  return outputs, per_device(state)


def main() -> int:
  assert jax.device_count() == DEVICES, jax.devices()
  params_np, x, y = mp.make_problem(seed=0)
  params = mp.to_tree(params_np)
  xg, yg = jnp.asarray(x, jnp.float32), jnp.asarray(y)
  xs, ys = xg.reshape(DEVICES, -1, x.shape[1]), yg.reshape(DEVICES, -1)

  for name in METHODS:
    tx = build(name)
    per_device_want = jax.tree.map(
        lambda *a: sum(a) / DEVICES,
        *[single_device_direction(tx, params, xs[i], ys[i]) for i in range(DEVICES)])
    synchronized_want = single_device_direction(tx, params, xg, yg)
    for runner in (run_pmap, run_shard_map):
      for synchronized, want in ((False, per_device_want), (True, synchronized_want)):
        # Two steps: the first gives the direction; after the second, the
        # state (counts, moving averages) must still be the same everywhere.
        (out, _), state = runner(tx, params, xs, ys, synchronized=synchronized, steps=2)
        for i in range(DEVICES):
          assert_same(jax.tree.map(lambda a: a[i], out), want)
        for leaf in jax.tree.leaves(state):
          leaf = np.asarray(leaf)
          for i in range(1, DEVICES):
            np.testing.assert_array_equal(leaf[i], leaf[0])
        mode = "synchronized" if synchronized else "per-device"
        print(f"ok {name} {runner.__name__} {mode}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
