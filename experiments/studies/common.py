"""Shared by the study files: presets (model, size, epochs per dataset) and published numbers."""

from __future__ import annotations

from sam_jax.train import config as config_lib

MODELS = {
    "cpu": {"cnn": "resnet18", "vit": "vit_ti"},
    "paper": {"cnn": "resnet50", "vit": "vit_s"},
}
# Per preset: the model's options, the image size and the epochs per dataset.
MODEL_OPTIONS = {
    "cpu": {"resnet18": dict(width=0.125), "vit_ti": dict(patch_size=7)},
    "paper": {"resnet50": dict(stem="imagenet"), "vgg16_bn": {}, "vit_s": dict(patch_size=16),
              "swin_t": {}},
}
SIZE = {"cpu": 28, "paper": 224}
EPOCHS = {
    "cpu": {"busi_binary": 10, "busi": 10, "breastmnist": 10, "pneumoniamnist": 2},
    "paper": {"busi_binary": 100, "busi": 100, "breastmnist": 100, "pneumoniamnist": 100},
}
REFERENCES = {
    "breastmnist": "MedMNIST v2, ResNet-18 (28), 100 epochs: test AUC 0.901, ACC 0.863.",
    "pneumoniamnist": "MedMNIST v2, ResNet-18 (28), 100 epochs: test AUC 0.944, ACC 0.854.",
}


def configure(preset: str, dataset: str, model: str, method: dict,
              **changes) -> config_lib.TrainConfig:
  """The MedMNIST protocol at the preset's scale, with the method's changes."""
  if preset not in SIZE:
    raise ValueError(f"unknown preset {preset!r}; known: {', '.join(SIZE)}.")
  fields = {"model": model, "size": SIZE[preset], "epochs": EPOCHS[preset][dataset],
            "progress": False, **MODEL_OPTIONS[preset][model], **method, **changes}
  return config_lib.preset("medmnist", dataset).replace(**fields)
