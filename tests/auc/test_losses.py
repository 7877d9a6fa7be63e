"""AUC objectives: hand-derived values, float64 transcriptions, finite-difference gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax import auc
from tests.auc import reference as ref


def batch(seed=0, n=12, positives=4):
  rng = np.random.default_rng(seed)
  y = np.zeros(n, np.int32)
  y[rng.choice(n, positives, replace=False)] = 1
  return rng.uniform(0.05, 0.95, n), y


def close(a, b, rtol=1e-5, atol=1e-6):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                             rtol=rtol, atol=atol)


def finite_difference(f, x, h=1e-6):
  x = np.asarray(x, np.float64)
  grad = np.zeros_like(x)
  for i in range(x.size):
    e = np.zeros_like(x)
    e.flat[i] = h
    grad.flat[i] = (f(x + e) - f(x - e)) / (2 * h)
  return grad


# ----------------------------------------------------------------------------
# Surrogates.


@pytest.mark.parametrize("name,t,expected", [
    ("squared_hinge", 0.25, 0.5625),  # (1 − 0.25)²
    ("squared_hinge", 1.5, 0.0),
    ("squared", 1.5, 0.25),           # (1 − 1.5)²
    ("hinge", -0.5, 1.5),
    ("hinge", 2.0, 0.0),
    ("logistic", 0.0, np.log(2.0)),   # log(1 + e⁰)
    ("barrier_hinge", 0.5, 0.5),      # max(−200·1.5 + 1, max(0.5, 200·(−0.5))) = 0.5
    ("barrier_hinge", 2.0, 200.0),    # the barrier: s(t − m) = 200
])
def test_surrogates_by_hand(name, t, expected):
  assert float(auc.get_surrogate(name, 1.0)(jnp.float32(t))) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", auc.SURROGATES)
def test_surrogates_match_transcription(name):
  t = np.linspace(-2, 2, 41)
  close(auc.get_surrogate(name, 0.6)(jnp.asarray(t, jnp.float32)),
        [ref.surrogate(name, x, 0.6) for x in t], rtol=1e-5, atol=1e-5)


def test_unknown_surrogate_is_named():
  with pytest.raises(ValueError, match="unknown surrogate loss 'cubic'"):
    auc.get_surrogate("cubic")


# ----------------------------------------------------------------------------
# AUC-M.


def variables(a=0.3, b=0.1, alpha=0.4):
  return {"a": jnp.float32(a), "b": jnp.float32(b), "alpha": jnp.float32(alpha)}


def test_aucm_v2_by_hand():
  # positives 0.8, 0.6 (mean 0.7), negatives 0.2, 0.4 (mean 0.3); a=0.7, b=0.3, α=0.5:
  # E₊(h−a)² = 0.01, E₋(h−b)² = 0.01, 2α(m + 0.3 − 0.7) = 0.6, −α² = −0.25 → 0.37
  h = jnp.array([0.8, 0.2, 0.6, 0.4])
  y = jnp.array([1, 0, 1, 0])
  value = auc.aucm_loss(h, y, variables(0.7, 0.3, 0.5))
  assert float(value) == pytest.approx(0.37, rel=1e-5)


def test_aucm_v1_by_hand():
  # Same batch, p = 1/2: (1−p)·mean[(h−a)²·1pos] = 0.5·(0.01+0.01)/4 = 0.0025, same for negatives;
  # 2α(p(1−p)m + mean[p h 1neg − (1−p) h 1pos]) = 1.0·(0.25 + 0.5·(0.6 − 1.4)/4) = 0.15;
  # −p(1−p)α² = −0.0625 → 0.0925
  h = jnp.array([0.8, 0.2, 0.6, 0.4])
  y = jnp.array([1, 0, 1, 0])
  value = auc.aucm_loss(h, y, variables(0.7, 0.3, 0.5), version="v1")
  assert float(value) == pytest.approx(0.0925, rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aucm_matches_transcription(seed):
  h, y = batch(seed)
  v = variables(0.6, 0.2, 0.3)
  hj, yj = jnp.asarray(h, jnp.float32), jnp.asarray(y)
  close(auc.aucm_loss(hj, yj, v), ref.aucm_v2(h, y, 0.6, 0.2, 0.3))
  close(auc.aucm_loss(hj, yj, v, margin=0.5), ref.aucm_v2(h, y, 0.6, 0.2, 0.3, m=0.5))
  close(auc.aucm_loss(hj, yj, v, libauc_v2_negative_mean=True),
        ref.aucm_v2(h, y, 0.6, 0.2, 0.3, libauc_negative_mean=True))
  close(auc.aucm_loss(hj, yj, v, version="v1"), ref.aucm_v1(h, y, 0.6, 0.2, 0.3))
  close(auc.aucm_loss(hj, yj, v, version="v1", imratio=0.1),
        ref.aucm_v1(h, y, 0.6, 0.2, 0.3, p=0.1))


def test_aucm_mask_drops_examples():
  h, y = batch(3)
  mask = np.ones(len(h), bool)
  mask[[0, 5]] = False
  keep = mask.nonzero()[0]
  close(auc.aucm_loss(jnp.asarray(h, jnp.float32), jnp.asarray(y), variables(), mask=mask),
        ref.aucm_v2(h[keep], y[keep], 0.3, 0.1, 0.4))


def test_aucm_multilabel_is_the_mean_of_per_label_losses():
  rng = np.random.default_rng(4)
  h = rng.uniform(size=(10, 3))
  y = np.stack([np.arange(10) % 2, (np.arange(10) // 2) % 2, (np.arange(10) % 3 == 0)], 1)
  v = {"a": jnp.array([0.1, 0.5, 0.9]), "b": jnp.array([0.2, 0.3, 0.4]),
       "alpha": jnp.array([0.0, 0.5, 1.0])}
  expected = np.mean([ref.aucm_v2(h[:, k], y[:, k], float(v["a"][k]), float(v["b"][k]),
                                  float(v["alpha"][k])) for k in range(3)])
  close(auc.aucm_loss(jnp.asarray(h, jnp.float32), jnp.asarray(y), v), expected)
  assert auc.aucm_variables(3)["a"].shape == (3,)


def test_aucm_at_its_optimum_equals_the_closed_form():
  h, y = batch(5, n=20, positives=6)
  hj, yj = jnp.asarray(h, jnp.float32), jnp.asarray(y)
  pos, neg = h[y == 1], h[y == 0]
  gap = 1.0 + neg.mean() - pos.mean()
  closed_form = pos.var() + neg.var() + max(gap, 0.0) ** 2
  # Minimize over (a, b) and maximize over α ≥ 0 numerically, by projected gradient steps.
  v = {k: jnp.float32(0.0) for k in ("a", "b", "alpha")}
  grad = jax.jit(jax.grad(lambda v: auc.aucm_loss(hj, yj, v)))
  for _ in range(2000):
    g = grad(v)
    v = {"a": v["a"] - 0.2 * g["a"], "b": v["b"] - 0.2 * g["b"],
         "alpha": jnp.maximum(v["alpha"] + 0.2 * g["alpha"], 0.0)}
  assert float(v["a"]) == pytest.approx(pos.mean(), abs=1e-4)
  assert float(v["b"]) == pytest.approx(neg.mean(), abs=1e-4)
  assert float(v["alpha"]) == pytest.approx(max(gap, 0.0), abs=1e-4)
  assert float(auc.aucm_loss(hj, yj, v)) == pytest.approx(closed_form, rel=1e-4)


def test_aucm_prefers_ranked_scores():
  y = jnp.array([1, 1, 1, 0, 0, 0, 0, 0])
  ranked = jnp.array([0.9, 0.8, 0.85, 0.1, 0.2, 0.15, 0.05, 0.1])
  reversed_ = 1.0 - ranked
  opt = lambda h: {"a": jnp.mean(h[:3]), "b": jnp.mean(h[3:]),
                   "alpha": jnp.maximum(1 + jnp.mean(h[3:]) - jnp.mean(h[:3]), 0)}
  assert auc.aucm_loss(ranked, y, opt(ranked)) < auc.aucm_loss(reversed_, y, opt(reversed_))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_aucm_gradients_match_finite_differences(version):
  h, y = batch(6)
  point = np.concatenate([h, [0.4, 0.2, 0.3]])
  numpy_value = {"v1": ref.aucm_v1, "v2": ref.aucm_v2}[version]
  numeric = finite_difference(lambda z: numpy_value(z[:-3], y, *z[-3:]), point)
  with jax.enable_x64(True):
    def f(z):
      return auc.aucm_loss(z[:-3], jnp.asarray(y), {"a": z[-3], "b": z[-2], "alpha": z[-1]},
                           version=version)
    analytic = jax.grad(f)(jnp.asarray(point, jnp.float64))
  close(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_aucm_shape_errors_are_named():
  with pytest.raises(ValueError, match="do not match labels"):
    auc.aucm_loss(jnp.zeros(4), jnp.zeros((4, 2)), variables())
  with pytest.raises(ValueError, match="version must be one of"):
    auc.aucm_loss(jnp.zeros(4), jnp.zeros(4), variables(), version="v3")


# ----------------------------------------------------------------------------
# Losses with per-example state.


def test_ap_loss_by_hand():
  # Two examples: positive h=0.75 (index 1), negative h=0.5 (index 0); γ = 1 takes the batch estimate.
  # L₁₁ = ℓ(0) = 1, L₁₀ = ℓ(0.25) = 0.5625; u_all = (1 + 0.5625)/2 = 0.78125, u_pos = 1/2 = 0.5.
  # p₁₁ = (0.5 − 0.78125)/0.78125², p₁₀ = 0.5/0.78125²; loss = (p₁₁·1 + p₁₀·0.5625)/2.
  state = auc.ap_state(3)
  loss, new = auc.ap_loss(jnp.array([0.75, 0.5]), jnp.array([1, 0]), jnp.array([1, 0]), state,
                          gamma=1.0)
  u = 0.78125
  expected = ((0.5 - u) / u ** 2 * 1.0 + 0.5 / u ** 2 * 0.5625) / 2
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  close(new.u_all, [0.0, u, 0.0])
  close(new.u_pos, [0.0, 0.5, 0.0])


@pytest.mark.parametrize("surrogate", ["squared_hinge", "logistic"])
def test_ap_loss_and_buffers_match_transcription_over_steps(surrogate):
  rng = np.random.default_rng(7)
  n_data = 30
  labels = (np.arange(n_data) % 3 == 0).astype(np.int32)
  state = auc.ap_state(n_data)
  u_all, u_pos = np.zeros(n_data), np.zeros(n_data)
  for _ in range(4):
    index = rng.choice(n_data, 10, replace=False)
    h = rng.uniform(size=10)
    loss, state = auc.ap_loss(jnp.asarray(h, jnp.float32), jnp.asarray(labels[index]),
                              jnp.asarray(index), state, gamma=0.7, margin=0.8,
                              surrogate=surrogate)
    expected, u_all, u_pos = ref.ap_step(h, labels[index], index, u_all, u_pos, gamma=0.7, m=0.8,
                                         surr=surrogate)
    close(loss, expected, rtol=1e-4, atol=1e-5)
    close(state.u_all, u_all, rtol=1e-5)
    close(state.u_pos, u_pos, rtol=1e-5)


def test_pauc_cvar_matches_transcription_over_steps():
  rng = np.random.default_rng(8)
  n_data = 24
  labels = (np.arange(n_data) % 4 == 0).astype(np.int32)
  for num_positives in (None, 6):
    s = auc.pauc_cvar_state(n_data)
    s_ref = np.zeros(n_data)
    for _ in range(4):
      index = rng.choice(n_data, 12, replace=False)
      h = rng.uniform(size=12)
      loss, s = auc.pauc_cvar_loss(jnp.asarray(h, jnp.float32), jnp.asarray(labels[index]),
                                   jnp.asarray(index), s, beta=0.3, eta=0.5,
                                   num_positives=num_positives)
      expected, s_ref = ref.pauc_cvar_step(h, labels[index], index, s_ref, beta=0.3, eta=0.5,
                                           num_positives=num_positives)
      close(loss, expected, rtol=1e-5)
      close(s, s_ref, rtol=1e-5)


def test_pauc_cvar_by_hand():
  # One positive 0.5 vs negatives 0.4 and 0.9: L = (1 − 0.1)² = 0.81 and (1 + 0.4)² = 1.96.
  # s = 0: both pairs count; loss = (0.81 + 1.96)/2/β with β = 0.5 → 2.77;
  # s ← 0 − 0.1·(1 − 2/(0.5·2)) = 0.1.
  loss, s = auc.pauc_cvar_loss(jnp.array([0.5, 0.4, 0.9]), jnp.array([1, 0, 0]),
                               jnp.array([0, 1, 2]), auc.pauc_cvar_state(3), beta=0.5, eta=0.1)
  assert float(loss) == pytest.approx(2.77, rel=1e-5)
  close(s, [0.1, 0.0, 0.0])


def test_pauc_kl_and_two_way_match_transcription():
  rng = np.random.default_rng(9)
  n_data = 20
  labels = (np.arange(n_data) % 3 == 0).astype(np.int32)
  u = auc.pauc_kl_state(n_data)
  u_ref = np.zeros(n_data)
  two = auc.tpauc_kl_state(n_data)
  u2_ref, w_ref = np.zeros(n_data), 0.0
  for _ in range(4):
    index = rng.choice(n_data, 10, replace=False)
    h = rng.uniform(size=10)
    hj, yj, ij = jnp.asarray(h, jnp.float32), jnp.asarray(labels[index]), jnp.asarray(index)
    loss, u = auc.pauc_kl_loss(hj, yj, ij, u, gamma=0.6, lmbda=0.5)
    expected, u_ref = ref.pauc_kl_step(h, labels[index], index, u_ref, gamma=0.6, lmbda=0.5)
    close(loss, expected, rtol=1e-5)
    close(u, u_ref, rtol=1e-5)
    loss2, two = auc.tpauc_kl_loss(hj, yj, ij, two, tau=2.0, lmbda=0.5, gammas=(0.6, 0.8))
    expected2, u2_ref, w_ref = ref.tpauc_kl_step(h, labels[index], index, u2_ref, w_ref,
                                                 tau=2.0, lmbda=0.5, gammas=(0.6, 0.8))
    close(loss2, expected2, rtol=1e-5)
    close(two.u, u2_ref, rtol=1e-5)
    close(two.w, w_ref, rtol=1e-5)


@pytest.mark.parametrize("which", ["ap", "pauc_cvar", "pauc_kl", "tpauc_kl"])
def test_indexed_losses_have_finite_difference_gradients(which):
  """The gradient in the scores, with the buffers' weights held fixed (as the method defines)."""
  h, y = batch(10, n=8, positives=3)
  index = np.arange(8)
  fns = {
      "ap": lambda s, st: auc.ap_loss(s, y, index, st, gamma=0.5),
      "pauc_cvar": lambda s, st: auc.pauc_cvar_loss(s, y, index, st, beta=0.5),
      "pauc_kl": lambda s, st: auc.pauc_kl_loss(s, y, index, st, gamma=0.5),
      "tpauc_kl": lambda s, st: auc.tpauc_kl_loss(s, y, index, st, gammas=(0.5, 0.5)),
  }
  states = {"ap": auc.ap_state, "pauc_cvar": auc.pauc_cvar_state, "pauc_kl": auc.pauc_kl_state,
            "tpauc_kl": auc.tpauc_kl_state}
  with jax.enable_x64(True):
    state = jax.tree.map(lambda x: x.astype(jnp.float64) + 0.5, states[which](8))
    analytic = np.asarray(jax.grad(lambda s: fns[which](s, state)[0])(jnp.asarray(h, jnp.float64)))
  # The weights p_ij carry no gradient: differentiate Σ p_ij L_ij with p_ij frozen at h.
  numeric = finite_difference(lambda z: _weighted_pairs(which, h, y, z, state), h)
  close(analytic, numeric, rtol=1e-5, atol=1e-7)


