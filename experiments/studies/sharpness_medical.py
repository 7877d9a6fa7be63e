"""Study 1 (paper a): do sharpness-aware optimizers improve medical image classifiers?

    sam-jax grid run experiments/studies/sharpness_medical.py --preset cpu
    sam-jax grid status experiments/studies/sharpness_medical.py --preset cpu
    sam-jax grid report experiments/studies/sharpness_medical.py --preset cpu

Datasets: BUSI benign vs malignant (``busi_binary``) and 3-class (``busi``),
BreastMNIST, PneumoniaMNIST. ResNet-18 for every method of
:mod:`experiments.studies.methods` (SGD, Adam, and SAM, ASAM, GSAM, WSAM,
CR-SAM, GCSAM, Friendly SAM, Stable SAM on Adam), the ρ sweeps of SAM
(0.02, 0.05, 0.1) and ASAM (0.5, 1, 2) on BreastMNIST and BUSI binary, and
ViT-Ti for SGD, Adam, SAM and ASAM (paper a: ASAM helps CNNs but not ViTs).
Five seeds per cell; every sharpness method is paired by seed with Adam.

Presets:

``cpu``   ResNet-18 at width 1/8 and ViT-Ti with 7x7 patches at 28 px (BUSI
          resized to 28), batch 128, MedMNIST protocol (lr x0.1 at 50%/75%,
          test at the best validation AUC), epochs: 10 (BreastMNIST, BUSI),
          2 (PneumoniaMNIST, 37 steps each). ViT-Ti (and the paper preset's
          transformers) train with their own recipe (batch 32, warm-up,
          cosine, clipping, lr 1e-4 / 0.01: ``common.TRANSFORMER_RECIPE``).
          Sized for about 4 hours on the 2-core CPU machine.
``paper`` ResNet-50, VGG-16 (BN), ViT-S/16 and Swin-T at 224 px, 100 epochs,
          batch 128 (32 for Swin/ViT memory on one GPU is not needed at 224);
          for a GPU or TPU. MedMNIST at 224 needs the MedMNIST+ files
          (``--download`` or a local copy).
"""

from __future__ import annotations

from experiments.studies import common
from experiments.studies.methods import BASELINES, METHODS
from sam_jax import studies

DATASETS = ["busi_binary", "busi", "breastmnist", "pneumoniamnist"]
CORE = ["sgd", "adam", "sam", "asam", "gsam", "wsam", "crsam", "gcsam", "friendly_sam",
        "stable_sam"]
SWEEP = ["sam_rho0.02", "sam_rho0.1", "asam_rho1.0", "asam_rho2.0"]
VIT_METHODS = ["sgd", "adam", "sam", "asam"]
SEEDS = range(5)


def get_study(preset: str) -> studies.Study:
  cnn, vit = common.MODELS[preset]["cnn"], common.MODELS[preset]["vit"]
  blocks = [studies.Block(DATASETS, [cnn], CORE),
            studies.Block(["breastmnist", "busi_binary"], [cnn], SWEEP),
            studies.Block(DATASETS, [vit], VIT_METHODS)]
  if preset == "paper":
    blocks += [studies.Block(DATASETS, ["vgg16_bn"], CORE),
               studies.Block(DATASETS, ["swin_t"], VIT_METHODS)]
  return studies.Study(
      name="sharpness_medical",
      # Resume points every 5 epochs: a synchronous orbax save costs about as
      # much as an epoch of these small runs.
      runs=studies.expand(blocks, SEEDS, lambda d, m, k: common.configure(
          preset, d, m, METHODS[k], checkpoint_every=5)),
      baselines=BASELINES, references=common.REFERENCES,
      description="Paper (a)'s question on four medical image sets: test metrics of every "
                  "sharpness method against Adam (its base optimizer), paired by seed.")
