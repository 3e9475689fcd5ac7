"""What a study found: leaderboard rows, the best trial(s), history and importance plots, the best recipe exported."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nesfgen.config import Recipe, from_dict, to_toml
from nesfgen.errors import UserError
from nesfgen.files import atomic_write_text, new_figure, save_figure
from nesfgen.tune.storage import open_study, redact, storage_url
from nesfgen.tune.study import StudySpec


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    """One leaderboard row: number, state, objective values, parameters and the recorded metrics."""
    metrics = trial.user_attrs.get("metrics", {})
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "values": list(trial.values) if trial.values is not None else None,
        "params": dict(trial.params),
        "epochs": metrics.get("epochs_done"),
        "seconds": trial.duration.total_seconds() if trial.duration else None,
        "retry_of": trial.system_attrs.get("failed_trial", trial.user_attrs.get("retry_of")),
        "baseline": bool(trial.user_attrs.get("baseline", False)),
        "metrics": metrics,
        "run_dir": trial.user_attrs.get("run_dir"),
    }


def summarise(spec: StudySpec, study: optuna.Study, storage: str | None = None) -> dict[str, Any]:
    """Counts by state and the best trial(s) of a study."""
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    return {
        "study": spec.name,
        "storage": redact(storage_url(spec, storage)),
        "folder": str(spec.folder),
        "objectives": [f"{o.metric} ({o.direction})" for o in spec.objectives],
        "trials": {k: v for k, v in counts.items() if v},
        "best": [trial_row(t) for t in best_trials(spec, study)],
    }


def best_trials(spec: StudySpec, study: optuna.Study) -> list[FrozenTrial]:
    """The best trial, or for several objectives the Pareto front ordered by the first objective."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    if len(spec.objectives) == 1:
        return [study.best_trial]
    sign = 1.0 if spec.objectives[0].direction == "minimize" else -1.0
    return sorted(study.best_trials, key=lambda t: (sign * t.values[0], t.number))


def leaderboard(spec: StudySpec, study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial, best first: complete trials by objective (Pareto front first), then pruned, then the rest."""
    front = {t.number for t in best_trials(spec, study)}
    signs = [1.0 if o.direction == "minimize" else -1.0 for o in spec.objectives]

    def order(trial: FrozenTrial) -> tuple:
        if trial.state == TrialState.COMPLETE:
            return (0 if trial.number in front else 1, *(s * v for s, v in zip(signs, trial.values)), trial.number)
        if trial.state == TrialState.PRUNED:
            last = trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else math.inf
            return (2, -len(trial.intermediate_values), last, trial.number)
        return (3, trial.number)

    return [trial_row(t) for t in sorted(study.get_trials(deepcopy=False), key=order)]


def show_study(spec: StudySpec, storage: str | None = None) -> dict[str, Any]:
    """The leaderboard of a stored study, and its optimisation-history and parameter-importance plots."""
    study = open_study(spec, storage, create=False)
    result = {**summarise(spec, study, storage), "rows": leaderboard(spec, study)}
    spec.folder.mkdir(parents=True, exist_ok=True)
    result["plots"] = [str(path) for path in write_plots(spec, study, spec.folder)]
    return result


def write_plots(spec: StudySpec, study: optuna.Study, folder: Path) -> list[Path]:
    """history.png (each objective per trial, best so far as a line) and, with two or more complete
    trials, importance.png (fANOVA parameter importances for each objective)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    count = len(spec.objectives)
    figure, axes = new_figure(count, 5 * count, 3.6)
    axes = np.atleast_1d(axes)
    for index, (axis, objective) in enumerate(zip(axes, spec.objectives)):
        numbers = [t.number for t in complete]
        values = [t.values[index] for t in complete]
        axis.plot(numbers, values, "o", label="complete trial")
        better = np.minimum if objective.direction == "minimize" else np.maximum
        if values:
            axis.step(numbers, better.accumulate(np.array(values, dtype=float)), where="post", label="best so far")
        axis.set_xlabel("trial")
        axis.set_title(f"{objective.metric} ({objective.direction})")
    axes[0].legend()
    paths = [save_figure(figure, folder / "history.png")]
    if len(complete) < 2 or not spec.space:
        return paths
    figure, axes = new_figure(count, 5 * count, 0.6 + 0.45 * len(spec.space))
    axes = np.atleast_1d(axes)
    for index, (axis, objective) in enumerate(zip(axes, spec.objectives)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                # fANOVA: the share of the objective's variance each parameter explains (no direction needed)
                importances = optuna.importance.get_param_importances(
                    study,
                    evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                    target=lambda t, i=index: t.values[i],
                )
            except RuntimeError:  # every complete trial scored the same: nothing to apportion
                importances = {}
        names = list(importances)[::-1]
        axis.barh(names, [importances[n] for n in names])
        axis.set_xlabel("importance")
        axis.set_title(objective.metric if importances else f"{objective.metric}: the same in every trial")
    paths.append(save_figure(figure, folder / "importance.png"))
    return paths


def export_recipe(
    spec: StudySpec, storage: str | None = None, out: Path | None = None, trial: int | None = None
) -> dict[str, Any]:
    """Write the best trial's resolved recipe (or trial ``trial``'s) as a recipe file for ``nesfgen train``."""
    study = open_study(spec, storage, create=False)
    if trial is None:
        best = best_trials(spec, study)
        if not best:
            raise UserError(f"study {spec.name} has no complete trial yet; nothing to export")
        chosen = best[0]
    else:
        matches = [t for t in study.get_trials(deepcopy=False) if t.number == trial]
        if not matches or matches[0].state != TrialState.COMPLETE:
            raise UserError(f"study {spec.name} has no complete trial {trial}")
        chosen = matches[0]
    out = Path(out) if out else spec.folder / "best.toml"
    recipe = from_dict(Recipe, chosen.user_attrs["recipe"], where=f"trial {chosen.number} of study {spec.name}")
    recipe = replace(recipe, name=out.stem)
    scores = ", ".join(f"{o.metric} {v:.5g}" for o, v in zip(spec.objectives, chosen.values))
    header = (
        f"# nesfgen train recipe={out}\n"
        f"# Trial {chosen.number} of study {spec.name} ({scores}), exported by `nesfgen tune study={spec.name} export`.\n"
        f"# Trained with the study's per-trial budget (train.epochs, train.time_limit_minutes); raise them for a full run."
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, to_toml(recipe, header=header))
    return {"path": str(out), "trial": chosen.number, "values": list(chosen.values), "params": dict(chosen.params)}
