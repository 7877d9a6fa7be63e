"""Flax Linen models for the studies, a registry by name, and adapters."""

from sam_jax.models.adapters import ApplyFn, from_linen, from_nnx
from sam_jax.models.registry import MODELS, UnknownModelError, create_model, model_entry
from sam_jax.models.resnet import ResNet, ResNet10, ResNet18, ResNet34, ResNet50
from sam_jax.models.swin import Swin
from sam_jax.models.vgg import VGG, VGG16BN
from sam_jax.models.vit import ViT

__all__ = [
    "ApplyFn", "MODELS", "ResNet", "ResNet10", "ResNet18", "ResNet34", "ResNet50", "Swin",
    "UnknownModelError", "VGG", "VGG16BN", "ViT", "create_model", "from_linen",
    "from_nnx", "model_entry",
]
