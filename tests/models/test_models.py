"""Model shapes, reference parameter counts, BatchNorm modes, adapters."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax import models
from sam_jax.models.swin import shifted_window_mask, window_partition
from sam_jax.models.vgg import adaptive_avg_pool


def abstract_variables(model, shape):
  """Variables' shapes via jax.eval_shape: no compute, so full models are cheap."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def param_count(model, shape):
  return sum(x.size for x in jax.tree.leaves(abstract_variables(model, shape)["params"]))


def output_shape(model, shape):
  variables = abstract_variables(model, shape)
  return jax.eval_shape(lambda v: model.apply(v, jnp.zeros(shape), train=False), variables).shape


# (name, constructor kwargs, input shape): every model at its intended sizes.
INTENDED_INPUTS = [
    ("resnet10", {}, (2, 28, 28, 1)),
    ("resnet10_3d", {}, (2, 28, 28, 28, 1)),
    ("resnet18", {}, (2, 28, 28, 1)),
    ("resnet18", {}, (2, 64, 64, 3)),
    ("resnet18", {"stem": "imagenet"}, (2, 224, 224, 3)),
    ("resnet34", {}, (2, 28, 28, 3)),
    ("resnet50", {}, (2, 28, 28, 1)),
    ("resnet50", {"stem": "imagenet"}, (2, 224, 224, 3)),
    ("resnet18_3d", {}, (2, 28, 28, 28, 1)),
    ("resnet18_3d", {}, (2, 64, 64, 64, 1)),
    ("resnet50_3d", {}, (2, 28, 28, 28, 1)),
    ("resnet50_3d", {}, (2, 64, 64, 64, 1)),
    ("vgg16_bn", {}, (2, 224, 224, 3)),
    ("vgg16_bn", {}, (2, 28, 28, 1)),
    ("vgg16_bn", {"head": "global_pool"}, (2, 28, 28, 3)),
    ("vit_ti", {"patch_size": 4}, (2, 28, 28, 1)),
    ("vit_s", {"patch_size": 4}, (2, 28, 28, 3)),
    ("vit_b", {"patch_size": 16}, (2, 224, 224, 3)),
    ("vit_s", {"patch_size": 16}, (2, 224, 224, 3)),
    ("swin_t", {}, (2, 224, 224, 3)),
]


@pytest.mark.parametrize("name,kwargs,shape", INTENDED_INPUTS,
                         ids=[f"{n}-{s[1]}px" for n, _, s in INTENDED_INPUTS])
def test_output_shape(name, kwargs, shape):
  model = models.create_model(name, num_classes=7, **kwargs)
  assert output_shape(model, shape) == (2, 7)


# Parameter counts at 224 px and 1000 classes: torchvision for the CNNs
# (resnet18, resnet50, vgg16_bn), timm for the transformers
# (vit_base_patch16_224, swin_tiny_patch4_window7_224). All match exactly:
# Flax's BatchNorm/LayerNorm scale and bias are torch's weight and bias, the
# running statistics are not parameters in either, and the layouts are the
# same (bias-free convolutions in ResNet, biased ones in VGG, fused qkv).
REFERENCE_COUNTS = [
    ("resnet10", {"stem": "imagenet"}, 5_418_792),  # torchvision ResNet(BasicBlock, [1, 1, 1, 1])
    ("resnet18", {"stem": "imagenet"}, 11_689_512),
    ("resnet50", {"stem": "imagenet"}, 25_557_032),
    ("vgg16_bn", {}, 138_365_992),
    ("vit_b", {"patch_size": 16}, 86_567_656),
    ("swin_t", {}, 28_288_354),
]


@pytest.mark.parametrize("name,kwargs,count", REFERENCE_COUNTS, ids=[c[0] for c in REFERENCE_COUNTS])
def test_reference_parameter_counts(name, kwargs, count):
  model = models.create_model(name, num_classes=1000, **kwargs)
  assert param_count(model, (1, 224, 224, 3)) == count


def test_width_multiplier_narrows_every_stage():
  full = param_count(models.create_model("resnet18", 2), (1, 28, 28, 1))
  quarter = param_count(models.create_model("resnet18", 2, width=0.25), (1, 28, 28, 1))
  assert 11_000_000 < full < 11_300_000
  assert quarter < full / 12  # ~ width² for the convolutions


def small_resnet():
  return models.create_model("resnet18", num_classes=3, width=0.125)


def test_batchnorm_statistics_change_in_train_mode_only():
  model = small_resnet()
  x = jax.random.normal(jax.random.key(1), (8, 28, 28, 1)) * 3.0 + 1.0
  apply_fn, params, state = models.from_linen(model, jax.random.key(0), x[:1])
  logits, new_state = apply_fn(params, state, x, train=True)
  changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new_state))]
  assert all(changed), "every running mean/var moves after a train-mode batch"
  eval_logits, eval_state = apply_fn(params, state, x, train=False)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(eval_state)):
    np.testing.assert_array_equal(a, b)
  # Train mode normalizes with batch statistics, eval mode with the running ones.
  assert not np.allclose(logits, eval_logits)
  again, _ = apply_fn(params, state, x, train=False)
  np.testing.assert_array_equal(eval_logits, again)


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
  x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
  f32 = models.create_model("resnet18", 3, width=0.125)
  bf16 = models.create_model("resnet18", 3, width=0.125, dtype=jnp.bfloat16)
  apply32, params, state = models.from_linen(f32, jax.random.key(0), x[:1])
  apply16, params16, _ = models.from_linen(bf16, jax.random.key(0), x[:1])
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params16))
  out32, _ = apply32(params, state, x, train=False)
  out16, _ = apply16(params, state, x, train=False)
  assert out16.dtype == jnp.float32
  jaxpr = str(jax.make_jaxpr(lambda p: apply16(p, state, x, train=False))(params))
  assert "bf16" in jaxpr
  np.testing.assert_allclose(out16, out32, rtol=0.1, atol=0.1)
  assert not np.array_equal(out16, out32)


