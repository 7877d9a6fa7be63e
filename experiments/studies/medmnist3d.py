"""The MedMNIST v2 3-D baselines (2.5D, 3D, ACS), then SAM and AUC-M on ACS.

    sam-jax grid run experiments/studies/medmnist3d.py --preset cpu
    sam-jax grid report experiments/studies/medmnist3d.py --preset cpu

AdrenalMNIST3D and VesselMNIST3D at 28³, ResNet-18 in the three ways of the
MedMNIST v2 3-D table (``resnet18_2.5d``, ``resnet18_3d``, ``resnet18_acs``),
each with the MedMNIST protocol (Adam 1e-3, batch 32, lr ×0.1 at 50% and 75%
of the epochs, test metrics at the best validation AUC). On the ACS way,
the published best on both sets, two more methods paired with Adam by seed:

* ``sam``: SAM (ρ 0.05) wrapping the same Adam;
* ``aucm``: the AUC-margin loss (margin 1) with PESG (LibAUC's MedMNIST
  settings: lr 0.1, momentum 0.9 in LibAUC's convention, epoch decay 3e-3,
  weight decay 1e-5) and the dual sampler (half of each batch positive),
  trained from scratch in one stage, so that it has the same budget as the
  others (LibAUC's two-stage recipe starts from a cross-entropy model; see
  ``experiments/dam_medmnist.py`` for that form).

Five seeds per cell. Presets: ``cpu``: width 1/16 (stages of 4, 8, 16 and 32
channels) and 4 epochs, so that the 50 runs take about 4 hours on the
project's 2-core machine (probed step times; at width 1/8 the same budget
allows 2 epochs; the report's s/step column has the runs' own). ``paper``:
full width and 100 epochs (the MedMNIST protocol).
"""

from __future__ import annotations

from sam_jax import studies
from sam_jax.train import config as config_lib

DATASETS = ["adrenalmnist3d", "vesselmnist3d"]
WAYS = ["resnet18_2.5d", "resnet18_3d", "resnet18_acs"]
METHODS = {
    "adam": dict(optimizer="adam"),
    "sam": dict(optimizer="sam", base_optimizer="adam", rho=0.05),
    "aucm": dict(loss="aucm", optimizer="pesg", learning_rate=0.1, momentum=0.9,
                 momentum_convention="libauc", epoch_decay=3e-3, weight_decay=1e-5, margin=1.0,
                 sampler="dual", sampling_rate=0.5),
}
PRESETS = {"cpu": dict(width=0.0625, epochs=4), "paper": dict(width=1.0, epochs=100)}
# MedMNIST v2 (Yang et al., 2023), the 3-D table, ResNet-18 at 28³: test AUC.
REFERENCES = {
    "adrenalmnist3d": "MedMNIST v2, ResNet-18 (28³), 100 epochs, test AUC: 2.5D 0.718, 3D 0.827, "
                      "ACS 0.839.",
    "vesselmnist3d": "MedMNIST v2, ResNet-18 (28³), 100 epochs, test AUC: 2.5D 0.748, 3D 0.874, "
                     "ACS 0.930.",
}


def get_study(preset: str) -> studies.Study:
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}.")

  def configure(dataset: str, model: str, method: str) -> config_lib.TrainConfig:
    return config_lib.preset("medmnist", dataset).replace(
        model=model, size=28, progress=False, **PRESETS[preset], **METHODS[method])

  runs = studies.expand(
      [studies.Block(DATASETS, WAYS, ["adam"]),
       studies.Block(DATASETS, ["resnet18_acs"], ["sam", "aucm"])],
      range(5), configure)
  return studies.Study(
      name="medmnist3d", runs=runs, baselines={"sam": "adam", "aucm": "adam"},
      references=REFERENCES,
      description="The MedMNIST v2 3-D table's three ways of making ResNet-18 3-D (2.5D, 3D, "
                  "ACS) with Adam, and on ACS, SAM and AUC-M + PESG against Adam, paired by seed.")
