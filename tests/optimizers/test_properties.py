"""Property-based tests: the optimizers' invariants on random pytrees, shapes and data.

Hypothesis draws the trees (one to four leaves of rank 0 to 3, nested in dicts
under Flax-style names), the values and the hyperparameters; each property
is the statement of the docstring above its test. Runs eagerly: the shapes
change from example to example, and compiling each would cost more than
the checks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.optimizers.test_common import METHODS, RADIUS, build  # noqa: E402

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)
# rho = 0 leaves the gradient bit for bit for these; GSAM's decomposition and
# CR-SAM's curvature terms are sums that round (checked to float tolerance).
EXACT_AT_ZERO_RADIUS = ("sam", "sam_adaptive", "asam", "wsam", "wsam_decoupled", "gcsam",
                        "friendly_sam", "stable_sam")
# LookSAM, AE-SAM and randomized SAM evaluate grad_fn inside lax.cond, compiled apart
# from the eager clean gradient: equal to float tolerance, not bit for bit.

shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)
names = st.sampled_from(["kernel", "bias", "scale", "embedding", "w"])


@st.composite
def problems(draw):
  """(params, grad_fn): a random tree and a smooth non-convex loss on it."""
  # One kernel of rank >= 2 always: ASAM's and GCSAM's default masks refuse a tree in
  # which they select nothing (tested in their own files).
  kernel = ("kernel", draw(st.lists(st.integers(1, 4), min_size=2, max_size=3).map(tuple)))
  leaves = [kernel] + draw(st.lists(st.tuples(names, shapes), min_size=0, max_size=3))
  seed = draw(st.integers(0, 2**16))
  scale = draw(st.sampled_from([1e-3, 1.0, 30.0]))
  rng = np.random.default_rng(seed)
  params = {f"layer{i}": {name: jnp.asarray(scale * rng.normal(size=shape), jnp.float32)}
            for i, (name, shape) in enumerate(leaves)}
  data = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)

  def loss(p):
    return sum(jnp.sum(jnp.tanh(a * x + 0.3) ** 2 + 0.01 * a ** 2)
               for a, x in zip(jax.tree.leaves(p), jax.tree.leaves(data)))

  def grad_fn(p):
    value, grads = jax.value_and_grad(loss)(p)
    return grads, {"loss": value}

  return params, grad_fn


def finite(tree) -> bool:
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


@SETTINGS
@given(problems(), st.sampled_from(sorted(METHODS)), st.floats(0.0, 2.0))
def test_finite_input_gives_a_finite_update(problem, name, radius):
  """Finite parameters and gradients (zero ones included) give a finite update."""
  params, grad_fn = problem
  tx = build(name, **{RADIUS[name]: radius})
  grads = grad_fn(params)[0]
  state = tx.init(params)
  for _ in range(2):  # the second step sees state from the first (momenta, GSAM's count)
    updates, state = tx.update(grads, state, params, grad_fn=grad_fn)
    assert finite(updates), name
    params = optax.apply_updates(params, updates)
    grads = grad_fn(params)[0]


@SETTINGS
@given(problems(), st.sampled_from(sorted(METHODS)))
def test_zero_radius_is_the_base_optimizer(problem, name):
  """With rho = 0 the perturbed point is the point itself: the update is the base
  optimizer's update of the plain gradient."""
  params, grad_fn = problem
  tx = build(name, **{RADIUS[name]: 0.0})
  grads = grad_fn(params)[0]
  got, _ = tx.update(grads, tx.init(params), params, grad_fn=grad_fn)
  if name == "wsam_decoupled":  # it applies its base optimizer itself
    base = optax.sgd(0.1, momentum=0.9)
    want, _ = base.update(grads, base.init(params), params)
  else:
    want = grads
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    if name in EXACT_AT_ZERO_RADIUS:
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
    else:
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.max(np.abs(b)) + 1e-30))


