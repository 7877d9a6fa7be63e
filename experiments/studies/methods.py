"""The methods of the sharpness studies, with their papers' defaults, as config changes.

Every sharpness method wraps the same base optimizer as the plain run it is
compared with (Adam at 1e-3 in the MedMNIST protocol, as paper (a) compares
against Adam); hyperparameters left out take the defaults of our
implementations, which follow the authors' code (see each optimizer's
docstring): SAM ρ 0.05, ASAM ρ 0.5 η 0.01, GSAM ρ 0.04 α 0.01, WSAM ρ 0.05
γ 0.9, CR-SAM ρ 0.1 γ 0.1 β 0.1, GCSAM ρ 0.05, F-SAM ρ 0.05 σ 1 λ 0.9,
Stable SAM ρ 0.05; LookSAM k 5 α 0.7, AE-SAM c 0 δ 0.9, randomized SAM p 0.5
(each at ρ 0.05); Momentum-SAM ρ 0.3 (the authors' default), after Adam.
"""

from __future__ import annotations

SGD = dict(optimizer="sgd", learning_rate=0.05, momentum=0.9)
ADAM = dict(optimizer="adam")


def sharpness(name: str, **hyper) -> dict:
  return dict(optimizer=name, base_optimizer="adam", **hyper)


METHODS: dict[str, dict] = {
    "sgd": SGD,
    "adam": ADAM,
    "sam": sharpness("sam", rho=0.05),
    "asam": sharpness("asam", rho=0.5, eta=0.01),
    "gsam": sharpness("gsam"),
    "wsam": sharpness("wsam"),
    "crsam": sharpness("crsam"),
    "gcsam": sharpness("gcsam", rho=0.05),
    "friendly_sam": sharpness("friendly_sam"),
    "stable_sam": sharpness("stable_sam", rho=0.05),
    # The cheap variants (issue 11): SAM's second pass on some steps only.
    "looksam": sharpness("looksam", rho=0.05, period=5, alpha=0.7),
    "ae_sam": sharpness("ae_sam", rho=0.05, threshold=0.0, ema_decay=0.9),
    "randomized_sam": sharpness("randomized_sam", rho=0.05, probability=0.5),
    "momentum_sam": sharpness("momentum_sam", rho=0.3),
    "esam": sharpness("esam", rho=0.05, beta=0.6, gamma=0.5),
    # The rho sweeps (ASAM's radius is about 10x SAM's: davda54/sam README).
    "sam_rho0.02": sharpness("sam", rho=0.02),
    "sam_rho0.1": sharpness("sam", rho=0.1),
    "asam_rho1.0": sharpness("asam", rho=1.0, eta=0.01),
    "asam_rho2.0": sharpness("asam", rho=2.0, eta=0.01),
}
SHARPNESS = [m for m in METHODS if m not in ("sgd", "adam")]
BASELINES = {**{m: "adam" for m in SHARPNESS}, "sgd": "adam"}
