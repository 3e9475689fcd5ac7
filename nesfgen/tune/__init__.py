"""Hyperparameter searches with Optuna: study files, trials that train (and evaluate) a recipe, shared storage.

A study file (``studies/NAME.toml``) names a base recipe, fixed overrides, a per-trial budget, a
search space over dotted recipe keys, one or more objectives, a sampler and a pruner. Each trial
trains the resolved recipe into ``runs/tune-NAME/trial-NNNN/`` and reports its validation loss every
epoch, so the pruner can stop it early. The study lives in an Optuna storage (SQLite in the run
folder by default, any database URL for many workers); running ``tune`` again joins or resumes it.

Modules, in the order they import each other: ``space`` -> ``study`` (the file) -> ``storage`` -> ``results``
(leaderboard, plots, export) -> ``trials`` (running).
"""

from nesfgen.tune.results import best_trials, export_recipe, leaderboard, show_study, summarise, trial_row, write_plots
from nesfgen.tune.space import Param
from nesfgen.tune.storage import open_storage, open_study, redact, storage_url
from nesfgen.tune.study import (
    EVALUATOR_METRICS,
    TRAINING_METRICS,
    Objective,
    StudySpec,
    load_study,
    make_pruner,
    make_sampler,
    study_names,
    study_path,
)
from nesfgen.tune.trials import TuneProgress, evaluator_metrics, run_study, run_trial

__all__ = [
    "EVALUATOR_METRICS",
    "TRAINING_METRICS",
    "Objective",
    "Param",
    "StudySpec",
    "TuneProgress",
    "best_trials",
    "evaluator_metrics",
    "export_recipe",
    "leaderboard",
    "load_study",
    "make_pruner",
    "make_sampler",
    "open_storage",
    "open_study",
    "redact",
    "run_study",
    "run_trial",
    "show_study",
    "storage_url",
    "study_names",
    "study_path",
    "summarise",
    "trial_row",
    "write_plots",
]