@st.composite
def relu_networks(draw):
  """A bias-free two-layer ReLU network, a batch, and positive per-unit scales."""
  d, h, k, n = (draw(st.integers(1, 5)) for _ in range(4))
  seed = draw(st.integers(0, 2**16))
  rng = np.random.default_rng(seed)
  params = {"hidden": {"kernel": rng.normal(size=(d, h))}, "out": {"kernel": rng.normal(size=(h, k))}}
  x, y = rng.normal(size=(n, d)), rng.normal(size=(n, k))
  scales = np.exp(rng.uniform(-1.5, 1.5, size=h))
  return params, x, y, scales


def relu_loss(params, x, y):
  hidden = jax.nn.relu(x @ params["hidden"]["kernel"])
  return jnp.mean((hidden @ params["out"]["kernel"] - y) ** 2)


def asam_update(params, x, y, rho):
  import sam_jax

  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  grad_fn = sam_jax.grad_fn_from_loss(relu_loss, jnp.asarray(x, jnp.float32),
                                      jnp.asarray(y, jnp.float32))
  tx = sam_jax.asam(rho=rho, eta=0.0)
  return tx.update(grad_fn(params)[0], tx.init(params), params, grad_fn=grad_fn)[0]


@SETTINGS
@given(relu_networks(), st.floats(0.01, 1.0))
def test_asam_is_invariant_to_relu_rescalings(network, rho):
  """Scaling hidden unit j's incoming weights by c_j > 0 and its outgoing ones by 1/c_j
  leaves the network's function unchanged (A w); with eta = 0 ASAM's perturbation moves
  with it (eps(A w) = A eps(w)), so its update, a gradient, transforms as A^-1 g(w)."""
  params, x, y, c = network
  rescaled = {"hidden": {"kernel": params["hidden"]["kernel"] * c[None, :]},
              "out": {"kernel": params["out"]["kernel"] / c[:, None]}}
  np.testing.assert_allclose(relu_loss(rescaled, x, y), relu_loss(params, x, y), rtol=1e-5)
  base = asam_update(params, x, y, rho)
  moved = asam_update(rescaled, x, y, rho)
  expected = {"hidden": {"kernel": np.asarray(base["hidden"]["kernel"]) / c[None, :]},
              "out": {"kernel": np.asarray(base["out"]["kernel"]) * c[:, None]}}
  for got, want in zip(jax.tree.leaves(moved), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-4 * float(np.max(np.abs(want))))


# Few examples: multidevice_check.py checks every method's synchronized
# perturbation on 4 devices; this adds random trees and 2 devices.
@settings(max_examples=3, deadline=None, derandomize=True)
@given(problems(), st.sampled_from(sorted(METHODS)), st.sampled_from([2, 4]),
       st.integers(0, 2**16))
def test_synchronized_perturbation_on_k_devices_is_one_device_on_the_global_batch(
    problem, name, devices, seed):
  """Each of k devices holds a shard of the batch; with gradients averaged across them
  (the synchronized perturbation) every device computes the one-device update of the
  global batch."""
  params, _ = problem
  rng = np.random.default_rng(seed)
  targets = jnp.asarray(rng.normal(size=(devices * 3,)), jnp.float32)

  def loss(p, t):  # a mean over examples, so the global mean is the mean of shard means
    s = sum(jnp.sum(jnp.tanh(a + 0.3) ** 2) for a in jax.tree.leaves(p))
    return jnp.mean((s - t) ** 2)

  tx = build(name)

  def update(t, average):
    def grad_fn(p):
      value, grads = jax.value_and_grad(loss)(p, t)
      return (average(grads), {"loss": average(value)})
    return tx.update(grad_fn(params)[0], tx.init(params), params, grad_fn=grad_fn)[0]

  shards = targets.reshape(devices, -1)
  got = jax.vmap(lambda t: update(t, lambda v: jax.lax.pmean(v, "devices")),
                 axis_name="devices")(shards)
  want = update(targets, lambda v: v)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    for i in range(devices):
      np.testing.assert_allclose(g[i], w, rtol=2e-4, atol=1e-5 * float(np.max(np.abs(w)) + 1))
