"""Objectives with variables and per-example state on 4 CPU devices (pmap and shard_map).

Run by test_auc_cli.py in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``; global batch 16, 4
examples per device, a model without BatchNorm.

* AP loss + SGD: the merged per-example buffers equal the single-device
  update of each shard applied to its own rows, and the new weights equal a
  step with the mean of the shards' gradients.
* AUC-M + SAM + PESG: the new (weights, a, b, alpha) equal SAM's direction
  computed on each shard alone, averaged, then one PESG step (the
  per-device perturbation semantics), with alpha's closed-form ascent.

Prints one ``ok`` line per check; exits non-zero on the first mismatch.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import sam_jax
from sam_jax import auc, models
from sam_jax.data import augment as augment_lib
from sam_jax.train import objectives, parallel
from sam_jax.train.state import create_train_state
from sam_jax.train.step import make_train_step

DEVICES, N_DATA = 4, 40
RNG = np.random.default_rng(0)
LABELS = np.tile([1, 0, 0, 1], 4).astype(np.int32)  # positives on every device
BATCH = {"image": RNG.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8), "label": LABELS,
         "index": RNG.choice(N_DATA, 16, replace=False).astype(np.int32)}


class Net(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.LayerNorm()(nn.Conv(4, (3, 3))(x)))
    return nn.Dense(2)(jnp.mean(x, axis=(1, 2)))


def close(a, b, what):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=2e-6, err_msg=what)


def shards():
  return [jax.tree.map(lambda x, d=d: x[4 * d:4 * d + 4], BATCH) for d in range(DEVICES)]


def run(runner, build, state):
  state = jax.tree.map(jnp.copy, state)  # the steps donate their input state
  if runner == "pmap":
    step = parallel.pmap_step(build)
    out, _ = step(parallel.replicate(state, DEVICES), parallel.shard_batch(BATCH, DEVICES),
                  jax.random.key(1))
    for d in range(1, DEVICES):  # every device holds the same state
      close(jax.tree.map(lambda x, d=d: x[d], out), parallel.unreplicate(out), "replicas")
    return parallel.unreplicate(out)
  mesh = parallel.make_mesh(DEVICES)
  step = parallel.shard_map_step(build, mesh)
  out, _ = step(parallel.place_for_shard_map(mesh, state=state),
                parallel.place_for_shard_map(mesh, batch=BATCH), jax.random.key(1))
  return jax.device_get(out)


def main():
  assert jax.device_count() == DEVICES, jax.devices()
  model = Net()
  apply_fn, params, model_state = models.from_linen(model, jax.random.key(0), BATCH["image"][:1])
  images = lambda b: augment_lib.normalize(jnp.asarray(b["image"]))

  # AP + SGD.
  ap = objectives.ap("binary", N_DATA, margin=1.0, gamma=0.9, surrogate="squared_hinge")
  tx = optax.sgd(0.1)
  state = create_train_state(params, model_state, tx, ap)
  build = functools.partial(make_train_step, apply_fn, ap, tx, task="binary")

  def shard_loss(p, b, old):
    logits, _ = apply_fn(p, model_state, images(b), train=True)
    return ap.loss(None, old, logits, jnp.asarray(b["label"]), jnp.asarray(b["index"]), None)

  old = state.objective_state
  expected_buffers, grads = old, []
  for b in shards():
    (_, new), g = jax.value_and_grad(shard_loss, has_aux=True)(params, b, old)
    expected_buffers = jax.tree.map(lambda e, n, o: e + (n - o), expected_buffers, new, old)
    grads.append(g)
  mean_grad = jax.tree.map(lambda *g: sum(g) / DEVICES, *grads)
  expected_params = jax.tree.map(lambda p, g: p - 0.1 * g, params, mean_grad)
  for runner in ("pmap", "shard_map"):
    out = run(runner, build, state)
    close(out.objective_state, expected_buffers, f"{runner} AP buffers")
    close(out.params, expected_params, f"{runner} AP weights")
    print(f"ok {runner} ap buffers and weights")

  # AUC-M + SAM + PESG.
  aucm = objectives.aucm("binary", None, margin=1.0, version="v2")
  pesg = lambda: auc.pesg(0.1, weight_decay=0.0, epoch_decay=0.0)
  tx = optax.chain(sam_jax.sam(0.05), pesg())
  state = create_train_state(params, model_state, tx, aucm)
  start = state.params._replace(objective={"a": jnp.float32(0.5), "b": jnp.float32(0.2),
                                           "alpha": jnp.float32(0.3)})
  state = state._replace(params=start)
  build = functools.partial(make_train_step, apply_fn, aucm, tx, task="binary")

  def aucm_loss(p, b):
    logits, _ = apply_fn(p.model, model_state, images(b), train=True)
    return aucm.loss(p.objective, None, logits, jnp.asarray(b["label"]), None, None)[0]

  directions = []
  for b in shards():
    grad_fn = sam_jax.grad_fn_from_loss(aucm_loss, b)
    g, _ = grad_fn(start)
    sam = sam_jax.sam(0.05)
    d, _ = sam.update(g, sam.init(start), start, grad_fn=grad_fn)
    directions.append(d)
  direction = jax.tree.map(lambda *d: sum(d) / DEVICES, *directions)
  update, _ = pesg().update(direction, pesg().init(start), start)
  expected = optax.apply_updates(start, update)
  assert float(expected.objective["alpha"]) != 0.3
  for runner in ("pmap", "shard_map"):
    out = run(runner, build, state)
    close(out.params, expected, f"{runner} SAM+PESG on AUC-M")
    print(f"ok {runner} sam pesg aucm")


if __name__ == "__main__":
  main()
