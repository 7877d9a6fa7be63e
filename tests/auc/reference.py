"""Float64 NumPy transcriptions of the documented LibAUC formulas (papers-and-baselines §4).

Written from the equations, loop by loop where the equations are per pair,
so that they share nothing with the vectorized JAX code under test.
"""

from __future__ import annotations

import numpy as np


def surrogate(name, t, margin=1.0, scale=None):
  if name == "squared_hinge":
    return max(margin - t, 0.0) ** 2
  if name == "squared":
    return (margin - t) ** 2
  if name == "hinge":
    return max(margin - t, 0.0)
  if name == "logistic":
    s = margin if scale is None else scale
    return float(np.log1p(np.exp(-s * t)))
  s = 200.0 if scale is None else scale
  return max(-s * (margin + t) + margin, max(margin - t, s * (t - margin)))


def aucm_v2(h, y, a, b, alpha, m=1.0, libauc_negative_mean=False):
  pos = [hi for hi, yi in zip(h, y) if yi == 1]
  neg = [hi for hi, yi in zip(h, y) if yi == 0]
  mean_pos, mean_neg = np.mean(pos), np.mean(neg)
  if libauc_negative_mean:
    mean_neg = np.sum(neg) / len(h)
  return (np.mean([(p - a) ** 2 for p in pos]) + np.mean([(q - b) ** 2 for q in neg])
          + 2 * alpha * (m + mean_neg - mean_pos) - alpha ** 2)


def aucm_v1(h, y, a, b, alpha, m=1.0, p=None):
  n = len(h)
  p = np.mean(y) if p is None else p
  total = 0.0
  for hi, yi in zip(h, y):
    total += (1 - p) * (hi - a) ** 2 * (yi == 1) / n + p * (hi - b) ** 2 * (yi == 0) / n
    total += 2 * alpha * (p * hi * (yi == 0) - (1 - p) * hi * (yi == 1)) / n
  return total + 2 * alpha * p * (1 - p) * m - p * (1 - p) * alpha ** 2


def ap_step(h, y, index, u_all, u_pos, gamma=0.9, m=1.0, surr="squared_hinge"):
  """One AP loss evaluation; returns (loss, u_all, u_pos) (buffers copied)."""
  u_all, u_pos = u_all.copy(), u_pos.copy()
  n = len(h)
  pos_rows = [i for i in range(n) if y[i] == 1]
  total = 0.0
  for i in pos_rows:
    losses = [surrogate(surr, h[i] - h[j], m) for j in range(n)]
    k = index[i]
    u_all[k] = (1 - gamma) * u_all[k] + gamma * np.mean(losses)
    u_pos[k] = (1 - gamma) * u_pos[k] + gamma * np.mean([l * (y[j] == 1) for j, l in enumerate(losses)])
    for j in range(n):
      p = (u_pos[k] - u_all[k] * (y[j] == 1)) / u_all[k] ** 2
      total += p * losses[j]
  return total / (len(pos_rows) * n), u_all, u_pos


def pauc_cvar_step(h, y, index, s, beta=0.2, eta=0.1, m=1.0, num_positives=None,
                   surr="squared_hinge"):
  s = s.copy()
  pos = [i for i in range(len(h)) if y[i] == 1]
  neg = [j for j in range(len(h)) if y[j] == 0]
  step = eta if num_positives is None else eta / num_positives
  total = 0.0
  for i in pos:
    old = s[index[i]]
    count = 0
    for j in neg:
      l = surrogate(surr, h[i] - h[j], m)
      if l > old:
        count += 1
        total += l
    s[index[i]] = old - step * (1 - count / (beta * len(neg)))
  return total / (len(pos) * len(neg)) / beta, s


