"""Cheap sharpness variants (issue 11): do they keep SAM's test AUC at a fraction of its cost?

    sam-jax grid run experiments/studies/cheap_sam.py --preset cpu
    sam-jax grid report experiments/studies/cheap_sam.py --preset cpu

LookSAM (SAM every 5 steps, its orthogonal component reused between, α 0.7),
AE-SAM (SAM when ‖g‖² ≥ its moving mean, threshold 0), randomized SAM
(RST, SAM on a random half of the steps), Momentum-SAM (one pass, the
weights kept ρ 0.3 along Adam's last step) and ESAM (β 0.6 of the tensors
perturbed, the adversarial gradient on the sharpest half of the batch, as
the authors' ResNet-18 runs), against SAM (ρ 0.05) and Adam,
their base optimizer, on BreastMNIST and PneumoniaMNIST: ResNet-18 at the
``cpu`` preset of :mod:`experiments.studies.sharpness_medical` (width 1/8,
28 px, MedMNIST protocol, 10 and 2 epochs). Five seeds; each variant is
paired by seed with SAM and with Adam. Their cost per step, measured apart
on a quiet machine, is ``benchmarks/results/variants_step_time_cpu.md``
(the report's s/step is a median over steps, which for these methods is
the cost of their cheap steps).

Presets: ``cpu`` (above) and ``paper`` (ResNet-50 at 224 px, 100 epochs).
"""

from __future__ import annotations

from experiments.studies import common
from experiments.studies.methods import METHODS
from sam_jax import studies

DATASETS = ["breastmnist", "pneumoniamnist"]
VARIANTS = ["looksam", "ae_sam", "randomized_sam", "momentum_sam", "esam"]
SEEDS = range(5)


def get_study(preset: str) -> studies.Study:
  cnn = common.MODELS[preset]["cnn"]
  return studies.Study(
      name="cheap_sam",
      runs=studies.expand([studies.Block(DATASETS, [cnn], ["adam", "sam", *VARIANTS])], SEEDS,
                          lambda d, m, k: common.configure(preset, d, m, METHODS[k],
                                                           checkpoint_every=5)),
      baselines={"sam": "adam", **{v: ("sam", "adam") for v in VARIANTS}},
      references=common.REFERENCES,
      description="Issue 11's question: LookSAM, AE-SAM and randomized SAM take SAM's second "
                  "pass on some steps only, Momentum-SAM never, ESAM on half the batch; is "
                  "their test AUC within SAM's spread, and does any of them beat Adam, their base optimizer? "
                  "Paired by seed.")
