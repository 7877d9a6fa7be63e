"""Train steps on 4 CPU devices under jax.pmap, jax.shard_map and sharded jit.

Run by test_parallel.py in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``. For SAM (one
``grad_fn`` call) and CR-SAM (two), plain SGD, Momentum-SAM and ESAM (which
also selects examples), on a global batch of 16 (4 per device); the other
methods' per-device and synchronized directions are multidevice_check.py's:

* synchronized perturbation = the single-device step on the global batch
  (a model without BatchNorm, which would normalize each shard alone);
* per-device perturbation differs from it and equals the hand computation:
  with plain SGD as the base, the new weights are the mean over devices of
  the single-device step on each device's shard, and so are the BatchNorm
  statistics (both are linear in what each device contributes);
* plain SGD and Momentum-SAM (one pass, after the base) need no sharpness
  semantics: every mode equals one device;
* gradient accumulation on each device (2 micro-batches of 2) with a
  synchronized perturbation is still the single-device step on the global batch;
* the sharded step (``parallel="sharded"``, what ``"auto"`` picks) is the
  single-device step, BatchNorm included, and its state comes back replicated;
* ESAM ranks each device's own examples, so its synchronized perturbation is
  not the global batch's step (not compared); its sharded step is.

Prints one ``ok`` line per check; exits non-zero on the first mismatch.
"""

from __future__ import annotations

import functools
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import sam_jax
from sam_jax import models
from sam_jax.train import parallel
from sam_jax.train.losses import softmax_cross_entropy
from sam_jax.train.state import create_train_state
from sam_jax.train.step import make_train_step

DEVICES = 4
LOSS = softmax_cross_entropy()
RNG = np.random.default_rng(0)
BATCH = {"image": RNG.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8),
         "label": RNG.integers(0, 3, 16).astype(np.int32)}


class LayerNormNet(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(6, (3, 3))(x)
    x = nn.relu(nn.LayerNorm()(x))
    return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


class BatchNormNet(nn.Module):
  classes: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(6, (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    return nn.Dense(self.classes)(jnp.mean(x, axis=(1, 2)))


TXS = {
    "sgd": lambda: optax.sgd(0.1),
    "sam": lambda: optax.chain(sam_jax.sam(0.3), optax.sgd(0.1)),
    "crsam": lambda: optax.chain(sam_jax.crsam(0.3, 0.2, 0.1), optax.sgd(0.1)),
    "momentum_sam": lambda: optax.chain(optax.sgd(0.1, momentum=0.9), sam_jax.momentum_sam(0.3)),
    "esam": lambda: optax.chain(sam_jax.esam(0.3, beta=0.6, gamma=0.5, seed=1), optax.sgd(0.1)),
}
# No per-device sharpness semantics (no grad_fn): every mode equals one device.
ONE_PASS = ("sgd", "momentum_sam")
# Each device ranks its own examples, so a synchronized perturbation is not the
# global batch's step (the sharded step, below, is).
LOCAL_SELECTION = ("esam",)


def setup(module, tx, perturbation="per_device", accumulation_steps=1):
  apply_fn, params, model_state = models.from_linen(module, jax.random.key(0), BATCH["image"][:1])
  state = create_train_state(params, model_state, tx)
  build = functools.partial(make_train_step, apply_fn, LOSS, tx, perturbation=perturbation,
                            accumulation_steps=accumulation_steps)
  return state, build


def host(tree):
  return jax.tree.map(np.asarray, tree)


def single(module, tx, batch, rng):
  state, build = setup(module, tx)
  new_state, _ = parallel.jit_step(build)(state, batch, rng)
  return host(new_state)


def run_pmap(module, tx, perturbation, rng, accumulation_steps=1):
  state, build = setup(module, tx, perturbation, accumulation_steps)
  new_state, _ = parallel.pmap_step(build)(parallel.replicate(state, DEVICES),
                                           parallel.shard_batch(BATCH, DEVICES), rng)
  copies = host(new_state)
  for leaf in jax.tree.leaves(copies):  # every device ends with the same state
    for i in range(1, DEVICES):
      np.testing.assert_array_equal(leaf[i], leaf[0])
  return jax.tree.map(lambda x: x[0], copies)


def run_shard_map(module, tx, perturbation, rng, accumulation_steps=1):
  state, build = setup(module, tx, perturbation, accumulation_steps)
  mesh = parallel.make_mesh(DEVICES)
  state, batch = parallel.place_for_shard_map(mesh, state=state, batch=BATCH)
  new_state, _ = parallel.shard_map_step(build, mesh)(state, batch, rng)
  return host(new_state)


def run_sharded(module, tx, rng):
  state, build = setup(module, tx)
  placement = parallel.place(build, "sharded")
  new_state, _ = placement.step_fn(placement.to_device(state), placement.place_batch(BATCH), rng)
  for leaf in jax.tree.leaves(new_state):
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == DEVICES, leaf.sharding
  on_one = placement.to_host(new_state)
  assert all(len(leaf.devices()) == 1 for leaf in jax.tree.leaves(on_one))
  return host(on_one)


def hand_per_device(module, tx, rng):
  """Mean over devices of one device's step on its shard (its rng folded as the step does)."""
  outs = []
  for i in range(DEVICES):
    shard = {k: v[i * 4:(i + 1) * 4] for k, v in BATCH.items()}
    outs.append(single(module, tx, shard, jax.random.fold_in(rng, i)))
  return jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *outs)


def assert_close(a, b, what):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6, err_msg=what)


def differs(a, b):
  return any(not np.allclose(x, y, rtol=1e-4, atol=1e-5)
             for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))


