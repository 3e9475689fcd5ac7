"""k-fold cross-validation as the paper runs it on YBCO-like: train and evaluate every fold, pool the test sets."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from nesfgen.config import Recipe
from nesfgen.errors import UserError
from nesfgen.evaluate import (
    AGGREGATION_NOTE,
    EvaluateOptions,
    evaluate,
    fitted_suffix,
    markdown_table,
    summarise_runs,
    write_report,
)
from nesfgen.files import atomic_write_text
from nesfgen.metrics import mean_over_structures, pool_over_atoms
from nesfgen.progress import Progress
from nesfgen.run_folder import check_same_recipe
from nesfgen.train import TrainProgress, train_or_resume


def parse_folds(text: str) -> list[int]:
    """``0-19``, ``0,3,5`` or ``2`` into fold numbers."""
    folds: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                first, last = (int(x) for x in part.split("-"))
                folds += range(first, last + 1)
            elif part.strip():
                folds.append(int(part))
    except ValueError:
        raise UserError(f"folds must look like 0-19 or 0,3,5; got {text!r}") from None
    if not folds:
        raise UserError("folds selects no fold")
    return sorted(set(folds))  # a fold named twice would be pooled twice


def cross_validate(
    recipe: Recipe,
    folds: list[int],
    out: Path,
    progress: TrainProgress | None = None,
    train_folds: bool = True,
    split: str | None = None,
    fit_steps: int = 0,
    decoding: Callable[[str], Progress] | None = None,
) -> dict[str, Any]:
    """Train (or resume) one run per fold under ``out/fold-K``, evaluate each on its test split, pool them.

    ``train_folds=False`` evaluates the folds' runs as they are (each must hold a best.pt). ``split``
    evaluates another split than the recipe's test split, e.g. the validation splits a recipe is chosen on.
    ``fit_steps`` fits each structure's latent before decoding (``nesfgen evaluate fit_steps=``), reported
    under ``eval-SPLIT-fitN`` beside the one-pass evaluation. ``decoding(label)`` gives the progress callback
    of each fold's evaluation (label ``fold-K SPLIT``, ``-fitN`` when fitted), as decoding a fold takes minutes.

    Returns ``pooled``: every fold's test structures scored as one set, laid out like an evaluation
    summary (``pooled["reference"]`` pools all folds' atoms, the paper's YBCO-like column); the
    fold-to-fold mean ± std of each fold's own figures (``mean``, ``std``, ``each``); and each fold's
    per-structure ``rows``, from which :func:`pool_folds` pools them again.
    """
    from nesfgen.data.names import resolve_dataset

    for fold in folds:  # every fold's data, before hours of training stop at the first one missing
        resolve_dataset(replace(recipe.data, fold=fold).dataset_name)
    evaluations = []
    for fold in folds:
        fold_recipe = replace(recipe, data=replace(recipe.data, fold=fold))
        run_dir = out / f"fold-{fold}"
        if train_folds:
            train_or_resume(fold_recipe, run_dir, progress)  # refuses a folder holding another recipe's run
        else:
            check_same_recipe(run_dir, fold_recipe)  # nor is one evaluated as this recipe's
        scored = split or recipe.data.test_split
        options = EvaluateOptions(
            checkpoint=str(run_dir), data=fold_recipe.data.dataset_name, split=scored, fit_steps=fit_steps
        )
        name = f"{scored}{fitted_suffix(fit_steps)}"
        evaluation = evaluate(options, decoding(f"fold-{fold} {name}") if decoding else None)
        write_report(evaluation, run_dir / f"eval-{name}")
        evaluations.append(evaluation)
    rows = [e.rows for e in evaluations]
    summary = summarise_runs([e.summary for e in evaluations])
    pooled = pool_folds(rows)
    return {
        "recipe": recipe.name,
        "folds": folds,
        "split": scored,
        "fit_steps": fit_steps,
        "rows": rows,
        "pooled": pooled,
        **summary,
    }


def pool_folds(rows: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Every fold's structures (one list of rows a fold) scored as one set, laid out like an evaluation summary."""
    together = [row for fold_rows in rows for row in fold_rows]
    return {**mean_over_structures(together), "reference": pool_over_atoms(together)}


def crossval_markdown(result: dict[str, Any], dataset: str, level: int = 1) -> str:
    """cv.md: the pooled table (compare with the paper there) and the fold-to-fold spread.

    ``level`` is the Markdown heading level of its title, so a page can hold it as a subsection.
    """
    folds, split = result["folds"], result.get("split", "test")
    pooled = (
        f"{'#' * level} {result['recipe']}: folds {', '.join(str(fold) for fold in folds)} "
        f"({result['pooled']['num_structures']} {split} structures pooled"
        f"{f', latents fitted for {fitted} steps' if (fitted := result.get('fit_steps')) else ''})\n\n"
        f"{markdown_table({**result['pooled'], 'dataset': dataset, 'split': split})}\n{AGGREGATION_NOTE}\n"
        f"Empty decodes: {result['pooled']['empty_decodes']}.\n"
    )
    if result["std"] is None:  # one fold: the pooled table is all there is
        return pooled
    return (
        f"{pooled}\n{'#' * (level + 1)} Fold to fold: mean ± std of each fold's own figures ({len(folds)} folds)\n\n"
        f"{markdown_table({**result['mean'], 'dataset': dataset, 'split': split}, result['std'])}"
    )


def cross_validate_into(
    recipe: Recipe,
    folds: list[int],
    out: Path,
    progress: TrainProgress | None = None,
    decoding: Callable[[str], Progress] | None = None,
    split: str | None = None,
    fit_steps: int = 0,
) -> dict[str, Any]:
    """:func:`cross_validate`, then its report into ``out``; the result carries the markdown as ``report``.

    The test splits (the default) are reported in cv.md and cv.json; another ``split``, e.g. the validation
    splits a recipe is chosen on, in cv-SPLIT.md and cv-SPLIT.json beside them, so neither overwrites the other;
    latents fitted for ``fit_steps`` (not the paper's one-pass protocol) in files ending ``-fitN`` likewise.
    """
    if split is not None and split not in (recipe.data.val_split, recipe.data.test_split):
        raise UserError(f"split={split}: expected {recipe.data.val_split} or {recipe.data.test_split}")
    EvaluateOptions(fit_steps=fit_steps)  # a fit_steps out of range is refused before any training
    result = cross_validate(recipe, folds, out, progress, split=split, fit_steps=fit_steps, decoding=decoding)
    report = crossval_markdown(result, recipe.data.name)
    stem = ("cv" if result["split"] == recipe.data.test_split else f"cv-{result['split']}") + fitted_suffix(fit_steps)
    files = [out / f"{stem}.md", out / f"{stem}.json"]
    atomic_write_text(files[0], report)
    atomic_write_text(files[1], json.dumps(result, indent=1, default=str))
    return {**result, "report": report, "files": [str(path) for path in files]}
