"""Augmentation and normalization as jittable JAX functions, run on the device.

The host feeds ``uint8`` batches; :func:`augment` turns one into normalized
``float32`` under ``jax.jit`` with a PRNG key, drawing every random choice per
example (``jax.vmap`` over split keys). The same key gives the same batch, and
with every transformation off (or ``train=False``) the result is exactly
:func:`normalize` of the input.

2D batches are ``(B, H, W, C)``; 3D batches ``(B, D, H, W, C)``.

* flips along chosen spatial axes, each with probability 1/2;
* 90-degree rotations: a random multiple of 90° in the (H, W) plane (2D) or
  in a random one of the three planes (3D); needs square planes;
* small-angle rotations, uniform in ``[-max_rotation, max_rotation]`` degrees,
  bilinear, filling with zeros (2D);
* translations by up to ``max_translation`` pixels per axis, filling with
  zeros (also the usual pad-and-random-crop);
* brightness (add ``U[-b, b]``) and contrast (scale about the image mean by
  ``U[1 − c, 1 + c]``) in ``[0, 1]`` intensity units, clipped to ``[0, 1]``.

Normalization: ``"minus_one_one"`` maps ``[0, 255]`` to ``[−1, 1]`` (the
MedMNIST protocol, ``Normalize(mean=.5, std=.5)``), ``"mean_std"`` uses
per-channel ``mean`` and ``std`` in ``[0, 1]`` units, ``"unit"`` gives ``[0, 1]``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

NORMALIZATIONS = ("minus_one_one", "mean_std", "unit")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """What :func:`augment` does; the default does nothing but normalize.

  Attributes:
    flip_axes: spatial axes to flip at random (0 = H for 2D and D for 3D).
    rotate90: random rotations by multiples of 90°.
    max_rotation: largest small-angle rotation in degrees (2D only).
    max_translation: largest shift in pixels along every spatial axis.
    brightness: largest brightness change, in ``[0, 1]`` units.
    contrast: largest relative contrast change.
    normalization: ``"minus_one_one"``, ``"mean_std"`` or ``"unit"``.
    mean, std: per-channel statistics for ``"mean_std"`` (one value each or
      one per channel), in ``[0, 1]`` units.
  """

  flip_axes: tuple[int, ...] = ()
  rotate90: bool = False
  max_rotation: float = 0.0
  max_translation: int = 0
  brightness: float = 0.0
  contrast: float = 0.0
  normalization: str = "minus_one_one"
  mean: tuple[float, ...] = (0.5,)
  std: tuple[float, ...] = (0.5,)

  def __post_init__(self):
    if self.normalization not in NORMALIZATIONS:
      raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}.")
    for name in ("max_rotation", "max_translation", "brightness", "contrast"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
    if self.contrast >= 1:
      raise ValueError(f"contrast must be < 1 (a factor in [1 - c, 1 + c]), got {self.contrast}.")
    if any(s <= 0 for s in self.std):
      raise ValueError(f"std must be positive, got {self.std}.")

  @property
  def enabled(self) -> bool:
    return bool(self.flip_axes or self.rotate90 or self.max_rotation or self.max_translation
                or self.brightness or self.contrast)

  @classmethod
  def standard_2d(cls, **kwargs) -> "AugmentConfig":
    """Flips, small rotations (10°) and 2-pixel shifts: a mild 2D default."""
    return cls(**{"flip_axes": (1,), "max_rotation": 10.0, "max_translation": 2, **kwargs})

  @classmethod
  def standard_3d(cls, **kwargs) -> "AugmentConfig":
    """Flips along every axis, 90° rotations and 2-voxel shifts."""
    return cls(**{"flip_axes": (0, 1, 2), "rotate90": True, "max_translation": 2, **kwargs})


def normalize(images: jax.Array, config: AugmentConfig = AugmentConfig()) -> jax.Array:
  """``uint8`` (or ``[0, 1]`` float) images -> normalized ``float32``."""
  x = to_unit(images)
  return _normalize_unit(x, config)


def to_unit(images: jax.Array) -> jax.Array:
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def _normalize_unit(x: jax.Array, config: AugmentConfig) -> jax.Array:
  if config.normalization == "unit":
    return x
  if config.normalization == "minus_one_one":
    return x * 2.0 - 1.0
  channels = x.shape[-1]
  mean = jnp.broadcast_to(jnp.asarray(config.mean, jnp.float32), (channels,))
  std = jnp.broadcast_to(jnp.asarray(config.std, jnp.float32), (channels,))
  return (x - mean) / std


def augment(
    key: jax.Array,
    images: jax.Array,
    config: AugmentConfig,
    *,
    train: bool = True,
) -> jax.Array:
  """Augments (when ``train``) and normalizes a batch; jittable.

  Args:
    key: PRNG key; one batch, one key.
    images: ``uint8`` ``(B, H, W, C)`` or ``(B, D, H, W, C)``.
    config: the transformations.
    train: ``False`` skips augmentation (evaluation).
  """
  x = to_unit(images)
  if train and config.enabled:
    spatial = x.ndim - 2
    if spatial not in (2, 3):
      raise ValueError(f"augment expects (B, H, W, C) or (B, D, H, W, C); got {images.shape}.")
    if config.max_rotation and spatial != 2:
      raise ValueError("small-angle rotations (max_rotation) are for 2D images only.")
    if any(a < 0 or a >= spatial for a in config.flip_axes):
      raise ValueError(f"flip_axes {config.flip_axes} out of range for {spatial} spatial axes.")
    keys = jax.random.split(key, x.shape[0])
    x = jax.vmap(lambda k, img: _augment_one(k, img, config))(keys, x)
  return _normalize_unit(x, config)


def _augment_one(key: jax.Array, x: jax.Array, config: AugmentConfig) -> jax.Array:
  """One example ``(*spatial, C)`` in ``[0, 1]``."""
  spatial = x.ndim - 1
  k_flip, k_rot90, k_rot, k_shift, k_bright, k_contrast = jax.random.split(key, 6)
  for axis, k in zip(config.flip_axes, jax.random.split(k_flip, max(1, len(config.flip_axes)))):
    x = jnp.where(jax.random.bernoulli(k), jnp.flip(x, axis), x)
  if config.rotate90:
    x = _random_rot90(k_rot90, x, spatial)
  if config.max_rotation:
    angle = jax.random.uniform(k_rot, (), minval=-config.max_rotation, maxval=config.max_rotation)
    x = rotate(x, angle)
  if config.max_translation:
    t = int(config.max_translation)
    shifts = jax.random.randint(k_shift, (spatial,), -t, t + 1)
    x = translate(x, shifts, t)
  if config.brightness:
    x = x + jax.random.uniform(k_bright, (), minval=-config.brightness, maxval=config.brightness)
  if config.contrast:
    factor = jax.random.uniform(k_contrast, (), minval=1 - config.contrast, maxval=1 + config.contrast)
    mean = jnp.mean(x, axis=tuple(range(spatial)), keepdims=True)
    x = (x - mean) * factor + mean
  if config.brightness or config.contrast:
    x = jnp.clip(x, 0.0, 1.0)
  return x


def _random_rot90(key: jax.Array, x: jax.Array, spatial: int) -> jax.Array:
  planes = [(0, 1)] if spatial == 2 else list(itertools.combinations(range(3), 2))
  for a, b in planes:
    if x.shape[a] != x.shape[b]:
      raise ValueError(f"rotate90 needs square planes; axes {a}, {b} are {x.shape[a]}, {x.shape[b]}.")
  branches = [
      (lambda img, k=k, p=p: jnp.rot90(img, k, axes=p)) for p in planes for k in range(4)
  ]
  choice = jax.random.randint(key, (), 0, len(branches))
  return jax.lax.switch(choice, branches, x)


def rotate(x: jax.Array, degrees: jax.Array) -> jax.Array:
  """Rotates one ``(H, W, C)`` image about its centre; bilinear, zero fill."""
  h, w = x.shape[0], x.shape[1]
  theta = degrees * (math.pi / 180.0)
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                            indexing="ij")
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  # Each output pixel samples the input at the inverse rotation of its position.
  src_r = cos * (rows - cy) - sin * (cols - cx) + cy
  src_c = sin * (rows - cy) + cos * (cols - cx) + cx
  sample = lambda channel: ndimage.map_coordinates(channel, [src_r, src_c], order=1,
                                                   mode="constant", cval=0.0)
  return jax.vmap(sample, in_axes=-1, out_axes=-1)(x)


def translate(x: jax.Array, shifts: jax.Array, max_shift: int) -> jax.Array:
  """Shifts one example by integer ``shifts`` (|shift| <= max_shift); zero fill."""
  spatial = x.ndim - 1
  padded = jnp.pad(x, [(max_shift, max_shift)] * spatial + [(0, 0)])
  start = [max_shift - s for s in (shifts[i] for i in range(spatial))] + [0]
  return jax.lax.dynamic_slice(padded, start, x.shape)


def augment_fn(config: AugmentConfig):
  """``(key, images, train) -> float32`` with ``config`` bound, for a train step."""
  def fn(key, images, train: bool = True):
    return augment(key, images, config, train=train)
  return fn
