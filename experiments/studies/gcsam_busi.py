"""Study 2 (paper b): GCSAM against SAM and Adam on BUSI benign vs malignant.

    sam-jax grid run experiments/studies/gcsam_busi.py --preset cpu
    sam-jax grid report experiments/studies/gcsam_busi.py --preset cpu

Paper (b)'s setting as far as its code shows it (``cifar10_gcsam_resnet50.py``):
Adam at 1e-4 as the base of both sharpness methods, ρ 0.05, batch 128, a
constant learning rate, early stopping with patience 10 (on validation loss
here; the script watches the test loss), at most 120 epochs. Five seeds;
SAM paired by seed with Adam, GCSAM with SAM and with Adam.

Presets: ``cpu``: ResNet-18 at width 1/8, BUSI resized to 28 px, at most 40
epochs. ``paper``: ResNet-50 at 224 px, at most 120 epochs.
"""

from __future__ import annotations

from experiments.studies import common
from sam_jax import studies

METHODS = {
    "adam": dict(optimizer="adam"),
    "sam": dict(optimizer="sam", base_optimizer="adam", rho=0.05),
    "gcsam": dict(optimizer="gcsam", base_optimizer="adam", rho=0.05),
}
EPOCHS = {"cpu": 40, "paper": 120}


def get_study(preset: str) -> studies.Study:
  model = common.MODELS[preset]["cnn"]
  protocol = dict(learning_rate=1e-4, schedule="constant", early_stopping=10, select_by="loss",
                  epochs=EPOCHS[preset])
  runs = studies.expand(
      [studies.Block(["busi_binary"], [model], list(METHODS))], range(5),
      lambda d, m, k: common.configure(preset, d, m, METHODS[k], **protocol))
  return studies.Study(
      name="gcsam_busi", runs=runs, baselines={"sam": "adam", "gcsam": ("sam", "adam")},
      description="Paper (b)'s comparison: GCSAM vs SAM vs Adam (lr 1e-4, ρ 0.05) on BUSI "
                  "benign vs malignant; GCSAM is paired with SAM and with Adam, SAM with Adam.")
