"""Studies: grids of runs, run resumably, reported with statistics over seeds.

    study = studies.Study("mine", studies.expand(
        [studies.Block(["breastmnist"], ["resnet18"], ["adam", "sam"])], seeds=range(5),
        configure=lambda dataset, model, method: ...), baselines={"sam": "adam"})
    studies.run_grid(study, "experiments/results/mine")  # or executor="slurm" / "ray"
    studies.write_study_report(study, root, "experiments/results/mine.md", preset="cpu")

The command line: ``sam-jax grid run|status|report STUDY_FILE`` and
``sam-jax compare RUN_DIR...``.
"""

from sam_jax.studies.executors import EXECUTORS, Resources
from sam_jax.studies.grid import Block, Run, Study, expand, load_study, run_state, status, status_lines
from sam_jax.studies.report import compare, group_runs, load_run, study_groups, write_study_report
from sam_jax.studies.runner import run_grid
from sam_jax.studies.stats import PairedTest, holm, mean_std, paired_test

__all__ = [
    "EXECUTORS", "Block", "PairedTest", "Resources", "Run", "Study", "compare", "expand", "group_runs", "holm",
    "load_run", "load_study", "mean_std", "paired_test", "run_grid", "run_state", "status",
    "status_lines", "study_groups", "write_study_report",
]
