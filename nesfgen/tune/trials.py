"""Running a study: trials train (and evaluate) their recipe, report each epoch to the pruner, retry once on failure."""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nesfgen.config import apply_overrides, to_dict
from nesfgen.errors import UserError
from nesfgen.evaluate import EvaluateOptions, evaluate
from nesfgen.files import atomic_write_text
from nesfgen.machine import resolve_device
from nesfgen.train import LOSS_NAMES, train
from nesfgen.tune.results import summarise, trial_row
from nesfgen.tune.storage import open_study
from nesfgen.tune.study import EVALUATOR_METRICS, StudySpec, make_sampler

DONE = (TrialState.COMPLETE, TrialState.PRUNED)
#: Where Optuna reports a failed trial, with its trace.
OPTUNA_TRIAL_LOGGER = "optuna.study._optimize"


class TuneProgress(Protocol):
    """What a search reports to a front end (the CLI prints a line per trial)."""

    def epoch(self, trial: int, row: dict[str, Any]) -> None: ...
    def trial(self, row: dict[str, Any]) -> None: ...


class _TrialReporter:
    """The training loop's progress hook: report each epoch's validation value and stop if the pruner says so."""

    def __init__(self, trial: optuna.Trial, spec: StudySpec, progress: TuneProgress | None) -> None:
        self.trial = trial
        self.progress = progress
        self.rows: list[dict[str, Any]] = []
        first = spec.objectives[0]
        # Evaluator metrics are too slow to compute per epoch: their trials are pruned on the
        # validation loss, negated when the objective is maximised so that "better" agrees.
        self.key = "val_total" if first.from_evaluator or first.metric == "val_loss" else first.metric
        self.sign = -1.0 if first.from_evaluator and first.direction == "maximize" else 1.0
        self.report = len(spec.objectives) == 1

    # The pruner needs the epochs only.
    def start(self, recipe, run_dir, parameters, start_epoch, batches_per_epoch) -> None:
        pass

    def step(self, epoch, batch, losses) -> None:
        pass

    def epoch(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.progress:
            self.progress.epoch(self.trial.number, row)
        if not self.report:
            return
        self.trial.report(self.sign * row[self.key], row["epoch"])
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}: {self.key} {row[self.key]:.5g}")


def _training_metrics(rows: list[dict[str, Any]], best_epoch: int) -> dict[str, Any]:
    """The validation losses of the kept model's epoch (``best_epoch`` counts from 1)."""
    if not rows:
        return {"epochs_done": 0}
    row = rows[best_epoch - 1] if 1 <= best_epoch <= len(rows) else rows[-1]
    metrics = {f"val_{name}": row[f"val_{name}"] for name in ("total", *LOSS_NAMES)}
    return {
        "val_loss": row["val_total"],
        **metrics,
        "epochs_done": len(rows),
        "best_epoch": row["epoch"],
        "train_seconds": rows[-1]["seconds"],
    }


def _finish_folder(run_dir: Path, record: dict[str, Any], keep_best: bool) -> None:
    """trial.json beside the run; the resumable last.pt and snapshots go (trials restart, never resume)."""
    atomic_write_text(run_dir / "trial.json", json.dumps(record, indent=1, default=str))
    (run_dir / "last.pt").unlink(missing_ok=True)
    shutil.rmtree(run_dir / "snapshots", ignore_errors=True)
    if not keep_best:
        (run_dir / "best.pt").unlink(missing_ok=True)


def evaluator_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The objective's view of an evaluation: the paper's seven pooled over atoms (as Table 1), the rest as is."""
    figures = summary | summary["reference"]
    return {name: figures[name] for name in EVALUATOR_METRICS}


def _worst(direction: str) -> float:
    return math.inf if direction == "minimize" else -math.inf


def run_trial(spec: StudySpec, trial: optuna.Trial, progress: TuneProgress | None = None) -> float | list[float]:
    """Train the trial's recipe (and evaluate it when an objective needs the evaluator); the objective value(s)."""
    params = {param.key: param.suggest(trial) for param in spec.space}
    recipe = apply_overrides(spec.recipe, params)
    recipe = replace(recipe, name=f"{spec.name}-trial{trial.number}")
    run_dir = spec.folder / f"trial-{trial.number:04d}"
    trial.set_user_attr("recipe", to_dict(recipe))
    trial.set_user_attr("run_dir", str(run_dir))
    record = {"number": trial.number, "params": params, "recipe": to_dict(recipe)}
    reporter = _TrialReporter(trial, spec, progress)
    try:
        result = train(recipe, run_dir, reporter)
    except optuna.TrialPruned:
        best = min(range(len(reporter.rows)), key=lambda i: reporter.rows[i]["val_total"]) + 1
        metrics = _training_metrics(reporter.rows, best)
        trial.set_user_attr("metrics", metrics)
        _finish_folder(run_dir, {**record, "state": "pruned", "metrics": metrics}, keep_best=False)
        raise
    metrics = {**_training_metrics(result.history, result.best_epoch), "stop_reason": result.stop_reason}
    if any(o.from_evaluator for o in spec.objectives):
        chosen = EvaluateOptions(
            checkpoint=str(run_dir),
            data=recipe.data.dataset_name,
            split=spec.evaluate_split or recipe.data.val_split,
            limit=spec.evaluate_limit,
            device=str(resolve_device(recipe.train.device, "train.device")),
        )
        summary = evaluate(chosen).summary
        metrics.update(evaluator_metrics(summary))
    # An undefined metric (say, position error when nothing was decoded) ranks as the worst value.
    values = [metrics[o.metric] if not math.isnan(metrics[o.metric]) else _worst(o.direction) for o in spec.objectives]
    trial.set_user_attr("metrics", metrics)
    _finish_folder(run_dir, {**record, "state": "complete", "values": values, "metrics": metrics}, keep_best=True)
    return values[0] if len(values) == 1 else values


