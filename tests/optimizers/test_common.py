"""Properties every sharpness transformation shares: numerics, errors, composition."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sam_jax
from tests.optimizers import mlp_problem as mp
from tests.optimizers.conftest import run_updates

# Every method with hyperparameters away from their special cases, so that
# each one exercises its own equations. Values: (factory, kwargs).
METHODS = {
    "sam": (sam_jax.sam, dict(rho=0.1)),
    "sam_adaptive": (functools.partial(sam_jax.sam, adaptive=True), dict(rho=0.5)),
    "asam": (sam_jax.asam, dict(rho=0.5, eta=0.01)),
    "gsam": (sam_jax.gsam, dict(rho_max=0.1, alpha=0.3)),
    "wsam": (functools.partial(sam_jax.wsam, decouple=False), dict(rho=0.1, gamma=0.8)),
    "wsam_decoupled": (
        functools.partial(sam_jax.wsam, base_optimizer=optax.sgd(0.1, momentum=0.9)),
        dict(rho=0.1, gamma=0.8, learning_rate=0.1),
    ),
    "crsam": (sam_jax.crsam, dict(rho=0.1, gamma=0.1, beta=0.01)),
    "gcsam": (sam_jax.gcsam, dict(rho=0.1)),
    "friendly_sam": (sam_jax.friendly_sam, dict(rho=0.1, sigma=0.5, lmbda=0.9)),
    "stable_sam": (sam_jax.stable_sam, dict(rho=0.1)),
    # lax.cond, which "auto" avoids on CPU: these tests (and the 4-device ones) run the
    # branch that accelerators run; test_skipping_by_cond_or_by_select_... the other.
    "looksam": (sam_jax.looksam, dict(rho=0.1, period=2, alpha=0.5, skip="cond")),
    "ae_sam": (sam_jax.ae_sam, dict(rho=0.1, threshold=0.5, ema_decay=0.6, skip="cond")),
    "randomized_sam": (sam_jax.randomized_sam, dict(rho=0.1, probability=0.5, seed=3,
                                                    skip="cond")),
    # Weight masks only: its data selection needs ``examples`` (tests/optimizers/test_esam.py).
    # Seed 1 perturbs 3 of the 5 leaves on the first step.
    "esam": (sam_jax.esam, dict(rho=0.1, beta=0.6, gamma=1.0, seed=1)),
}
# The methods that take the second pass on some steps only (through lax.cond). Each
# takes it on the first step (randomized_sam: seed 3 draws 0.009 there), so that
# the first direction is SAM's, which the per-device checks compare.
SOMETIMES = ("looksam", "ae_sam", "randomized_sam")
# The name of each method's radius argument.
RADIUS = {name: ("rho_max" if name == "gsam" else "rho") for name in METHODS}


def build(name, **overrides):
  factory, kwargs = METHODS[name]
  return factory(**{**kwargs, **overrides})


def leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_same(got, want, rtol=1e-5):
  """Two float32 computations of the same thing (compiled differently).

  ``rtol`` element-wise, with a floor of 1e-6 of the leaf's largest entry
  for entries that are the small difference of larger terms (WSAM's α = 4).
  """
  for a, b in zip(leaves(got), leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6 * np.max(np.abs(b)))


# ----------------------------------------------------------------------------
# Numerics.


@pytest.mark.parametrize("name", METHODS)
def test_zero_gradient_gives_a_finite_direction(name, problem):
  zeros = jax.tree.map(jnp.zeros_like, problem.params)
  grad_fn = lambda p: (jax.tree.map(jnp.zeros_like, p), None)
  tx = build(name)
  state = tx.init(problem.params)
  for _ in range(2):  # twice: F-SAM's second step uses its moving average
    out, state = jax.jit(lambda s: tx.update(zeros, s, problem.params, grad_fn=grad_fn))(state)
    for leaf in leaves(out):
      assert np.all(np.isfinite(leaf))
      np.testing.assert_array_equal(leaf, 0.0)


@pytest.mark.parametrize("name", METHODS)
def test_non_finite_gradient_makes_every_leaf_non_finite(name, problem):
  """Documented behaviour: a NaN in one leaf is not hidden, it reaches them all."""
  grads = problem.clean_grads()
  grads["head"]["bias"] = grads["head"]["bias"].at[0].set(jnp.nan)
  tx = build(name)
  out, _ = tx.update(grads, tx.init(problem.params), problem.params, grad_fn=problem.grad_fn)
  for leaf in leaves(out):
    assert not np.any(np.isfinite(leaf))


@pytest.mark.parametrize("name", ["sam", "asam", "gsam", "crsam", "gcsam", "stable_sam"])
def test_norms_are_float32_for_half_precision_leaves(name):
  """float16 gradients whose squared norm overflows float16 still work."""
  params = {"kernel": jnp.full((4, 4), 0.5, jnp.float16), "bias": jnp.zeros(4, jnp.float16)}
  grads = {"kernel": jnp.full((4, 4), 300.0, jnp.float16), "bias": jnp.full(4, 300.0, jnp.float16)}
  with np.errstate(over="ignore"):  # the point: float16 overflows here
    assert not np.isfinite(np.sum(np.square(np.asarray(grads["kernel"]))))
  grad_fn = lambda p: (grads, None)
  tx = build(name)
  out, _ = tx.update(grads, tx.init(params), params, grad_fn=grad_fn)
  for leaf, ref in zip(jax.tree.leaves(out), jax.tree.leaves(params)):
    assert leaf.dtype == ref.dtype
    assert np.all(np.isfinite(np.asarray(leaf, np.float32)))


def test_perturbation_norm_is_rho_in_float32_for_bfloat16_params(problem):
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), problem.params)
  seen = {}

  def grad_fn(p):
    seen["point"] = p
    return problem.grad_fn(jax.tree.map(lambda x: x.astype(jnp.float32), p))

  g = problem.grad_fn(problem.params)[0]
  tx = sam_jax.sam(0.05)
  tx.update(g, tx.init(params), params, grad_fn=grad_fn)
  delta = jax.tree.map(
      lambda a, b: a.astype(jnp.float32) - b.astype(jnp.float32), seen["point"], params
  )
  # bfloat16 rounding of w + ε limits the agreement, not the norm's precision.
  assert float(sam_jax.optimizers.global_norm(delta)) == pytest.approx(0.05, rel=0.05)


# ----------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize("name", METHODS)
def test_negative_radius_is_rejected_by_name(name):
  radius = RADIUS[name]
  with pytest.raises(ValueError, match=radius):
    build(name, **{radius: -0.1})


@pytest.mark.parametrize("name", METHODS)
def test_negative_radius_schedule_is_rejected(name):
  radius = RADIUS[name]
  with pytest.raises(ValueError, match="schedule"):
    build(name, **{radius: optax.constant_schedule(-0.1)})


@pytest.mark.parametrize(
    "factory,kwargs,match",
    [
        (sam_jax.asam, dict(eta=-0.01), "eta"),
        (sam_jax.crsam, dict(gamma=-0.1), "gamma"),
        (sam_jax.crsam, dict(beta=-0.1), "beta"),
        (sam_jax.sam, dict(eps=0.0), "eps"),
        (sam_jax.sam, dict(rho=float("nan")), "rho"),
        (sam_jax.sam, dict(rho=jnp.ones(3)), "scalar"),
    ],
)
def test_invalid_hyperparameters(factory, kwargs, match):
  with pytest.raises(ValueError, match=match):
    factory(**kwargs)


@pytest.mark.parametrize("name", METHODS)
def test_missing_grad_fn_is_explained(name, problem):
  tx = build(name)
  with pytest.raises(ValueError, match="grad_fn"):
    tx.update(problem.clean_grads(), tx.init(problem.params), problem.params)


def test_grad_fn_must_return_a_pair(problem):
  tx = sam_jax.sam()
  bare = lambda p: problem.grad_fn(p)[0]
  with pytest.raises(TypeError, match=r"\(grads, aux\)"):
    tx.update(problem.clean_grads(), tx.init(problem.params), problem.params, grad_fn=bare)


def test_params_are_required(problem):
  tx = sam_jax.sam()
  with pytest.raises(ValueError, match="params"):
    tx.update(problem.clean_grads(), tx.init(problem.params), None, grad_fn=problem.grad_fn)


# ----------------------------------------------------------------------------
# Composition: chains that converge to a known minimum under jit.

CURVATURE = {"kernel": np.array([[1.0, 2.0], [3.0, 0.5], [1.5, 2.5]]), "bias": np.array([1.0, 2.0])}
TARGET = {"kernel": np.array([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.0]]), "bias": np.array([2.0, -1.0])}
WEIGHT_DECAY = 1e-2


def quadratic(params):
  return 0.5 * sum(
      jnp.sum(CURVATURE[k] * (params[k] - TARGET[k]) ** 2) for k in ("kernel", "bias")
  )


def minimizer():
  """argmin of quadratic(w) + (λ/2)‖w‖²: a·(w − c) + λw = 0."""
  return {k: CURVATURE[k] * TARGET[k] / (CURVATURE[k] + WEIGHT_DECAY) for k in CURVATURE}


def chain_for(name, base, steps):
  """``name`` with a radius decaying to 0, in a chain with clipping and decay."""
  radius = RADIUS[name]
  rho0 = METHODS[name][1][radius]
  rho = optax.cosine_decay_schedule(rho0, decay_steps=steps // 2)
  if base == "sgd":
    lr = 0.05
    make_base = lambda: optax.sgd(lr, momentum=0.9)
  else:
    lr = optax.cosine_decay_schedule(0.05, steps)
    make_base = lambda: optax.adam(lr)
  if name == "wsam_decoupled":
    inner = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), make_base())
    return optax.chain(
        optax.clip_by_global_norm(10.0),
        sam_jax.wsam(rho, 0.8, base_optimizer=inner, learning_rate=lr),
    )
  return optax.chain(
      build(name, **{radius: rho}),
      optax.clip_by_global_norm(10.0),
      optax.add_decayed_weights(WEIGHT_DECAY),
      make_base(),
  )


@pytest.mark.parametrize("base", ["sgd", "adam"])
@pytest.mark.parametrize("name", METHODS)
def test_chain_converges_to_the_known_minimum(name, base):
  steps = 600
  tx = chain_for(name, base, steps)
  grad_fn = sam_jax.grad_fn_from_loss(quadratic)
  params = {k: jnp.zeros_like(jnp.asarray(v, jnp.float32)) for k, v in TARGET.items()}

  @jax.jit
  def train(params):
    def step(carry, _):
      params, state = carry
      grads = jax.grad(quadratic)(params)
      updates, state = tx.update(grads, state, params, grad_fn=grad_fn)
      return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params

  final = train(params)
  for k, expected in minimizer().items():
    np.testing.assert_allclose(np.asarray(final[k]), expected, atol=2e-3)


# ----------------------------------------------------------------------------
# optax.inject_hyperparams.


@pytest.mark.parametrize("name", METHODS)
def test_inject_hyperparams(name, problem):
  factory, kwargs = METHODS[name]
  radius = RADIUS[name]
  static = ("gamma",) if name == "esam" else ()  # the size of ESAM's subset
  injected = optax.inject_hyperparams(factory, static_args=static)(**kwargs)
  (got,) = run_updates(injected, problem, jit=True)
  (want,) = run_updates(factory(**kwargs), problem, jit=True)
  assert_same(got, want)

  # Changing the injected radius changes the update as the factory would.
  state = injected.init(problem.params)
  state.hyperparams[radius] = jnp.asarray(3 * kwargs[radius], jnp.float32)
  got, _ = jax.jit(
      lambda s: injected.update(problem.clean_grads(), s, problem.params, grad_fn=problem.grad_fn)
  )(state)
  (want,) = run_updates(factory(**{**kwargs, radius: 3 * kwargs[radius]}), problem, jit=True)
  assert_same(got, want)


def test_inject_hyperparams_passes_gsams_learning_rate_schedule(problem):
  lr = optax.linear_schedule(1.0, 0.1, 4)
  kwargs = dict(rho_max=0.2, rho_min=0.05, alpha=0.3, lr_max=1.0, lr_min=0.1)
  injected = optax.inject_hyperparams(sam_jax.gsam)(learning_rate=lr, **kwargs)
  got = run_updates(injected, problem, jit=True, steps=3)
  want = run_updates(sam_jax.gsam(learning_rate=lr, **kwargs), problem, jit=True, steps=3)
  for g, w in zip(got, want):
    assert_same(g, w)


# ----------------------------------------------------------------------------
# The reference optax implementation.


def test_same_update_as_optax_contrib_sam_opaque_mode(problem):
  rho, lr = 0.05, 0.1
  ours = optax.chain(sam_jax.sam(rho), optax.sgd(lr, momentum=0.9))
  theirs = optax.contrib.sam(
      optax.sgd(lr, momentum=0.9),
      optax.chain(optax.contrib.normalize(), optax.sgd(rho)),
      sync_period=2,
      opaque_mode=True,
  )
  grad = lambda p: problem.grad_fn(p)[0]
  trajectories = []
  for tx, grad_fn in ((ours, problem.grad_fn), (theirs, lambda p, i: grad(p))):
    params, state = problem.params, tx.init(problem.params)
    step = jax.jit(lambda p, s: tx.update(grad(p), s, p, grad_fn=grad_fn))
    seen = []
    for _ in range(5):
      updates, state = step(params, state)
      params = optax.apply_updates(params, updates)
      seen.append(params)
    trajectories.append(seen)
  for ours_p, theirs_p in zip(*trajectories):
    assert_same(ours_p, theirs_p)


# ----------------------------------------------------------------------------
# Aux and introspection.


def count_grad_fn_calls(tx, params, grad_fn, steps):
  """Runs ``steps`` jitted updates (descending); returns how many times grad_fn ran
  (counted at run time) and the final state."""
  calls = []

  def counting_grad_fn(p):
    jax.debug.callback(lambda: calls.append(1))
    return grad_fn(p)

  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(grad_fn(p)[0], s, p, grad_fn=counting_grad_fn))
  for _ in range(steps):
    updates, state = step(params, state)
    params = optax.apply_updates(params, jax.tree.map(lambda u: -0.5 * u, updates))
  jax.effects_barrier()
  return len(calls), state


@pytest.mark.parametrize("name", SOMETIMES)
def test_steps_without_sam_do_not_evaluate_grad_fn(name, problem):
  """The second pass runs (under jit, counted at run time) exactly on the SAM steps."""
  calls, state = count_grad_fn_calls(build(name, skip="cond"), problem.params, problem.grad_fn, 8)
  assert 0 < calls < 8
  assert calls == int(state.sam_steps)


@pytest.mark.parametrize("name", SOMETIMES)
def test_skipping_by_cond_or_by_select_gives_the_same_updates(name, problem):
  runs = [run_updates(optax.chain(build(name, skip=skip), optax.sgd(0.5)), problem, jit=True,
                      steps=6, apply=True)[0] for skip in ("cond", "select")]
  for got, want in zip(*runs):
    assert_same(got, want)


def conv_problem():
  """A one-convolution loss, the kind XLA:CPU runs slowly inside a cond."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, 5, 1)), jnp.float32)
  params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 1, 2)), jnp.float32)}}

  def loss(p):
    y = jax.lax.conv_general_dilated(x, p["conv"]["kernel"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.mean(jnp.tanh(y - 0.5) ** 2)

  return params, sam_jax.grad_fn_from_loss(loss)


@pytest.mark.parametrize("name", SOMETIMES)
@pytest.mark.parametrize("with_convolution", [False, True])
def test_auto_skips_by_cond_unless_a_convolution_runs_on_cpu(name, with_convolution, problem):
  """skip="auto" evaluates grad_fn on the SAM steps only (cond), except on CPU for a
  grad_fn with a convolution, where it evaluates it on every step (select)."""
  params, grad_fn = conv_problem() if with_convolution else (problem.params, problem.grad_fn)
  calls, state = count_grad_fn_calls(build(name, skip="auto"), params, grad_fn, 6)
  assert 0 < int(state.sam_steps) < 6, "both branches should be exercised"
  selects = with_convolution and jax.default_backend() == "cpu"
  assert calls == (6 if selects else int(state.sam_steps))


@pytest.mark.parametrize("name", SOMETIMES)
def test_unknown_skip_mode_is_rejected(name):
  with pytest.raises(ValueError, match="skip"):
    build(name, skip="never")


def test_update_with_aux_returns_the_perturbed_loss(problem):
  tx = optax.chain(sam_jax.sam(0.1), optax.sgd(0.1))
  _, _, aux = sam_jax.update_with_aux(
      tx, problem.clean_grads(), tx.init(problem.params), problem.params,
      grad_fn=problem.grad_fn,
  )
  g = problem.numpy_grad(problem.params_np)
  point = mp.add(problem.params_np, mp.scale(g, 0.1 / mp.norm(g)))
  loss, _ = mp.numpy_loss_and_grad(point, problem.x, problem.y)
  assert set(aux) == {"perturbed"}
  assert float(aux["perturbed"]["loss"]) == pytest.approx(loss, rel=1e-5)


def test_update_with_aux_keeps_repeated_names_apart(problem):
  tx = optax.chain(sam_jax.sam(0.1), sam_jax.sam(0.2))
  _, _, aux = sam_jax.update_with_aux(
      tx, problem.clean_grads(), tx.init(problem.params), problem.params,
      grad_fn=problem.grad_fn,
  )
  assert set(aux) == {"perturbed", "perturbed_1"}


def test_update_with_aux_is_empty_for_a_plain_chain(problem):
  tx = optax.sgd(0.1)
  _, _, aux = sam_jax.update_with_aux(
      tx, problem.clean_grads(), tx.init(problem.params), problem.params,
      grad_fn=problem.grad_fn,
  )
  assert aux == {}


def test_is_sharpness_aware(problem):
  p = problem.params
  assert not sam_jax.is_sharpness_aware(optax.chain(optax.clip(1.0), optax.adam(1e-3)).init(p))
  assert sam_jax.is_sharpness_aware(optax.chain(sam_jax.sam(), optax.sgd(0.1)).init(p))
  assert sam_jax.is_sharpness_aware(optax.inject_hyperparams(sam_jax.asam)(rho=0.5).init(p))
  assert sam_jax.is_sharpness_aware(sam_jax.stable_sam(base=sam_jax.gsam()).init(p))


# ----------------------------------------------------------------------------
# Data parallelism, emulated in one process with a named vmap axis. (The
# same checks on 4 real CPU devices, under pmap and shard_map, are in
# test_multidevice.py.)

SHARDS = 4


def sharded_problem(problem):
  xs = jnp.asarray(problem.x, jnp.float32).reshape(SHARDS, -1, problem.x.shape[1])
  ys = jnp.asarray(problem.y).reshape(SHARDS, -1)
  return xs, ys


def direction_on(tx, params, x, y, state=None):
  grad_fn = sam_jax.grad_fn_from_loss(mp.jax_loss, x, y)
  state = tx.init(params) if state is None else state
  return tx.update(grad_fn(params)[0], state, params, grad_fn=grad_fn)[0]


@pytest.mark.parametrize("name", METHODS)
def test_per_device_perturbation_is_the_mean_of_shard_directions(name, problem):
  """With axis_name, each shard perturbs with its own gradient (m-sharpness)."""
  tx = build(name)
  xs, ys = sharded_problem(problem)
  params = problem.params

  def per_device(x, y):
    grad_fn = sam_jax.grad_fn_from_loss(mp.jax_loss, x, y)
    return tx.update(grad_fn(params)[0], tx.init(params), params,
                     grad_fn=grad_fn, axis_name="devices")[0]

  got = jax.jit(jax.vmap(per_device, axis_name="devices"))(xs, ys)
  want = [direction_on(tx, params, xs[i], ys[i]) for i in range(SHARDS)]
  want_mean = jax.tree.map(lambda *xs: sum(xs) / SHARDS, *want)
  global_direction = direction_on(tx, params, jnp.asarray(problem.x, jnp.float32),
                                  jnp.asarray(problem.y))
  for i in range(SHARDS):  # every device ends with the same direction
    assert_same(jax.tree.map(lambda x: x[i], got), want_mean)
  differences = [np.max(np.abs(w - g)) for w, g in zip(leaves(want_mean), leaves(global_direction))]
  assert max(differences) > 1e-4  # and it is not the global-batch direction


@pytest.mark.parametrize("name", METHODS)
def test_synchronized_perturbation_equals_the_global_batch(name, problem):
  """Averaged grads and an averaging grad_fn, no axis_name: one device's result."""
  tx = build(name)
  xs, ys = sharded_problem(problem)
  params = problem.params

  def synchronized(x, y):
    local = sam_jax.grad_fn_from_loss(mp.jax_loss, x, y)

    def grad_fn(p):
      grads, aux = local(p)
      return jax.lax.pmean(grads, "devices"), aux

    return tx.update(grad_fn(params)[0], tx.init(params), params, grad_fn=grad_fn)[0]

  got = jax.jit(jax.vmap(synchronized, axis_name="devices"))(xs, ys)
  want = direction_on(tx, params, jnp.asarray(problem.x, jnp.float32), jnp.asarray(problem.y))
  for i in range(SHARDS):
    assert_same(jax.tree.map(lambda x: x[i], got), want)
