"""Hessian eigenvalue, ρ-sharpness and the filter-normalized direction against exact references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from sam_jax import landscape


def small_problem(seed=0):
  """A two-layer tanh network's cross-entropy on 16 points: a non-quadratic loss."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 2, 16))
  params = {"w1": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
            "b1": jnp.zeros(4), "w2": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)}

  def loss(p):
    logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], 1)[:, 0])
  return loss, params


def full_hessian_eigenvalues(loss, params):
  flat, unravel = ravel_pytree(params)
  hessian = jax.hessian(lambda v: loss(unravel(v)))(flat)
  return np.linalg.eigvalsh(np.asarray(hessian, np.float64))


def test_hvp_is_the_hessian_times_the_vector():
  loss, params = small_problem()
  flat, unravel = ravel_pytree(params)
  v = jnp.asarray(np.random.default_rng(1).normal(size=flat.shape), jnp.float32)
  hessian = jax.hessian(lambda w: loss(unravel(w)))(flat)
  got = ravel_pytree(landscape.hvp(loss, params, unravel(v)))[0]
  np.testing.assert_allclose(got, hessian @ v, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_eigenvalue_matches_eigvalsh_of_the_full_hessian(seed):
  loss, params = small_problem(seed)
  eigenvalues = full_hessian_eigenvalues(loss, params)
  dominant = eigenvalues[np.argmax(np.abs(eigenvalues))]
  eig = jax.jit(lambda p: landscape.top_eigenvalue(loss, p, jax.random.key(0),
                                                   num_iterations=200))(params)
  assert float(eig.value) == pytest.approx(dominant, rel=1e-3)
  # The vector is an eigenvector: H v = λ v.
  hv = landscape.hvp(loss, params, eig.vector)
  residual = ravel_pytree(hv)[0] - eig.value * ravel_pytree(eig.vector)[0]
  assert float(jnp.linalg.norm(residual)) < 1e-2 * abs(dominant)


def test_top_eigenvalue_of_a_quadratic_is_exact():
  matrix = jnp.diag(jnp.asarray([5.0, 2.0, -1.0, 0.5]))
  loss = lambda p: 0.5 * p["w"] @ matrix @ p["w"]
  eig = landscape.top_eigenvalue(loss, {"w": jnp.ones(4)}, jax.random.key(3), num_iterations=60)
  assert float(eig.value) == pytest.approx(5.0, rel=1e-5) and bool(eig.converged)


def test_rho_sharpness_of_a_quadratic_is_half_rho_squared_lambda_max():
  # At the minimum of ½ wᵀAw the rise within ‖ε‖ ≤ ρ is at most ½ρ²λ_max,
  # reached along the top eigenvector; ascent from w = 0 starts with a zero
  # gradient, so start slightly off the minimum.
  matrix = jnp.diag(jnp.asarray([4.0, 1.0, 0.25]))
  loss = lambda p: 0.5 * p["w"] @ matrix @ p["w"]
  w = {"w": jnp.asarray([1e-3, 1e-3, 1e-3])}
  rho = 0.1
  result = landscape.rho_sharpness(loss, w, rho, steps=50)
  exact = max(loss({"w": w["w"] + rho * d}) for d in (jnp.asarray([1.0, 0, 0]),)) - loss(w)
  assert float(result.value) == pytest.approx(float(exact), rel=2e-2)
  assert float(result.value) <= float(exact) + 1e-7
  assert float(jnp.linalg.norm(result.perturbation["w"])) <= rho * (1 + 1e-5)


def test_rho_sharpness_one_step_is_sams_perturbation():
  loss, params = small_problem()
  g = jax.grad(loss)(params)
  norm = jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(g)))
  sam_eps = jax.tree.map(lambda x: 0.05 * x / norm, g)
  result = landscape.rho_sharpness(loss, params, 0.05, steps=1)
  rise = loss(jax.tree.map(jnp.add, params, sam_eps)) - loss(params)
  assert float(result.value) == pytest.approx(max(float(rise), 0.0), rel=1e-4, abs=1e-7)


def test_rho_sharpness_rejects_a_negative_radius():
  loss, params = small_problem()
  with pytest.raises(ValueError, match="rho must be >= 0"):
    landscape.rho_sharpness(loss, params, -0.1)


def test_filter_normalized_direction_matches_each_filter_norm():
  rng = np.random.default_rng(0)
  params = {"conv": jnp.asarray(rng.normal(size=(3, 3, 2, 5)), jnp.float32),
            "bias": jnp.ones(5), "dense": jnp.asarray(rng.normal(size=(7, 4)), jnp.float32)}
  d = landscape.filter_normalized_direction(params, jax.random.key(0))
  np.testing.assert_allclose(d["bias"], 0.0)
  for name, axes in (("conv", (0, 1, 2)), ("dense", (0,))):
    np.testing.assert_allclose(jnp.linalg.norm(d[name].reshape(-1, d[name].shape[-1]), axis=0),
                               jnp.linalg.norm(params[name].reshape(-1, params[name].shape[-1]),
                                               axis=0), rtol=1e-5)


def test_loss_along_is_the_loss_at_each_step():
  loss, params = small_problem()
  d = landscape.filter_normalized_direction(params, jax.random.key(1))
  values = landscape.loss_along(loss, params, d, [-1.0, 0.0, 0.5])
  assert values[1] == pytest.approx(float(loss(params)), rel=1e-6)
  moved = jax.tree.map(lambda w, e: w + 0.5 * e, params, d)
  assert values[2] == pytest.approx(float(loss(moved)), rel=1e-5)


def test_sharpness_and_landscape_commands_on_trained_runs(tmp_path, capsys):
  import json
  import shutil

  from sam_jax import cli
  from sam_jax.train import config as config_lib
  from sam_jax.train import loop
  from tests.data.synthetic import write_medmnist_npz

  npz = str(write_medmnist_npz(tmp_path / "tiny.npz", counts=(64, 16, 16), seed=2))
  # One run is trained and copied: a second training would add about a minute
  # of compile time in CI, and the commands handle each run directory alone.
  config = config_lib.TrainConfig(dataset=npz, model="resnet10", width=0.0625, batch_size=32,
                                  eval_batch_size=32, epochs=1, progress=False, optimizer="sam",
                                  base_optimizer="sgd", learning_rate=0.05, rho=0.05)
  loop.train_and_evaluate(config, tmp_path / "sam", log=lambda m: None)
  shutil.copytree(tmp_path / "sam", tmp_path / "sgd")
  runs = [str(tmp_path / "sgd"), str(tmp_path / "sam")]
  assert cli.main(["sharpness", *runs, "--examples", "64", "--power-iterations", "4",
                   "--ascent-steps", "2"]) == 0
  measured = json.loads((tmp_path / "sam" / "sharpness.json").read_text())
  assert len(measured["power_iteration_history"]) == 4
  assert measured["rho_sharpness"] >= 0 and np.isfinite(measured["hessian_top_eigenvalue"])
  assert cli.main(["sharpness", runs[0]]) == 0  # measured already: skipped
  assert "skipped" in capsys.readouterr().out.splitlines()[-1]
  out = tmp_path / "line.png"
  assert cli.main(["landscape", *runs, "--out", str(out), "--examples", "64",
                   "--labels", "SGD", "SAM"]) == 0
  curves = json.loads(out.with_suffix(".json").read_text())
  assert set(curves["losses"]) == {"SGD", "SAM"} and out.stat().st_size > 0
  middle = len(curves["alphas"]) // 2
  assert curves["losses"]["SAM"][middle] == pytest.approx(measured["train_subset_loss"], rel=1e-4)
