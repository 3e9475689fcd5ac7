"""Study files: parsed into frozen dataclasses and checked as recipes are, so a typo fails before any training."""

from __future__ import annotations

import difflib
import sys
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import optuna

from nesfgen.config import (
    Allowed,
    Checked,
    Recipe,
    from_dict,
    integer,
    load_recipe,
    shipped_dir,
    shipped_toml_names,
    shipped_toml_path,
)
from nesfgen.errors import UserError
from nesfgen.metrics import PAPER_METRICS
from nesfgen.train import LOSS_NAMES
from nesfgen.tune.space import Param, baseline_values, flatten, override_text, parse_param

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

STUDIES_DIR = shipped_dir("nesfgen.studies")
#: Validation losses of the epoch whose model is kept (best.pt); ``val_loss`` is the weighted total.
TRAINING_METRICS = ("val_loss", *(f"val_{name}" for name in ("total", *LOSS_NAMES)))
#: Metrics of ``nesfgen.evaluate.evaluate`` on the validation split, with the direction that is better;
#: the paper's seven are taken pooled over atoms (``summary["reference"]``), as the paper's Table 1.
EVALUATOR_METRICS = {
    **dict.fromkeys(PAPER_METRICS, "minimize"),
    "empty_decodes": "minimize",
    "cdvae_match_rate_pct": "maximize",
    "cdvae_rmse": "minimize",
    "cdvae_spacegroup_match_pct": "maximize",
}
OBJECTIVE_METRICS = (*TRAINING_METRICS, *EVALUATOR_METRICS)
SAMPLERS = ("tpe", "random", "nsga2")
PRUNERS = ("median", "hyperband", "none")
#: Tables of a study file whose keys are free: recipe keys ([overrides], [space]) or Optuna's arguments.
FREE_TABLES = ("overrides", "space", "sampler", "pruner")
#: Read beside :class:`StudyFile`: the free tables, and the objectives ([objective] or a list of [[objectives]]).
READ_BESIDE = (*FREE_TABLES, "objective", "objectives")


