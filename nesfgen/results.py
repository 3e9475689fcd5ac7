"""The results page: the paper's Table 1 columns, regenerated from our own runs by one command.

``nesfgen results`` trains (or resumes) every run a table needs under one runs folder, evaluates each
on its test split, and writes one Markdown page: LCS6Å as mean ± std over seeds of a recipe, YBCO-like
pooled over its 20 folds (through :func:`nesfgen.crossval.cross_validate`) with the fold-to-fold spread.
The comparison with the paper is made in the pooled-over-atoms aggregation only, as the paper's code
computes Table 1; per-structure means stand beside it, labelled. A rerun resumes unfinished runs and
re-evaluates finished ones, so the page always describes the runs on disk.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nesfgen.config import load_recipe
from nesfgen.crossval import cross_validate, crossval_markdown, parse_folds
from nesfgen.errors import UserError
from nesfgen.evaluate import (
    AGGREGATION_NOTE,
    METRIC_LABELS,
    EvaluateOptions,
    Evaluation,
    evaluate,
    markdown_table,
    summarise_runs,
    write_report,
)
from nesfgen.files import atomic_write_text, output_folder
from nesfgen.metrics import PAPER_METRICS
from nesfgen.options import comma_list
from nesfgen.progress import Progress
from nesfgen.train import RunStatus, TrainProgress, run_status, train_or_resume

TABLES = ("lcs6", "ybco")


@dataclass(frozen=True, kw_only=True)
class ResultsOptions:
    """``runs``: where every run lives (``RUNS/lcs6/seed-K``, ``RUNS/ybco/fold-K``); ``out``: the page.

    ``train=false`` only evaluates the runs that have finished and lists the missing ones with the
    command that makes them.
    """

    runs: str = "runs/results"
    out: str | None = None  # None: RUNS/results.md
    tables: str = ",".join(TABLES)
    seeds: int = 3
    folds: str = "0-19"
    lcs6_recipe: str = "fast-lcs6"
    ybco_recipe: str = "fast-ybco"
    train: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(comma_list(self.tables)) - set(TABLES))
        if unknown or not comma_list(self.tables):
            raise UserError(f"tables={self.tables!r}: expected a comma list of {', '.join(TABLES)}")
        if self.seeds < 1:
            raise UserError(f"seeds={self.seeds}: expected at least 1 seed")
        parse_folds(self.folds)

    @property
    def page(self) -> Path:
        return Path(self.out) if self.out else Path(self.runs) / "results.md"


def seed_table(
    options: ResultsOptions,
    progress: TrainProgress | None = None,
    decoding: Callable[[str], Progress] | None = None,
) -> dict[str, Any]:
    """LCS6Å: train ``options.seeds`` seeds of the recipe, evaluate each finished one on its test split."""
    base = load_recipe(options.lcs6_recipe)
    folder = Path(options.runs) / "lcs6"
    evaluations: list[Evaluation] = []
    seeds, missing = [], []
    for seed in range(options.seeds):
        name, run_dir = f"seed-{seed}", folder / f"seed-{seed}"
        if options.train:
            train_or_resume(replace(base, train=replace(base.train, seed=seed)), run_dir, progress)
        status = run_status(run_dir, base.train.epochs)
        if not status.finished:
            missing.append(_train_command(options.lcs6_recipe, status, f"train.seed={seed}"))
            continue
        evaluate_options = EvaluateOptions(checkpoint=str(status.run_dir), split=base.data.test_split)
        evaluation = evaluate(evaluate_options, decoding(name) if decoding else None)
        write_report(evaluation, status.run_dir / f"eval-{evaluation.summary['dataset']}-test")
        evaluations.append(evaluation)
        seeds.append({"name": name, "seed": seed, "epochs": status.epochs, "minutes": status.minutes})
    table: dict[str, Any] = {"table": "lcs6", "recipe": base.name, "seeds": seeds, "missing": missing}
    if evaluations:
        table |= summarise_runs(evaluations)
        table["dataset"] = evaluations[0].summary["dataset"]
        table["num_structures"] = evaluations[0].summary["num_structures"]
    return table


def fold_table(options: ResultsOptions, progress: TrainProgress | None = None) -> dict[str, Any]:
    """YBCO-like: the cross-validation of every fold (trained or resumed), pooled; or the finished folds only."""
    recipe = load_recipe(options.ybco_recipe)
    folder = Path(options.runs) / "ybco"
    folds = parse_folds(options.folds)
    statuses = {fold: run_status(folder / f"fold-{fold}", recipe.train.epochs) for fold in folds}
    ready = folds if options.train else [fold for fold in folds if statuses[fold].finished]
    missing = [
        _train_command(options.ybco_recipe, statuses[fold], f"data.fold={fold}") for fold in folds if fold not in ready
    ]
    table: dict[str, Any] = {"table": "ybco", "recipe": recipe.name, "missing": missing, "folds": ready}
    if ready:
        table |= cross_validate(recipe, ready, folder, progress, train_folds=options.train)
        table["minutes"] = sum(run_status(folder / f"fold-{fold}").minutes or 0.0 for fold in ready)
    return table


def _train_command(recipe: str, status: RunStatus, key: str) -> str:
    if (status.run_dir / "last.pt").is_file():
        return f"nesfgen train resume={status.run_dir}"
    return f"nesfgen train recipe={recipe} {key} out={status.run_dir}"


def build_results(
    options: ResultsOptions,
    progress: TrainProgress | None = None,
    decoding: Callable[[str], Progress] | None = None,
) -> dict[str, Any]:
    """Every requested table, then the page written atomically to ``options.page``."""
    started = time.perf_counter()
    output_folder(Path(options.runs), "runs folder")
    output_folder(options.page.parent, "results folder")
    chosen = comma_list(options.tables)
    tables = []
    if "lcs6" in chosen:
        tables.append(seed_table(options, progress, decoding))
    if "ybco" in chosen:
        tables.append(fold_table(options, progress))
    result = {"runs": options.runs, "page": str(options.page), "tables": tables}
    result["seconds"] = time.perf_counter() - started
    report = results_markdown(result, options)
    atomic_write_text(options.page, report)
    atomic_write_text(options.page.with_suffix(".json"), json.dumps(result, indent=1, default=str))
    return {**result, "report": report, "files": [str(options.page), str(options.page.with_suffix(".json"))]}


def results_markdown(result: dict[str, Any], options: ResultsOptions) -> str:
    """The page: how it was made, then one section per table."""
    command = (
        f"nesfgen results runs={options.runs} out={options.page} tables={options.tables} seeds={options.seeds} "
        f"folds={options.folds} lcs6_recipe={options.lcs6_recipe} ybco_recipe={options.ybco_recipe}"
    )
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# Results against the paper's Table 1\n",
        f"Generated {date} by\n\n```\n{command}\n```\n",
        f"{AGGREGATION_NOTE}\n",
    ]
    for table in result["tables"]:
        parts.append(_seed_section(table) if table["table"] == "lcs6" else _fold_section(table))
    return "\n".join(parts)


def _seed_section(table: dict[str, Any]) -> str:
    lines = [f"## LCS6Å test split: `{table['recipe']}`, mean ± std over seeds\n"]
    if table["seeds"]:
        seeds = ", ".join(str(run["seed"]) for run in table["seeds"])
        lines.append(f"{len(table['seeds'])} seeds ({seeds}), {table['num_structures']} test structures each.\n")
        lines.append(markdown_table({**table["mean"], "dataset": table["dataset"]}, table["std"]))
        lines.append(_per_run_table(table["seeds"], table["each"], "seed"))
    else:
        lines.append("No seed has finished training yet.\n")
    lines.append(_missing(table["missing"]))
    return "\n".join(lines)


def _fold_section(table: dict[str, Any]) -> str:
    lines = [f"## YBCO-like: `{table['recipe']}`, test splits of every fold pooled\n"]
    if table.get("folds"):
        lines.append(crossval_markdown(table, "ybco"))
        lines.append(f"\nTraining took {table['minutes']:.1f} minutes over {len(table['folds'])} folds.\n")
    else:
        lines.append("No fold has finished training yet.\n")
    lines.append(_missing(table["missing"]))
    return "\n".join(lines)


def _per_run_table(runs: list[dict[str, Any]], summaries: list[dict[str, Any]], label: str) -> str:
    """Each run's pooled figures and training time, so a seed far from the others shows."""
    header = f"| {label} | epochs | training [min] | " + " | ".join(METRIC_LABELS[m] for m in PAPER_METRICS) + " |"
    lines = ["", "Each run, pooled over atoms:", "", header, "|---" * (3 + len(PAPER_METRICS)) + "|"]
    for run, summary in zip(runs, summaries):
        figures = " | ".join(f"{summary['reference'][m]:.4g}" for m in PAPER_METRICS)
        minutes = f"{run['minutes']:.1f}" if run["minutes"] is not None else "?"
        lines.append(f"| {run[label]} | {run['epochs']} | {minutes} | {figures} |")
    return "\n".join(lines) + "\n"


def _missing(commands: list[str]) -> str:
    if not commands:
        return ""
    listed = "\n".join(commands)
    return f"\nNot finished ({len(commands)}); each continues or starts with:\n\n```\n{listed}\n```\n"
