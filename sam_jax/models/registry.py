"""Models by name: ``create_model("resnet18", num_classes=2, width=0.25)``."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn

from sam_jax.models.resnet import ResNet10, ResNet18, ResNet34, ResNet50
from sam_jax.models.swin import Swin
from sam_jax.models.vgg import VGG16BN
from sam_jax.models.vit import VIT_VARIANTS, ViT


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """A registered model: its constructor and the inputs it takes."""

  constructor: Callable[..., nn.Module]
  spatial_dims: int          # 2 for images, 3 for volumes
  description: str


MODELS: dict[str, ModelEntry] = {
    "resnet10": ModelEntry(functools.partial(ResNet10, dim=2), 2, "ResNet-10 (2D)"),
    "resnet18": ModelEntry(functools.partial(ResNet18, dim=2), 2, "ResNet-18 (2D)"),
    "resnet34": ModelEntry(functools.partial(ResNet34, dim=2), 2, "ResNet-34 (2D)"),
    "resnet50": ModelEntry(functools.partial(ResNet50, dim=2), 2, "ResNet-50 (2D)"),
    "resnet10_3d": ModelEntry(functools.partial(ResNet10, dim=3), 3, "ResNet-10, Conv3D throughout"),
    "resnet18_3d": ModelEntry(functools.partial(ResNet18, dim=3), 3, "ResNet-18, Conv3D throughout"),
    "resnet18_2.5d": ModelEntry(functools.partial(ResNet18, dim=3, volume_conv="2.5d"), 3,
                                "ResNet-18, 2-D kernels on every axial slice (MedMNIST 2.5D)"),
    "resnet18_acs": ModelEntry(functools.partial(ResNet18, dim=3, volume_conv="acs"), 3,
                               "ResNet-18, ACS convolutions (MedMNIST ACS)"),
    "resnet50_3d": ModelEntry(functools.partial(ResNet50, dim=3), 3, "ResNet-50, Conv3D throughout"),
    "vgg16_bn": ModelEntry(VGG16BN, 2, "VGG-16 with BatchNorm"),
    **{
        f"vit_{size}": ModelEntry(functools.partial(ViT, **shape), 2, f"ViT-{size.upper()}")
        for size, shape in VIT_VARIANTS.items()
    },
    "swin_t": ModelEntry(Swin, 2, "Swin-T"),
}


class UnknownModelError(ValueError):
  pass


def model_entry(name: str) -> ModelEntry:
  try:
    return MODELS[name]
  except KeyError:
    known = ", ".join(sorted(MODELS))
    raise UnknownModelError(f"unknown model {name!r}; known models: {known}.") from None


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """The model ``name`` with ``num_classes`` logits; ``kwargs`` override fields.

  Examples: ``create_model("resnet18", 2, width=0.25)``,
  ``create_model("vit_s", 2, patch_size=4)``, ``create_model("resnet18",
  1000, stem="imagenet")``, ``create_model("resnet18_3d", 2)``.
  """
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
  return model_entry(name).constructor(num_classes=num_classes, **kwargs)