@dataclass(frozen=True)
class Objective(Checked):
    """One metric to optimise, from training or from the evaluator."""

    SECTION = "objective"
    RULES = {"direction": Allowed("minimize or maximize", lambda value: value in ("minimize", "maximize", ""))}

    metric: str = ""
    direction: str = ""  # "" in a study file: the metric's better direction, filled in when the study is loaded

    @property
    def from_evaluator(self) -> bool:
        return self.metric in EVALUATOR_METRICS

    def check_together(self) -> None:
        if self.metric not in OBJECTIVE_METRICS:
            close = difflib.get_close_matches(self.metric, OBJECTIVE_METRICS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UserError(
                f"unknown objective metric {self.metric!r}{hint} Valid metrics: {', '.join(OBJECTIVE_METRICS)}"
            )


@dataclass(frozen=True)
class BudgetConfig:
    """Per trial: written into the recipe as train.epochs and train.time_limit_minutes, whose rules check it."""

    epochs: int | None = None
    minutes: float | None = None


@dataclass(frozen=True)
class EvaluateConfig(Checked):
    """Where an evaluator objective is scored: a split ("" = the recipe's validation split) and a size limit."""

    SECTION = "evaluate"
    RULES = {"limit": integer(0)}

    split: str = ""
    limit: int = 0


@dataclass(frozen=True)
class StorageConfig(Checked):
    """How a killed worker's trial is noticed: heartbeats every so often, stale after the grace period."""

    SECTION = "storage"
    RULES = {"heartbeat_seconds": integer(1), "grace_seconds": integer(1)}

    heartbeat_seconds: int = 60
    grace_seconds: int = 180


@dataclass(frozen=True)
class StudyFile(Checked):
    """The keys of a study file with a fixed form; the free tables and the objectives are read beside it."""

    RULES = {"n_trials": integer(1), "seed": integer(0), "retries": integer(0)}

    name: str = ""  # "" = the file's stem
    recipe: str = ""
    baseline: bool = False
    n_trials: int = 20
    seed: int = 0
    retries: int = 1
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except UserError as error:  # Checked names a key SECTION.key; these keys have no section
            raise UserError(str(error).removeprefix(".")) from None

    def check_together(self) -> None:
        if not self.recipe:
            raise UserError("recipe = NAME is required (the recipe every trial starts from)")


@dataclass(frozen=True)
class StudySpec:
    """A validated study file. ``recipe`` already holds the fixed overrides and the per-trial budget."""

    name: str
    path: Path
    recipe: Recipe
    space: tuple[Param, ...]
    objectives: tuple[Objective, ...]
    n_trials: int = 20
    seed: int = 0
    retries: int = 1
    sampler: str = "tpe"
    sampler_args: dict[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    pruner_args: dict[str, Any] = field(default_factory=dict)
    evaluate_split: str = ""  # "" = the recipe's validation split
    evaluate_limit: int = 0
    heartbeat_seconds: int = 60
    grace_seconds: int = 180
    baseline: dict[str, Any] | None = None  # the recipe's own values of the searched keys, run as trial 0

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def folder(self) -> Path:
        return Path("runs") / f"tune-{self.name}"


def study_names() -> list[str]:
    """Names of the studies shipped with the package."""
    return shipped_toml_names(STUDIES_DIR)


def study_path(name_or_path: str) -> Path:
    """Resolve a study name (``quickstart``) or a path to a TOML file."""
    return shipped_toml_path(STUDIES_DIR, "study", name_or_path)


def load_study(name_or_path: str) -> StudySpec:
    """Read and check a study file: every key, range and choice is tried on the recipe, so typos fail here."""
    path = study_path(name_or_path)
    where = str(path)
    try:
        document = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"study file {path} is not valid TOML: {error}") from None
    _check_keys(document, (*(f.name for f in fields(StudyFile)), *READ_BESIDE), where)
    study = from_dict(StudyFile, {k: v for k, v in document.items() if k not in READ_BESIDE}, where)
    tables = {key: _table(document, key, where) for key in FREE_TABLES}
    objectives = _objectives(document, where)
    fixed = {key: override_text(value) for key, value in flatten(tables["overrides"])}
    if study.budget.epochs is not None:
        fixed["train.epochs"] = study.budget.epochs
    if study.budget.minutes is not None:
        fixed["train.time_limit_minutes"] = study.budget.minutes
    try:
        recipe = load_recipe(_recipe_reference(study.recipe, path), fixed)
    except UserError as error:
        raise UserError(f"{where}: recipe and overrides: {error}") from None
    space = tuple(parse_param(key, value, recipe, where) for key, value in flatten(tables["space"]))
    for param in space:
        if param.key in fixed:
            raise UserError(f"{where}: {param.key} is both searched (space) and fixed (overrides or budget)")
    sampler_args = dict(tables["sampler"])
    pruner_args = dict(tables["pruner"])
    spec = StudySpec(
        name=study.name or path.stem,
        path=path,
        recipe=recipe,
        space=space,
        objectives=objectives,
        n_trials=study.n_trials,
        seed=study.seed,
        retries=study.retries,
        sampler=str(sampler_args.pop("type", "tpe" if len(objectives) == 1 else "nsga2")),
        sampler_args=sampler_args,
        pruner=str(pruner_args.pop("type", "median" if len(objectives) == 1 else "none")),
        pruner_args=pruner_args,
        evaluate_split=study.evaluate.split,
        evaluate_limit=study.evaluate.limit,
        heartbeat_seconds=study.storage.heartbeat_seconds,
        grace_seconds=study.storage.grace_seconds,
        baseline=baseline_values(recipe, space, where) if study.baseline else None,
    )
    make_sampler(spec, 0)  # built once here so that a bad argument fails before any training
    make_pruner(spec)
    return spec


def _table(document: dict, key: str, where: str) -> dict:
    value = document.get(key, {})
    if not isinstance(value, dict):
        raise UserError(f"{where}: {key} must be a table ([{key}])")
    return value


def _check_keys(document: dict, known: tuple[str, ...], where: str) -> None:
    """Top-level keys, free tables included (``from_dict`` knows only the fixed-form ones), with a did-you-mean."""
    for key in document:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UserError(f"{where}: unknown key {key}{hint} Valid keys here: {', '.join(known)}")


def _objectives(document: dict, where: str) -> tuple[Objective, ...]:
    """[objective], or [[objectives]] for several; val_loss when neither is given."""
    if "objective" in document and "objectives" in document:
        raise UserError(f"{where}: give either [objective] or [[objectives]], not both")
    raw = document.get("objectives", [document.get("objective", {"metric": "val_loss"})])
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(o, dict) for o in raw):
        raise UserError(f'{where}: objectives must be tables with a metric, e.g. [[objectives]] metric = "val_loss"')
    objectives = []
    for entry in raw:
        objective = from_dict(Objective, entry, where, prefix="objective.")
        if not objective.direction:
            objective = replace(objective, direction=EVALUATOR_METRICS.get(objective.metric, "minimize"))
        objectives.append(objective)
    if len({o.metric for o in objectives}) < len(objectives):
        raise UserError(f"{where}: an objective metric is listed twice")
    return tuple(objectives)


def _recipe_reference(reference: str, study_file: Path) -> str:
    """A recipe path is taken relative to the study file when it exists there; names stay names."""
    beside = study_file.parent / reference
    return str(beside) if reference.endswith(".toml") and beside.is_file() else reference


def make_sampler(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    """The study's sampler with its arguments; a wrong argument is a UserError naming it."""
    classes = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    classes["nsga2"] = optuna.samplers.NSGAIISampler
    if spec.sampler not in classes:
        raise UserError(f"{spec.path}: sampler.type must be one of {', '.join(SAMPLERS)}, got {spec.sampler!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return classes[spec.sampler](seed=seed, **spec.sampler_args)
    except (TypeError, ValueError) as error:
        raise UserError(f"{spec.path}: [sampler] {spec.sampler}: {error}") from None


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The study's pruner; pruning needs one objective (Optuna cannot prune multi-objective trials)."""
    if spec.pruner not in PRUNERS:
        raise UserError(f"{spec.path}: pruner.type must be one of {', '.join(PRUNERS)}, got {spec.pruner!r}")
    if spec.pruner == "none":
        if spec.pruner_args:
            raise UserError(f"{spec.path}: pruner none takes no arguments, got {', '.join(spec.pruner_args)}")
        return optuna.pruners.NopPruner()
    if len(spec.objectives) > 1:
        raise UserError(f'{spec.path}: a multi-objective study cannot prune; set [pruner] type = "none"')
    try:
        if spec.pruner == "median":
            return optuna.pruners.MedianPruner(**spec.pruner_args)
        args = {"max_resource": spec.recipe.train.epochs, **spec.pruner_args}
        return optuna.pruners.HyperbandPruner(**args)
    except (TypeError, ValueError) as error:
        raise UserError(f"{spec.path}: [pruner] {spec.pruner}: {error}") from None