def test_dimensionality_mismatch_is_explained():
  model = models.create_model("resnet18", 2)
  with pytest.raises(ValueError, match=r"expects inputs \(N, H, W, C\)"):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 8, 1)))
  model3d = models.create_model("resnet18_3d", 2)
  with pytest.raises(ValueError, match=r"\(N, D, H, W, C\)"):
    model3d.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


def test_vit_patch_size_must_divide_the_image():
  with pytest.raises(ValueError, match="patch_size"):
    models.create_model("vit_ti", 2, patch_size=16).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


def test_unknown_model_lists_the_known_ones():
  with pytest.raises(models.UnknownModelError, match="resnet18.*swin_t|known models"):
    models.create_model("resnet19", 2)


def test_registry_records_input_dimensionality():
  assert models.model_entry("resnet18_3d").spatial_dims == 3
  assert all(models.model_entry(n).spatial_dims == 2 for n in ("resnet18", "vit_s", "swin_t", "vgg16_bn"))


# ----------------------------------------------------------------------------
# Pieces checked against independent formulations.


def test_shifted_window_mask_blocks_exactly_the_wrapped_pairs():
  """Two tokens in a shifted window may attend iff no image border lies between them.

  After rolling the map by -shift, a window holds rows (r0 + shift + i) mod h
  of the original image; a pair straddles the wrap when one row index passed
  h and the other did not (likewise for columns).
  """
  h = w = 8
  window, shift = 4, 2
  mask = shifted_window_mask(h, w, window, shift)
  assert mask.shape == ((h // window) * (w // window), window * window, window * window)
  for wi, (r0, c0) in enumerate(itertools.product(range(0, h, window), range(0, w, window))):
    tokens = [(r0 + i, c0 + j) for i in range(window) for j in range(window)]
    for a, (ra, ca) in enumerate(tokens):
      for b, (rb, cb) in enumerate(tokens):
        wrapped_rows = (ra + shift >= h) != (rb + shift >= h)
        wrapped_cols = (ca + shift >= w) != (cb + shift >= w)
        expected = -100.0 if (wrapped_rows or wrapped_cols) else 0.0
        assert mask[wi, a, b] == expected


def test_window_partition_round_trip():
  from sam_jax.models.swin import window_reverse
  x = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
  windows = window_partition(x, 4)
  assert windows.shape == (8, 16, 3)
  np.testing.assert_array_equal(window_reverse(windows, 4, 2, 8, 8), x)
  # The first window is the top-left 4x4 block in row-major order.
  np.testing.assert_array_equal(windows[0], x[0, :4, :4].reshape(16, 3))


@pytest.mark.parametrize("size", [1, 3, 7, 14, 10])
def test_adaptive_avg_pool_matches_pytorch_bins(size):
  x = np.random.default_rng(0).normal(size=(2, size, size, 3))
  out = np.asarray(adaptive_avg_pool(jnp.asarray(x), (7, 7)))
  expected = np.zeros((2, 7, 7, 3))
  for i in range(7):
    for j in range(7):
      r0, r1 = (i * size) // 7, int(np.ceil((i + 1) * size / 7))
      c0, c1 = (j * size) // 7, int(np.ceil((j + 1) * size / 7))
      expected[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# NNX models through the same (apply_fn, params, model_state) triple.


def make_nnx_model():
  from flax import nnx

  class SmallNet(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
      self.bn = nnx.BatchNorm(8, rngs=rngs)
      self.drop = nnx.Dropout(0.5, rngs=rngs)
      self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
      x = nnx.relu(self.bn(self.conv(x)))
      return self.head(self.drop(x.mean(axis=(1, 2))))

  return SmallNet(nnx.Rngs(0, dropout=1))


def test_nnx_module_gives_the_same_triple_as_linen():
  x = jax.random.normal(jax.random.key(2), (6, 10, 10, 1))
  apply_fn, params, state = models.from_nnx(make_nnx_model())
  linen_apply, linen_params, linen_state = models.from_linen(small_resnet(), jax.random.key(0), x[:1])
  for fn, p, s in ((apply_fn, params, state), (linen_apply, linen_params, linen_state)):
    logits, new_state = fn(p, s, x, train=True, rng=jax.random.key(5))
    assert logits.shape == (6, 3)
    assert jax.tree.structure(new_state) == jax.tree.structure(s)

  # Gradients flow through apply_fn under jit, and BatchNorm statistics move.
  def loss(p):
    logits, new_state = apply_fn(p, state, x, train=True, rng=jax.random.key(5))
    return jnp.mean(logits ** 2), new_state

  (value, new_state), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(state["bn"]), jax.tree.leaves(new_state["bn"]))]
  assert all(moved)


def test_nnx_dropout_follows_the_given_key():
  x = jax.random.normal(jax.random.key(2), (6, 10, 10, 1))
  apply_fn, params, state = models.from_nnx(make_nnx_model())
  a, _ = apply_fn(params, state, x, train=True, rng=jax.random.key(1))
  b, _ = apply_fn(params, state, x, train=True, rng=jax.random.key(1))
  c, _ = apply_fn(params, state, x, train=True, rng=jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  e1, s1 = apply_fn(params, state, x, train=False)
  e2, _ = apply_fn(params, state, x, train=False)
  np.testing.assert_array_equal(e1, e2)
  assert s1 is state
