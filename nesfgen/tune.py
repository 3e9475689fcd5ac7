"""Hyperparameter searches with Optuna: study files, trials that train (and evaluate) a recipe, shared storage.

A study file (``studies/NAME.toml``) names a base recipe, fixed overrides, a per-trial budget, a
search space over dotted recipe keys, one or more objectives, a sampler and a pruner. Each trial
trains the resolved recipe into ``runs/tune-NAME/trial-NNNN/`` and reports its validation loss every
epoch, so the pruner can stop it early. The study lives in an Optuna storage (SQLite in the run
folder by default, any database URL for many workers); running ``tune`` again joins or resumes it.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import re
import shutil
import sys
import time
import typing
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nesfgen.config import (
    Recipe,
    apply_overrides,
    from_dict,
    load_recipe,
    shipped_dir,
    shipped_toml_names,
    shipped_toml_path,
    to_dict,
    to_toml,
)
from nesfgen.errors import UserError
from nesfgen.evaluate import evaluate
from nesfgen.files import atomic_write_text, new_figure, save_figure
from nesfgen.metrics import PAPER_METRICS
from nesfgen.train import LOSS_NAMES, resolve_device, train

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

log = logging.getLogger(__name__)

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
SAMPLERS = ("tpe", "random", "nsga2")
PRUNERS = ("median", "hyperband", "none")
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
TOP_LEVEL_KEYS = (
    "name",
    "recipe",
    "baseline",
    "n_trials",
    "seed",
    "retries",
    "overrides",
    "budget",
    "objective",
    "objectives",
    "evaluate",
    "space",
    "sampler",
    "pruner",
    "storage",
)


@dataclass(frozen=True)
class Param:
    """One searched recipe key: an int or float range, or a list of choices."""

    key: str
    kind: str  # int | float | categorical
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)
        return trial.suggest_categorical(self.key, self.choices)


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # minimize | maximize

    @property
    def from_evaluator(self) -> bool:
        return self.metric in EVALUATOR_METRICS


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


class TuneProgress(Protocol):
    """What a search reports to a front end (the CLI prints a line per trial)."""

    def epoch(self, trial: int, row: dict[str, Any]) -> None: ...
    def trial(self, row: dict[str, Any]) -> None: ...


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
    _check_keys(document, TOP_LEVEL_KEYS, where, "")
    if "recipe" not in document:
        raise UserError(f"{where}: recipe = NAME is required (the recipe every trial starts from)")
    name = str(document.get("name", path.stem))
    budget = _table(document, "budget", where)
    _check_keys(budget, ("epochs", "minutes"), where, "budget.")
    fixed = {key: _override_text(value) for key, value in _flatten(_table(document, "overrides", where))}
    if "epochs" in budget:
        fixed["train.epochs"] = budget["epochs"]
    if "minutes" in budget:
        fixed["train.time_limit_minutes"] = budget["minutes"]
    try:
        recipe = load_recipe(_recipe_reference(str(document["recipe"]), path), fixed)
    except UserError as error:
        raise UserError(f"{where}: recipe and overrides: {error}") from None
    space = tuple(_param(key, value, recipe, where) for key, value in _flatten(_table(document, "space", where)))
    for param in space:
        if param.key in fixed:
            raise UserError(f"{where}: {param.key} is both searched (space) and fixed (overrides or budget)")
    objectives = _objectives(document, where)
    evaluation = _table(document, "evaluate", where)
    _check_keys(evaluation, ("split", "limit"), where, "evaluate.")
    storage = _table(document, "storage", where)
    _check_keys(storage, ("heartbeat_seconds", "grace_seconds"), where, "storage.")
    sampler_args = dict(_table(document, "sampler", where))
    pruner_args = dict(_table(document, "pruner", where))
    spec = StudySpec(
        name=name,
        path=path,
        recipe=recipe,
        space=space,
        objectives=objectives,
        n_trials=_integer(document.get("n_trials", 20), f"{where}: n_trials", minimum=1),
        seed=_integer(document.get("seed", 0), f"{where}: seed"),
        retries=_integer(document.get("retries", 1), f"{where}: retries"),
        sampler=str(sampler_args.pop("type", "tpe" if len(objectives) == 1 else "nsga2")),
        sampler_args=sampler_args,
        pruner=str(pruner_args.pop("type", "median" if len(objectives) == 1 else "none")),
        pruner_args=pruner_args,
        evaluate_split=str(evaluation.get("split", "")),
        evaluate_limit=_integer(evaluation.get("limit", 0), f"{where}: evaluate.limit"),
        heartbeat_seconds=_integer(storage.get("heartbeat_seconds", 60), f"{where}: storage.heartbeat_seconds", 1),
        grace_seconds=_integer(storage.get("grace_seconds", 180), f"{where}: storage.grace_seconds", 1),
        baseline=_baseline(recipe, space, where)
        if _flag(document.get("baseline", False), f"{where}: baseline")
        else None,
    )
    make_sampler(spec, 0)  # built once here so that a bad argument fails before any training
    make_pruner(spec)
    return spec


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{what} must be true or false, got {value!r}")
    return value


def _baseline(recipe: Recipe, space: tuple[Param, ...], where: str) -> dict[str, Any]:
    """The starting recipe's values of the searched keys, so the search is measured against it.

    Raises:
        UserError: if a value lies outside its search space (Optuna could not record it as a trial).
    """
    values: dict[str, Any] = {}
    for param in space:
        node: Any = to_dict(recipe)
        for part in param.key.split("."):
            node = node[part]
        value = _override_text(node)
        inside = value in param.choices if param.kind == "categorical" else param.low <= value <= param.high
        if not inside:
            raise UserError(
                f"{where}: baseline = true, but the recipe's {param.key} = {value!r} lies outside its search space; "
                "widen the space or drop baseline"
            )
        values[param.key] = value
    return values


def _table(document: dict, key: str, where: str) -> dict:
    value = document.get(key, {})
    if not isinstance(value, dict):
        raise UserError(f"{where}: {key} must be a table ([{key}])")
    return value


def _check_keys(table: dict, known: tuple[str, ...], where: str, prefix: str) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else ""
            raise UserError(
                f"{where}: unknown key {prefix}{key}{hint} Valid keys here: {', '.join(prefix + k for k in known)}"
            )


def _integer(value: Any, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _flatten(table: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """``{"train": {"lr": x}}`` and ``{"train.lr": x}`` both into ``[("train.lr", x)]``; a range or choice table is a leaf."""
    items = []
    for key, value in table.items():
        if isinstance(value, dict) and not value.keys() & {"low", "high", "choices"}:
            items += _flatten(value, f"{prefix}{key}.")
        else:
            items.append((prefix + key, value))
    return items


def _override_text(value: Any) -> Any:
    """TOML lists become the comma-separated text that recipe overrides parse (and Optuna can store)."""
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return value


def _recipe_reference(reference: str, study_file: Path) -> str:
    """A recipe path is taken relative to the study file when it exists there; names stay names."""
    beside = study_file.parent / reference
    return str(beside) if reference.endswith(".toml") and beside.is_file() else reference


def _field_type(recipe: Recipe, key: str) -> Any:
    """The annotated type of a dotted recipe key, ``int | None`` unwrapped to ``int``."""
    obj: Any = recipe
    annotation: Any = None
    for part in key.split("."):
        annotation = typing.get_type_hints(type(obj))[part]
        obj = getattr(obj, part)
    arguments = typing.get_args(annotation)
    if type(None) in arguments:
        return next(a for a in arguments if a is not type(None))
    return annotation


def _param(key: str, value: Any, recipe: Recipe, where: str) -> Param:
    """A search-space entry: ``{low, high[, log, step]}``, ``{choices = [...]}`` or a bare list of choices."""
    if isinstance(value, list):
        value = {"choices": value}
    if not isinstance(value, dict):
        raise UserError(
            f"{where}: space {key} must be a range {{ low = .., high = .. }} or a list of choices, got {value!r}"
        )
    _check_keys(value, ("low", "high", "log", "step", "choices"), where, f"space.{key}.")

    def check(candidate: Any) -> None:
        try:
            apply_overrides(recipe, {key: candidate})
        except UserError as error:
            raise UserError(f"{where}: space: {error}") from None

    if "choices" in value:
        if value.keys() - {"choices"}:
            raise UserError(f"{where}: space {key} gives choices; low, high, log and step belong to ranges")
        choices = tuple(_override_text(choice) for choice in value["choices"])
        if not choices:
            raise UserError(f"{where}: space {key} has no choices")
        for choice in choices:
            check(choice)
        return Param(key, "categorical", choices=choices)
    if "low" not in value or "high" not in value:
        raise UserError(f"{where}: space {key} needs both low and high (or choices = [...])")
    try:
        annotation = _field_type(recipe, key)
    except (KeyError, AttributeError):
        check(value["low"])  # raises the recipe's unknown-key message, with the closest valid key
        raise
    if annotation not in (int, float):
        raise UserError(f"{where}: space {key} is not a number setting; give choices = [...] instead of low/high")
    check(value["low"])
    check(value["high"])
    kind = "int" if annotation is int else "float"
    param = Param(
        key,
        kind,
        low=annotation(value["low"]),
        high=annotation(value["high"]),
        step=value.get("step"),
        log=bool(value.get("log", False)),
    )
    try:
        if kind == "int":
            optuna.distributions.IntDistribution(int(param.low), int(param.high), log=param.log, step=param.step or 1)
        else:
            optuna.distributions.FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    except ValueError as error:
        raise UserError(f"{where}: space {key}: {error}") from None
    return param


def _objectives(document: dict, where: str) -> tuple[Objective, ...]:
    if "objective" in document and "objectives" in document:
        raise UserError(f"{where}: give either [objective] or [[objectives]], not both")
    raw = document.get("objectives", [document.get("objective", {"metric": "val_loss"})])
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(o, dict) for o in raw):
        raise UserError(f'{where}: objectives must be tables with a metric, e.g. [[objectives]] metric = "val_loss"')
    known = (*TRAINING_METRICS, *EVALUATOR_METRICS)
    objectives = []
    for entry in raw:
        _check_keys(entry, ("metric", "direction"), where, "objective.")
        metric = str(entry.get("metric", ""))
        if metric not in known:
            close = difflib.get_close_matches(metric, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UserError(f"{where}: unknown objective metric {metric!r}{hint} Valid metrics: {', '.join(known)}")
        direction = str(entry.get("direction", EVALUATOR_METRICS.get(metric, "minimize")))
        if direction not in ("minimize", "maximize"):
            raise UserError(f"{where}: objective {metric} direction must be minimize or maximize, got {direction!r}")
        objectives.append(Objective(metric, direction))
    if len({o.metric for o in objectives}) < len(objectives):
        raise UserError(f"{where}: an objective metric is listed twice")
    return tuple(objectives)


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


#: ``scheme:`` at the start of a storage= value: a URL was meant (two letters at least, so not a drive letter).
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
STORAGE_FORMS = "a database URL such as postgresql://user:password@host/db or sqlite:///study.db, or a file path"


def storage_url(spec: StudySpec, storage: str | None = None) -> str:
    """The storage URL: the one given, a file path as SQLite, else ``runs/tune-NAME/study.db``.

    Raises:
        UserError: for a value that starts like a URL but is not one (``postgresql:/host/db``), which would
            otherwise become a SQLite file of that name.
    """
    if storage and URL_SCHEME.match(storage):
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(storage)
        except ArgumentError:
            url = None
        if url is None or "://" not in storage:
            raise UserError(f"storage={redact(storage)} is not a valid database URL; give {STORAGE_FORMS}")
        return storage
    path = Path(storage) if storage else spec.folder / "study.db"
    return f"sqlite:///{path.resolve()}"


def redact(url: str) -> str:
    """A storage URL fit to print or log: its password replaced by ***."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:  # not a URL: hide whatever sits between "user:" and "@"
        return re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1***@", url)
    return parsed.render_as_string(hide_password=True) if parsed.password else url


