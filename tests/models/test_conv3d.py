"""3-D convolutions: every implementation equals XLA's, and the three MedMNIST ways."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sam_jax import models
from sam_jax.models import conv3d as conv3d_lib
from sam_jax.train.losses import softmax_cross_entropy
from sam_jax.train.state import create_train_state
from sam_jax.train.step import make_train_step

DN = ("NDHWC", "DHWIO", "NDHWC")


def lax_conv(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=DN,
                                      precision=jax.lax.Precision.HIGHEST)


# (input spatial (D, H, W), C, O, kernel, strides, padding): every shape kind the
# ResNets use (3x3x3 stride 1 and 2, 1x1x1 stride 2 downsampling, the 7x7x7
# stride-2 ImageNet stem), odd sizes (7 -> 4 at stride 2), non-cubic inputs,
# mixed strides, and the string paddings.
CASES = [
    ((9, 8, 7), 3, 4, (3, 3, 3), (1, 1, 1), [(1, 1)] * 3),
    ((7, 7, 7), 3, 5, (3, 3, 3), (2, 2, 2), [(1, 1)] * 3),
    ((8, 7, 6), 4, 6, (1, 1, 1), (2, 2, 2), "SAME"),
    ((11, 10, 9), 2, 3, (7, 7, 7), (2, 2, 2), [(3, 3)] * 3),
    ((9, 8, 7), 3, 4, (3, 3, 3), (2, 1, 2), "VALID"),
    ((6, 9, 8), 3, 4, (3, 1, 3), (1, 2, 1), "SAME"),
    ((5, 6, 7), 1, 2, (1, 3, 3), (1, 1, 1), [(0, 0), (1, 1), (1, 1)]),
]


@pytest.mark.parametrize("impl", ["depth_sum", "depth_concat", "matmul"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_conv3d_and_its_gradients_equal_lax_in_float64(case, impl):
  spatial, c, o, kernel_size, strides, padding = CASES[case]
  if impl == "matmul" and kernel_size != (1, 1, 1):
    pytest.skip("matmul is for 1x1x1 kernels")
  rng = np.random.default_rng(case)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.normal(size=(2, *spatial, c)))
    kernel = jnp.asarray(rng.normal(size=(*kernel_size, c, o)))
    pads = padding if isinstance(padding, str) else list(padding)
    ours = lambda x, k: conv3d_lib.conv3d(x, k, strides, pads, impl)
    reference = lambda x, k: lax_conv(x, k, strides, pads)
    np.testing.assert_allclose(jax.jit(ours)(x, kernel), reference(x, kernel), rtol=1e-12, atol=1e-12)
    # A cotangent that is not all ones, so that every output position weighs differently.
    cotangent = jnp.asarray(rng.normal(size=reference(x, kernel).shape))
    _, vjp_ours = jax.vjp(ours, x, kernel)
    _, vjp_ref = jax.vjp(reference, x, kernel)
    for got, want in zip(vjp_ours(cotangent), vjp_ref(cotangent)):
      np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


def test_auto_is_xla_off_cpu_and_folds_on_cpu(monkeypatch):
  assert conv3d_lib.resolve_implementation("auto", (3, 3, 3)) == conv3d_lib.CPU_IMPLEMENTATION
  assert conv3d_lib.resolve_implementation("auto", (1, 1, 1)) == "matmul"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert conv3d_lib.resolve_implementation("auto", (3, 3, 3)) == "xla"
  assert conv3d_lib.resolve_implementation("auto", (1, 1, 1)) == "xla"


def acs_reference(x, kernel_2d, strides, p):
  """ACSConv's definition, written out with XLA's 3-D convolution: the output
  channels split (a, c, s) with the remainder to the first parts, each part a
  2-D kernel with one tap across its own plane and no padding there."""
  o = kernel_2d.shape[-1]
  sizes = [o // 3 + (o % 3 > 0), o // 3 + (o % 3 > 1), o // 3]
  outs, start = [], 0
  for axis, size in enumerate(sizes):
    part = np.expand_dims(kernel_2d[..., start:start + size], axis)
    padding = [(p, p)] * 3
    padding[axis] = (0, 0)
    outs.append(lax_conv(x, jnp.asarray(part), strides, padding))
    start += size
  return jnp.concatenate(outs, axis=-1)


@pytest.mark.parametrize("features", [6, 7, 8])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("impl", ["xla", "auto"])
@pytest.mark.parametrize("k", [3, 1])
def test_acs_way_matches_its_definition(features, stride, impl, k):
  rng = np.random.default_rng(features)
  x = jnp.asarray(rng.normal(size=(2, 7, 8, 9, 3)), jnp.float32)
  layer = conv3d_lib.Conv3D(features, (k, k, k), stride, [(k // 2, k // 2)] * 3,
                            use_bias=False, way="acs", impl=impl)
  variables = layer.init(jax.random.key(0), x)
  kernel = variables["params"]["kernel"]
  assert kernel.shape == (k, k, 3, features)  # a 2-D kernel: ACS has a 2-D network's parameters
  got = layer.apply(variables, x)
  want = acs_reference(x, np.asarray(kernel), (stride,) * 3, k // 2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_2_5d_way_is_a_2d_kernel_on_every_axial_slice(stride):
  rng = np.random.default_rng(stride)
  x = jnp.asarray(rng.normal(size=(2, 7, 8, 9, 3)), jnp.float32)
  layer = conv3d_lib.Conv3D(5, (3, 3, 3), stride, [(1, 1)] * 3, use_bias=False, way="2.5d")
  variables = layer.init(jax.random.key(0), x)
  kernel = variables["params"]["kernel"]
  assert kernel.shape == (1, 3, 3, 3, 5)
  got = layer.apply(variables, x)
  # Each output slice is the 2-D convolution of input slice stride·d.
  conv2d = lambda image: jax.lax.conv_general_dilated(
      image, kernel[0], (stride, stride), [(1, 1), (1, 1)],
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
  assert got.shape[1] == (7 - 1) // stride + 1
  for d in range(got.shape[1]):
    np.testing.assert_allclose(got[:, d], conv2d(x[:, stride * d]), rtol=1e-5, atol=1e-5)


def _param_count(name, **kwargs):
  model = models.create_model(name, 3, width=0.25, **kwargs)
  shape = (1, 8, 8, 8, 1) if name.endswith(("_3d", "_2.5d", "_acs")) else (1, 8, 8, 1)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
  return sum(v.size for v in jax.tree.leaves(variables["params"])), variables["params"]


def test_parameter_counts_are_the_converters():
  # ACSConv's converters keep every 2-D weight: Conv2_5d and ACSConv store the
  # 2-D kernel's k·k·C·O numbers (2.5D unsqueezed, ACS split by output
  # channel); Conv3dConverter makes every k x k kernel k x k x k.
  count_2d, params_2d = _param_count("resnet18")
  assert _param_count("resnet18_2.5d")[0] == count_2d
  assert _param_count("resnet18_acs")[0] == count_2d
  kernels = [v for path, v in jax.tree_util.tree_leaves_with_path(params_2d)
             if jax.tree_util.keystr(path).endswith("['kernel']") and v.ndim == 4]
  extra_3d = sum(int(np.prod(k.shape)) * (k.shape[0] - 1) for k in kernels)
  assert extra_3d > 0
  assert _param_count("resnet18_3d")[0] == count_2d + extra_3d


def test_one_train_step_is_the_same_with_every_implementation():
  # resnet18_3d's layers with one block per stage, with SGD: every kind of
  # convolution the model has (stem, strided, 1x1x1 shortcut) at half the
  # compile time of two blocks. ACS layers are checked one by one above; a
  # second model, or SAM's second pass, would double this test's compile time.
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (4, 8, 8, 8, 1), dtype=np.uint8),
           "label": rng.integers(0, 2, 4).astype(np.int32)}
  tx = optax.sgd(0.1, momentum=0.9)
  states = {}
  for impl in ("xla", "auto"):
    model = models.create_model("resnet18_3d", 2, width=0.125, conv_impl=impl,
                                stage_sizes=(1, 1, 1, 1))
    apply_fn, params, model_state = models.from_linen(model, jax.random.key(0), batch["image"][:1])
    step = jax.jit(make_train_step(apply_fn, softmax_cross_entropy(), tx))
    state = create_train_state(params, model_state, tx)
    states[impl], _ = step(state, batch, jax.random.key(1))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4),
               states["xla"].params, states["auto"].params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4),
               states["xla"].model_state, states["auto"].model_state)


def test_bad_choices_are_named():
  x = jnp.zeros((1, 4, 4, 4, 1))
  with pytest.raises(ValueError, match="unknown implementation 'fast'"):
    conv3d_lib.conv3d(x, jnp.zeros((3, 3, 3, 1, 2)), impl="fast")
  with pytest.raises(ValueError, match="unknown way '4d'"):
    conv3d_lib.Conv3D(2, (3, 3, 3), way="4d").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="1x1x1"):
    conv3d_lib.conv3d(x, jnp.zeros((3, 3, 3, 1, 2)), impl="matmul")
  with pytest.raises(ValueError, match="channels"):
    conv3d_lib.conv3d(x, jnp.zeros((3, 3, 3, 2, 2)))
  with pytest.raises(ValueError, match="is for volumes"):
    models.create_model("resnet18", 2, volume_conv="acs").init(jax.random.key(0), x[:, 0])