def _weighted_pairs(which, h0, y, h, state):
  m = 1.0
  ell = lambda t: max(m - t, 0.0) ** 2
  n = len(h)
  pos = [i for i in range(n) if y[i] == 1]
  neg = [j for j in range(n) if y[j] == 0]
  total = 0.0
  if which == "ap":
    u_all0, u_pos0 = np.asarray(state.u_all), np.asarray(state.u_pos)
    for i in pos:
      l0 = [ell(h0[i] - h0[j]) for j in range(n)]
      ua = 0.5 * u_all0[i] + 0.5 * np.mean(l0)
      up = 0.5 * u_pos0[i] + 0.5 * np.mean([l * (y[j] == 1) for j, l in enumerate(l0)])
      for j in range(n):
        total += (up - ua * (y[j] == 1)) / ua ** 2 * ell(h[i] - h[j])
    return total / (len(pos) * n)
  if which == "pauc_cvar":
    s0 = np.asarray(state)
    for i in pos:
      for j in neg:
        if ell(h0[i] - h0[j]) > s0[i]:
          total += ell(h[i] - h[j])
    return total / (len(pos) * len(neg)) / 0.5
  if which == "pauc_kl":
    u0 = np.asarray(state)
    for i in pos:
      e0 = [np.exp(ell(h0[i] - h0[j])) for j in neg]
      u = 0.5 * u0[i] + 0.5 * np.mean(e0)
      for e, j in zip(e0, neg):
        total += e / u * ell(h[i] - h[j])
    return total / (len(pos) * len(neg))
  u0, w0 = np.asarray(state.u), float(state.w)
  us = {}
  for i in pos:
    us[i] = 0.5 * u0[i] + 0.5 * np.mean([np.exp(ell(h0[i] - h0[j])) for j in neg])
  w = 0.5 * w0 + 0.5 * np.mean([us[i] for i in pos])
  for i in pos:
    for j in neg:
      total += np.exp(ell(h0[i] - h0[j])) / w * ell(h[i] - h[j])
  return total / (len(pos) * len(neg))