def open_storage(spec: StudySpec, storage: str | None = None, create: bool = True) -> optuna.storages.RDBStorage:
    """An RDB storage with a heartbeat, so a killed worker's trial is failed and queued again."""
    url = storage_url(spec, storage)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not create and not path.is_file():
            raise UserError(f"no study database at {path}; run `nesfgen tune study={spec.name}` first")
        path.parent.mkdir(parents=True, exist_ok=True)
    # SQLite: wait for the other workers' write locks instead of failing at once.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=spec.retries)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine,
                    heartbeat_interval=spec.heartbeat_seconds,
                    grace_period=spec.grace_seconds,
                    heartbeat_stale_trial_callback=retry,
                )
        except Exception as error:  # SQLAlchemy raises many types for a bad URL or an unreachable server
            # Workers starting together race to create the tables: the loser finds them made and retries.
            if any(race in str(error) for race in ("already exists", "UNIQUE constraint", "locked")) and attempt < 4:
                time.sleep(0.5 * (attempt + 1))
                continue
            reason = str(error).splitlines()[0]
            password = _password(url)
            if password:
                reason = reason.replace(password, "***")
            raise UserError(f"storage {redact(url)!r} cannot be opened ({reason}); give {STORAGE_FORMS}") from None
    raise AssertionError("unreachable")


