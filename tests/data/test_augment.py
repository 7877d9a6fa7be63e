"""On-device augmentation: shapes, determinism, identity when off, correctness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.data.augment import AugmentConfig, augment, normalize, rotate, translate

RNG = np.random.default_rng(0)
BATCH_2D = RNG.integers(0, 256, (6, 28, 28, 3), dtype=np.uint8)
BATCH_3D = RNG.integers(0, 256, (2, 64, 64, 64, 1), dtype=np.uint8)

CONFIGS = {
    "flips": AugmentConfig(flip_axes=(0, 1)),
    "rot90": AugmentConfig(rotate90=True),
    "rotation": AugmentConfig(max_rotation=15.0),
    "translation": AugmentConfig(max_translation=3),
    "intensity": AugmentConfig(brightness=0.2, contrast=0.3),
    "standard_2d": AugmentConfig.standard_2d(),
}
CONFIGS_3D = {
    "flips": AugmentConfig(flip_axes=(0, 1, 2)),
    "rot90": AugmentConfig(rotate90=True),
    "translation": AugmentConfig(max_translation=2),
    "standard_3d": AugmentConfig.standard_3d(),
}

jit_augment = jax.jit(augment, static_argnames=("config", "train"))


@pytest.mark.parametrize("name", CONFIGS)
def test_2d_shapes_dtypes_and_determinism(name):
  config = CONFIGS[name]
  a = jit_augment(jax.random.key(1), BATCH_2D, config)
  b = jit_augment(jax.random.key(1), BATCH_2D, config)
  c = jit_augment(jax.random.key(2), BATCH_2D, config)
  assert a.shape == BATCH_2D.shape and a.dtype == jnp.float32
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert float(a.min()) >= -1.0 - 1e-6 and float(a.max()) <= 1.0 + 1e-6


@pytest.mark.parametrize("name", CONFIGS_3D)
def test_3d_at_64_cubed(name):
  config = CONFIGS_3D[name]
  a = jit_augment(jax.random.key(1), BATCH_3D, config)
  b = jit_augment(jax.random.key(1), BATCH_3D, config)
  assert a.shape == BATCH_3D.shape and a.dtype == jnp.float32
  np.testing.assert_array_equal(a, b)
  # Two volumes can draw the same choices by chance (1/64 for three flips);
  # among five other keys at least one differs.
  others = [jit_augment(jax.random.key(k), BATCH_3D, config) for k in range(2, 7)]
  assert any(not np.array_equal(a, c) for c in others)


def test_identity_when_disabled_or_not_training():
  expected = BATCH_2D.astype(np.float32) / 127.5 - 1.0
  off = jit_augment(jax.random.key(0), BATCH_2D, AugmentConfig())
  np.testing.assert_allclose(off, expected, atol=1e-6)
  evaluation = jit_augment(jax.random.key(0), BATCH_2D, AugmentConfig.standard_2d(), train=False)
  np.testing.assert_allclose(evaluation, expected, atol=1e-6)


def test_flips_are_per_example_and_exact():
  out = np.asarray(jit_augment(jax.random.key(4), BATCH_2D, AugmentConfig(flip_axes=(1,))))
  base = BATCH_2D.astype(np.float32) / 127.5 - 1.0
  flipped = [np.allclose(o, b[:, ::-1], atol=1e-6) for o, b in zip(out, base)]
  unflipped = [np.allclose(o, b, atol=1e-6) for o, b in zip(out, base)]
  assert all(f != u for f, u in zip(flipped, unflipped))  # each one or the other
  assert any(flipped) and any(unflipped)


def test_rot90_outputs_are_rotations_of_the_input():
  out = np.asarray(jit_augment(jax.random.key(5), BATCH_3D, AugmentConfig(rotate90=True)))
  base = BATCH_3D.astype(np.float32) / 127.5 - 1.0
  planes = [(0, 1), (0, 2), (1, 2)]
  for o, b in zip(out, base):
    assert any(np.allclose(o, np.rot90(b, k, axes=p), atol=1e-6) for p in planes for k in range(4))


def test_translate_moves_content_and_fills_zeros():
  x = jnp.arange(25, dtype=jnp.float32).reshape(5, 5, 1) + 1
  moved = np.asarray(translate(x, jnp.array([1, -2]), 2))[..., 0]
  np.testing.assert_array_equal(moved[1:, :3], np.asarray(x)[:-1, 2:, 0])
  assert np.all(moved[0] == 0) and np.all(moved[:, 3:] == 0)


def test_rotation_by_zero_and_by_90_degrees():
  x = jnp.asarray(RNG.uniform(size=(9, 9, 2)), jnp.float32)
  np.testing.assert_allclose(rotate(x, 0.0), x, atol=1e-6)
  quarter = np.asarray(rotate(x, 90.0))
  candidates = [np.rot90(np.asarray(x), k, axes=(0, 1)) for k in (1, 3)]
  assert any(np.allclose(quarter, c, atol=1e-5) for c in candidates)


def test_normalizations():
  images = np.array([[[[0, 255]]]], np.uint8).reshape(1, 1, 2, 1).repeat(3, -1)
  np.testing.assert_allclose(normalize(images), [[[[-1] * 3, [1] * 3]]])
  unit = normalize(images, AugmentConfig(normalization="unit"))
  np.testing.assert_allclose(unit, [[[[0] * 3, [1] * 3]]])
  ms = normalize(images, AugmentConfig(normalization="mean_std", mean=(0.5, 0.0, 1.0), std=(0.5, 1.0, 0.5)))
  np.testing.assert_allclose(ms, [[[[-1, 0, -2], [1, 1, 0]]]], atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(normalization="zscore"), "normalization"), (dict(max_rotation=-1), "max_rotation"),
     (dict(contrast=1.0), "contrast"), (dict(std=(0.0,)), "std")],
)
def test_invalid_configs(kwargs, match):
  with pytest.raises(ValueError, match=match):
    AugmentConfig(**kwargs)


def test_rotation_is_2d_only():
  with pytest.raises(ValueError, match="2D"):
    augment(jax.random.key(0), BATCH_3D, AugmentConfig(max_rotation=5.0))
