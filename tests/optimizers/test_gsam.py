"""GSAM against a float64 NumPy transcription of Algorithm 1 (and big_vision's variant)."""

import numpy as np
import optax
import pytest

import sam_jax
from sam_jax.optimizers.gsam import gsam_rho
from tests.optimizers import mlp_problem as mp
from tests.optimizers.conftest import run_updates
from tests.optimizers.test_sam import sam_reference


def gsam_reference(params, grad, rho, alpha, minimize_fp=True, adaptive=False, eps=1e-12,
                   adaptive_perturbation=False):
  g = grad(params)
  if adaptive:  # sam's element-wise ellipsoid, rho w^2 g / ||w g||
    wg = {k: np.abs(params[k]) * g[k] for k in g}
    e = {k: rho * params[k] ** 2 * g[k] / (mp.norm(wg) + eps) for k in g}
  else:
    e = mp.scale(g, rho / (mp.norm(g) + eps))
  if adaptive_perturbation:  # big_vision: the ball's eps scaled by |w|
    e = {k: e[k] * np.abs(params[k]) for k in e}
  gp = grad(mp.add(params, e))
  if minimize_fp:
    gp_hat = mp.scale(gp, 1.0 / (mp.norm(gp) + eps))
    g_perp = mp.add(g, gp_hat, -mp.vdot(g, gp_hat))
    return mp.add(gp, g_perp, -alpha)
  g_hat = mp.scale(g, 1.0 / (mp.norm(g) + eps))
  residual = mp.add(gp, g_hat, -mp.vdot(gp, g_hat))
  return mp.add(g, residual, alpha)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("minimize_fp", [True, False])
@pytest.mark.parametrize("form", ["ball", "adaptive", "adaptive_perturbation"])
def test_gsam_matches_reference(problem, jit, minimize_fp, form):
  rho = 0.1 if form == "ball" else 0.5
  flags = {form: True} if form != "ball" else {}
  tx = sam_jax.gsam(rho, alpha=0.4, minimize_fp=minimize_fp, **flags)
  (direction,) = run_updates(tx, problem, jit=jit)
  expected = gsam_reference(problem.params_np, problem.numpy_grad, rho, 0.4, minimize_fp, **flags)
  mp.assert_trees_close(direction, expected)


def test_adaptive_means_what_it_means_in_sam(problem):
  """alpha = 0 with a constant rho: adaptive GSAM is adaptive SAM."""
  gsam = sam_jax.gsam(0.5, 0.5, alpha=0.0, adaptive=True)
  sam = sam_jax.sam(0.5, adaptive=True)
  (a,), (b,) = run_updates(gsam, problem, jit=True), run_updates(sam, problem, jit=True)
  mp.assert_trees_close(a, mp.to_flat(b))
  with pytest.raises(ValueError, match="choose one"):
    sam_jax.gsam(adaptive=True, adaptive_perturbation=True)


def test_alpha_zero_and_constant_rho_is_sam(problem):
  (gsam_dir,) = run_updates(sam_jax.gsam(0.05, 0.05, alpha=0.0,
                                         learning_rate=0.1, lr_max=0.1, lr_min=0.1),
                            problem, jit=True)
  mp.assert_trees_close(gsam_dir, sam_reference(problem.params_np, problem.numpy_grad, 0.05))


def test_rho_follows_the_learning_rate_and_is_clamped_in_warmup(problem):
  lr = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=2, decay_steps=6, end_value=0.1)
  tx = sam_jax.gsam(0.2, 0.05, alpha=0.3, learning_rate=lr, lr_max=1.0, lr_min=0.1)
  outputs = run_updates(tx, problem, jit=True, steps=6)
  for step, direction in enumerate(outputs):
    lr_t = float(lr(step))
    rho_t = np.clip(0.05 + 0.15 * (lr_t - 0.1) / 0.9, 0.05, 0.2)
    expected = gsam_reference(problem.params_np, problem.numpy_grad, rho_t, 0.3)
    mp.assert_trees_close(direction, expected)


def test_gsam_rho_formula():
  # lr in warm-up below lr_min: clamped to rho_min, never negative.
  assert float(gsam_rho(0.0, 0.2, 0.05, 1.0, 0.1)) == pytest.approx(0.05)
  assert float(gsam_rho(1.0, 0.2, 0.05, 1.0, 0.1)) == pytest.approx(0.2)
  assert float(gsam_rho(0.55, 0.2, 0.05, 1.0, 0.1)) == pytest.approx(0.125)
  assert float(gsam_rho(0.3, 0.2, 0.05, 0.3, 0.3)) == pytest.approx(0.2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(rho_max=0.04, rho_min=0.02), "learning_rate"),
        (dict(rho_max=0.02, rho_min=0.04, learning_rate=0.1, lr_max=0.1, lr_min=0.0), "rho_min"),
        (dict(learning_rate=0.1), "lr_max"),
        (dict(learning_rate=0.1, lr_max=0.01, lr_min=0.1), "lr_min"),
        (dict(alpha=-0.1), "alpha"),
        (dict(rho_max=-1.0), "rho_max"),
    ],
)
def test_invalid_configurations(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sam_jax.gsam(**kwargs)