def _password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    return make_url(url).password


def open_study(spec: StudySpec, storage: str | None = None, create: bool = True, seed: int = 0) -> optuna.Study:
    """Create the study in its storage, or join it when it exists (same name, same objectives)."""
    rdb = open_storage(spec, storage, create)
    try:
        if create:
            study = optuna.create_study(
                study_name=spec.name,
                storage=rdb,
                directions=spec.directions,
                sampler=make_sampler(spec, seed),
                pruner=make_pruner(spec),
                load_if_exists=True,
            )
        else:
            study = optuna.load_study(study_name=spec.name, storage=rdb, pruner=make_pruner(spec))
    except KeyError:
        raise UserError(
            f"storage {redact(rdb.url)} holds no study {spec.name!r}; run `nesfgen tune study={spec.name}` first"
        ) from None
    found = [d.name.lower() for d in study.directions]
    if found != spec.directions:
        raise UserError(
            f"study {spec.name!r} in {redact(rdb.url)} optimises {found}, but {spec.path} asks for {spec.directions}; "
            "give the changed study another name"
        )
    if create and "study_file" not in study.user_attrs:
        study.set_user_attr("study_file", spec.path.read_text())
        if spec.baseline is not None:
            study.enqueue_trial(spec.baseline, user_attrs={"baseline": True}, skip_if_exists=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([o.metric for o in spec.objectives])  # shown by optuna-dashboard
    return study


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
        summary = evaluate(
            str(run_dir),
            recipe.data.dataset_name,
            spec.evaluate_split or recipe.data.val_split,
            limit=spec.evaluate_limit,
            device=str(resolve_device(recipe.train.device)),
        ).summary
        metrics.update(evaluator_metrics(summary))
    # An undefined metric (say, position error when nothing was decoded) ranks as the worst value.
    values = [metrics[o.metric] if not math.isnan(metrics[o.metric]) else _worst(o.direction) for o in spec.objectives]
    trial.set_user_attr("metrics", metrics)
    _finish_folder(run_dir, {**record, "state": "complete", "values": values, "metrics": metrics}, keep_best=True)
    return values[0] if len(values) == 1 else values


def trial_row(spec: StudySpec, trial: FrozenTrial) -> dict[str, Any]:
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
    towards ``n_trials``, and three failures in a row stop this worker.

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

    def objective(trial: optuna.Trial) -> float | list[float]:
        ran.append(trial.number)
        try:
            value = run_trial(spec, trial, progress)
        except optuna.TrialPruned:
            failures.clear()
            raise
        except (Exception, KeyboardInterrupt) as error:
            attempt = int(trial.user_attrs.get("attempt", 0))
            if not isinstance(error, UserError) and attempt < spec.retries:
                study.enqueue_trial(
                    trial.params, user_attrs={"attempt": attempt + 1, "retry_of": trial.number}, skip_if_exists=False
                )
            failures.append(f"trial {trial.number}: {type(error).__name__}: {error}")
            if len(failures) >= 3:
                study.stop()
            raise
        failures.clear()
        return value

    def finished(study: optuna.Study, trial: FrozenTrial) -> None:
        if progress:
            progress.trial(trial_row(spec, trial))

    if len(study.get_trials(deepcopy=False, states=DONE)) < target:
        study.optimize(
            objective,
            timeout=timeout,
            catch=(Exception,),
            callbacks=[optuna.study.MaxTrialsCallback(target, states=DONE), finished],
        )
    if len(failures) >= 3:
        raise UserError(f"study {spec.name}: three trials in a row failed; the last: {failures[-1]}")
    return {**summarise(spec, study, storage), "ran": ran}


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
        "best": [trial_row(spec, t) for t in best_trials(spec, study)],
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

    return [trial_row(spec, t) for t in sorted(study.get_trials(deepcopy=False), key=order)]


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