class _HideInterruptedTrial(logging.Filter):
    """Drops Optuna's failure report of the trial Ctrl-C stopped: the CLI says it was interrupted, and a trace is noise."""

    def __init__(self) -> None:
        super().__init__()
        self.trial: int | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        return self.trial is None or not record.getMessage().startswith(f"Trial {self.trial} failed")


def run_study(
    spec: StudySpec,
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    worker: int = 0,
    progress: TuneProgress | None = None,
) -> dict[str, Any]:
    """Run trials until the study holds ``n_trials`` finished (complete or pruned) trials, or ``timeout`` s pass.

    Several processes may run this on one storage at once: each asks the storage for its next trial,
    so every trial runs once; together they may finish up to one trial per extra worker beyond
    ``n_trials``. A trial that raises is failed and queued once more with the same parameters (a
    killed worker's trial is queued by the heartbeat of the next worker); failures do not count
    towards ``n_trials``, and three failures in a row stop this worker. A trial stopped by Ctrl-C is
    failed too and queued again, whatever its retries; the KeyboardInterrupt is raised on.

    Args:
        worker: give each simultaneous worker its own number, so that their samplers differ.
    """
    target = n_trials or spec.n_trials
    study = open_study(spec, storage)
    # Seeded by the trials already there, so that a resumed or joining worker does not replay the
    # proposals of the first one.
    seed = int(np.random.SeedSequence([spec.seed, worker, len(study.trials)]).generate_state(1)[0])
    study.sampler = make_sampler(spec, seed)
    ran: list[int] = []
    failures: list[str] = []
    interrupted = _HideInterruptedTrial()

    def objective(trial: optuna.Trial) -> float | list[float]:
        ran.append(trial.number)
        try:
            value = run_trial(spec, trial, progress)
        except optuna.TrialPruned:
            failures.clear()
            raise
        except KeyboardInterrupt:
            # Not the trial's fault, so it uses up no retry; Optuna fails it and raises the interrupt on.
            attempt = int(trial.user_attrs.get("attempt", 0))
            retry = {**trial.user_attrs, "attempt": attempt, "retry_of": trial.number}  # a baseline stays one
            study.enqueue_trial(trial.params, user_attrs=retry, skip_if_exists=False)
            interrupted.trial = trial.number
            raise
        except Exception as error:
            attempt = int(trial.user_attrs.get("attempt", 0))
            if not isinstance(error, UserError) and attempt < spec.retries:
                retry = {**trial.user_attrs, "attempt": attempt + 1, "retry_of": trial.number}
                study.enqueue_trial(trial.params, user_attrs=retry, skip_if_exists=False)
            failures.append(f"trial {trial.number}: {type(error).__name__}: {error}")
            if len(failures) >= 3:
                study.stop()
            raise
        failures.clear()
        return value

    def finished(study: optuna.Study, trial: FrozenTrial) -> None:
        if progress:
            progress.trial(trial_row(trial))

    if len(study.get_trials(deepcopy=False, states=DONE)) < target:
        logger = logging.getLogger(OPTUNA_TRIAL_LOGGER)
        logger.addFilter(interrupted)
        try:
            study.optimize(
                objective,
                timeout=timeout,
                catch=(Exception,),
                callbacks=[optuna.study.MaxTrialsCallback(target, states=DONE), finished],
            )
        finally:
            logger.removeFilter(interrupted)
    if len(failures) >= 3:
        raise UserError(f"study {spec.name}: three trials in a row failed; the last: {failures[-1]}")
    return {**summarise(spec, study, storage), "ran": ran}