def test_losses_need_a_binary_task():
  with pytest.raises(ValueError, match="binary task"):
    auc.ap_loss(jnp.zeros((4, 2)), jnp.zeros((4, 2)), jnp.arange(4), auc.ap_state(4))


# ----------------------------------------------------------------------------
# Imbalance baselines.


def test_focal_with_gamma_zero_is_cross_entropy_and_weighted_ce_by_hand():
  rng = np.random.default_rng(11)
  logits = rng.normal(size=(6, 3))
  labels = np.array([0, 1, 2, 2, 1, 0])
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  ce = -log_p[np.arange(6), labels]
  lj, yj = jnp.asarray(logits, jnp.float32), jnp.asarray(labels)
  close(auc.focal_loss(lj, yj, gamma=0.0), ce.mean())
  p_true = np.exp(log_p[np.arange(6), labels])
  close(auc.focal_loss(lj, yj, gamma=2.0), np.mean((1 - p_true) ** 2 * ce))
  w = np.array([1.0, 2.0, 0.5])
  close(auc.weighted_cross_entropy(lj, yj, w), np.sum(w[labels] * ce) / np.sum(w[labels]))
  close(auc.balanced_class_weights(np.array([0, 0, 0, 1]), 2), [4 / 6, 2.0])
  with pytest.raises(ValueError, match=r"classes \[2\] have no training example"):
    auc.balanced_class_weights(np.array([0, 1]), 3)