def pauc_kl_step(h, y, index, u, gamma=0.9, lmbda=1.0, m=1.0, surr="squared_hinge"):
  u = u.copy()
  pos = [i for i in range(len(h)) if y[i] == 1]
  neg = [j for j in range(len(h)) if y[j] == 0]
  total = 0.0
  for i in pos:
    losses = [surrogate(surr, h[i] - h[j], m) for j in neg]
    k = index[i]
    u[k] = (1 - gamma) * u[k] + gamma * np.mean([np.exp(l / lmbda) for l in losses])
    total += sum(np.exp(l / lmbda) / u[k] * l for l in losses)
  return total / (len(pos) * len(neg)), u


def tpauc_kl_step(h, y, index, u, w, tau=1.0, lmbda=1.0, gammas=(0.9, 0.9), m=1.0,
                  surr="squared_hinge"):
  u = u.copy()
  pos = [i for i in range(len(h)) if y[i] == 1]
  neg = [j for j in range(len(h)) if y[j] == 0]
  exp_losses = {}
  for i in pos:
    losses = [surrogate(surr, h[i] - h[j], m) for j in neg]
    exp_losses[i] = losses
    k = index[i]
    u[k] = (1 - gammas[0]) * u[k] + gammas[0] * np.mean([np.exp(l / lmbda) for l in losses])
  w = (1 - gammas[1]) * w + gammas[1] * np.mean([u[index[i]] ** (lmbda / tau) for i in pos])
  total = 0.0
  for i in pos:
    for l in exp_losses[i]:
      total += u[index[i]] ** (lmbda / tau - 1) * np.exp(l / lmbda) / w * l
  return total / (len(pos) * len(neg)), u, w


def dam_steps(params, grads_per_step, *, lr, mode="sgd", clip=1.0, wd=0.0, epoch_decay=0.0,
              momentum=0.0, convention="heavy_ball", nesterov=False, dampening=0.0,
              b1=0.9, b2=0.999, eps=1e-8, resets=(), reference=None, margin=None):
  """LibAUC's optimizer step, over several steps; dict of float64 arrays in and out.

  ``lr`` is a function of the step count. With ``margin`` the dict's
  ``alpha`` is PESG's dual variable (closed-form ascent at the new a, b).
  Returns the list of params after each step.
  """
  params = {k: np.array(v, np.float64) for k, v in params.items()}
  ref = {k: (np.array(v, np.float64) if reference is None else np.array(reference[k], np.float64))
         for k, v in params.items()}
  acc = {k: np.zeros_like(v) for k, v in params.items()}
  T = 0
  buf, m1, m2 = {}, {}, {}
  history = []
  for t, grads in enumerate(grads_per_step):
    eta = lr(t)
    if t in resets and T > 0:
      ref = {k: acc[k] / T for k in params}
      acc = {k: np.zeros_like(v) for k, v in params.items()}
      T = 0
    for k in params:
      if margin is not None and k == "alpha":
        continue
      d = np.clip(grads[k], -clip, clip) + epoch_decay * (params[k] - ref[k]) + wd * params[k]
      if mode == "sgd":
        if momentum:
          if k not in buf:
            buf[k] = d.copy()
          elif convention == "libauc":
            buf[k] = (1 - momentum) * buf[k] + momentum * d
          else:
            buf[k] = momentum * buf[k] + (1 - dampening) * d
          d = d + momentum * buf[k] if nesterov else buf[k]
        params[k] = params[k] - eta * d
      else:
        m1[k] = b1 * m1.get(k, 0) + (1 - b1) * d
        m2[k] = b2 * m2.get(k, 0) + (1 - b2) * d * d
        mhat = m1[k] / (1 - b1 ** (t + 1))
        vhat = m2[k] / (1 - b2 ** (t + 1))
        params[k] = params[k] - eta * mhat / (np.sqrt(vhat) + eps)
    if margin is not None:
      params["alpha"] = np.clip(
          params["alpha"] + eta * (2 * (margin + params["b"] - params["a"]) - 2 * params["alpha"]),
          0, 999)
    if epoch_decay > 0:
      for k in params:
        acc[k] = acc[k] + params[k]
      T += 1
    history.append({k: v.copy() for k, v in params.items()})
  return history