def main() -> int:
  assert jax.device_count() == DEVICES, jax.devices()
  rng = jax.random.key(11)
  runners = {"pmap": run_pmap, "shard_map": run_shard_map}
  for name, make_tx in TXS.items():
    reference = single(LayerNormNet(), make_tx(), BATCH, rng)
    per_device_hand = hand_per_device(LayerNormNet(), make_tx(), rng)
    for runner_name, runner in runners.items():
      if name not in LOCAL_SELECTION:
        synced = runner(LayerNormNet(), make_tx(), "synchronized", rng)
        assert_close(synced, reference, f"{name} {runner_name} synchronized")
        print(f"ok {name} {runner_name} synchronized = one device on the global batch",
              flush=True)
      if name == "sam":
        accumulated = runner(LayerNormNet(), make_tx(), "synchronized", rng, accumulation_steps=2)
        assert_close(accumulated, reference, f"sam {runner_name} synchronized, accumulated")
        print(f"ok sam {runner_name} synchronized with 2 micro-batches per device", flush=True)
      per_device = runner(LayerNormNet(), make_tx(), "per_device", rng)
      if name in ONE_PASS:
        assert_close(per_device, reference, f"{name} {runner_name} per-device")
      else:
        assert differs(per_device, reference), f"{name} {runner_name}: per-device = global"
        assert_close(per_device, per_device_hand, f"{name} {runner_name} per-device")
      print(f"ok {name} {runner_name} per-device", flush=True)

  # Sharded: one device's math over the whole batch, BatchNorm statistics included.
  for name, make_tx in TXS.items():
    for module in (LayerNormNet(), BatchNormNet()):
      reference = single(module, make_tx(), BATCH, rng)
      out = run_sharded(module, make_tx(), rng)
      assert_close(out.params, reference.params, f"{name} sharded params")
      assert_close(out.model_state, reference.model_state, f"{name} sharded model state")
    print(f"ok {name} sharded = one device on the global batch", flush=True)

  # BatchNorm: statistics (and weights) are the mean of what each device computes.
  for name in ("sam", "crsam"):
    hand = hand_per_device(BatchNormNet(), TXS[name](), rng)
    for runner_name, runner in runners.items():
      out = runner(BatchNormNet(), TXS[name](), "per_device", rng)
      assert_close(out.model_state, hand.model_state, f"{name} {runner_name} batch stats")
      assert_close(out.params, hand.params, f"{name} {runner_name} batchnorm params")
      print(f"ok {name} {runner_name} batchnorm statistics averaged", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
