"""k-fold cross-validation as the paper runs it on YBCO-like: train and evaluate every fold, pool the test sets."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nesfgen.checkpoint import read_checkpoint
from nesfgen.config import Recipe, load_recipe, parse_value
from nesfgen.ensemble import MAX_MEMBERS, MEMBER_SEPARATOR
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
from nesfgen.options import comma_list, recipe_words
from nesfgen.progress import Progress
from nesfgen.run_folder import check_same_recipe
from nesfgen.train import TrainProgress, train_or_resume

#: a partner recipe's name, which names its run folder of each fold (``fold-K-with-NAME``)
PARTNER_NAME = re.compile(r"[A-Za-z0-9._-]+")


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
    members: int = 1,
    partners: tuple[Recipe, ...] = (),
) -> dict[str, Any]:
    """Train (or resume) one run per fold under ``out/fold-K``, evaluate each on its test split, pool them.

    ``members`` > 1 trains as many runs a fold, the recipe's seed plus 0, 1, ... (``out/fold-K``,
    ``out/fold-K-member-1``, ...), and decodes them as one field (:mod:`nesfgen.ensemble`); ``partners``
    instead trains each of these other recipes beside the recipe (``out/fold-K-with-NAME``), decoded likewise.

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

    check_ensemble(recipe, members, partners, out)
    for fold in folds:  # every fold's data, before hours of training stop at the first one missing
        resolve_dataset(replace(recipe.data, fold=fold).dataset_name)
    evaluations = []
    scored = split or recipe.data.test_split
    for fold in folds:
        fold_recipe = replace(recipe, data=replace(recipe.data, fold=fold))
        runs = fold_members(fold_recipe, out, members, partners)
        run_dirs = [run_dir for _, run_dir in runs]
        for run_recipe, run_dir in runs:
            if members > 1:
                check_member_seed(run_dir, run_recipe)
            if train_folds:
                train_or_resume(run_recipe, run_dir, progress)  # refuses a folder holding another recipe's run
            else:
                check_same_recipe(run_dir, run_recipe)  # nor is one evaluated as this recipe's
        options = EvaluateOptions(
            checkpoint=MEMBER_SEPARATOR.join(str(run_dir) for run_dir in run_dirs),
            data=fold_recipe.data.dataset_name,
            split=scored,
            fit_steps=fit_steps,
        )
        name = f"{scored}{fitted_suffix(fit_steps)}{ensemble_suffix(members, partners)}"
        evaluation = evaluate(options, decoding(f"fold-{fold} {name}") if decoding else None)
        write_report(evaluation, run_dirs[0] / f"eval-{name}")
        evaluations.append(evaluation)
    rows = [e.rows for e in evaluations]
    summary = summarise_runs([e.summary for e in evaluations])
    pooled = pool_folds(rows)
    return {
        "recipe": recipe.name,
        "folds": folds,
        "split": scored,
        "fit_steps": fit_steps,
        "members": members + len(partners),
        "partners": [partner.name for partner in partners],
        "rows": rows,
        "pooled": pooled,
        **summary,
    }


def fold_members(
    fold_recipe: Recipe, out: Path, members: int = 1, partners: tuple[Recipe, ...] = ()
) -> list[tuple[Recipe, Path]]:
    """The runs of one fold, each a recipe and its folder: the recipe in ``out/fold-K``, then each further seed in
    ``out/fold-K-member-M`` or each partner recipe (at this fold, its own seed) in ``out/fold-K-with-NAME``."""
    fold = fold_recipe.data.fold
    runs = [(fold_recipe, out / f"fold-{fold}")]
    runs += [(member_recipe(fold_recipe, member), out / f"fold-{fold}-member-{member}") for member in range(1, members)]
    for partner in partners:
        runs.append((replace(partner, data=replace(partner.data, fold=fold)), out / f"fold-{fold}-with-{partner.name}"))
    return runs


def member_recipe(recipe: Recipe, member: int) -> Recipe:
    """Member ``member`` (0, 1, ...) of a fold's ensemble: the recipe at its own seed plus ``member``."""
    return replace(recipe, train=replace(recipe.train, seed=recipe.train.seed + member))


def ensemble_suffix(members: int, partners: tuple[Recipe, ...] = ()) -> str:
    """What ends the name of a report of a fold's runs: ``-ensembleN`` for seeds, ``-ensemble-with-A-with-B`` for
    partner recipes (as their folders are named), or nothing for one run."""
    if partners:
        return "-ensemble" + "".join(f"-with-{partner.name}" for partner in partners)
    return f"-ensemble{members}" if members > 1 else ""


#: the words ``nesfgen cv`` takes for a fold's ensemble and its runs folder, which the refusals name
CV_WORDS = ("members", "partners", "out")


def check_ensemble(
    recipe: Recipe,
    members: int,
    partners: tuple[Recipe, ...],
    out: Path,
    words: tuple[str, str, str] = CV_WORDS,
) -> None:
    """Refuse, before any training, a fold's ensemble that cannot be trained or decoded as one field.

    A number of seeds out of range, seeds and partners together, a runs folder whose name would split the members
    apart, and partners that are no second model of the same folds (see :func:`check_partner`). ``words`` names
    the options in the messages (``nesfgen results`` calls them ``ybco_members``, ``ybco_partners``, ``runs``).
    """
    members_word, partners_word, out_word = words
    if not 1 <= members <= MAX_MEMBERS:
        raise UserError(f"{members_word}={members}: expected 1 (one run a fold) to {MAX_MEMBERS} (an ensemble a fold)")
    if members > 1 and partners:
        raise UserError(
            f"{members_word}= and {partners_word}= both given: a fold's ensemble is seeds of one recipe or recipes"
        )
    if 1 + len(partners) > MAX_MEMBERS:
        raise UserError(f"{partners_word}= names {len(partners)} recipes: at most {MAX_MEMBERS - 1} beside the recipe")
    if (members > 1 or partners) and MEMBER_SEPARATOR in str(out):
        raise UserError(
            f"{out_word}={out}: an ensemble's runs folder may not hold {MEMBER_SEPARATOR!r}, which joins members"
        )
    seen = {recipe.name}
    for partner in partners:
        if partner.name in seen:
            raise UserError(
                f"{partners_word}={partner.name}: named twice, or the recipe itself; each partner is another recipe"
            )
        seen.add(partner.name)
        check_partner(recipe, partner, partners_word)


def check_partner(recipe: Recipe, partner: Recipe, word: str = "partners") -> None:
    """Refuse a partner recipe that is no second model of the same folds: a name that cannot name a folder,
    another dataset, the same training, or a start that gives another species table or box (which
    :mod:`nesfgen.ensemble` needs shared)."""
    said = f"{word}={partner.name}"
    if not PARTNER_NAME.fullmatch(partner.name):
        raise UserError(f"{said}: the recipe's name names its run folders; expected letters, digits, . _ -")
    if replace(partner.data, fold=recipe.data.fold) != recipe.data:
        differs = (
            f"trains on {partner.data.name}, {recipe.name} on {recipe.data.name}"
            if partner.data.name != recipe.data.name
            else f"sets its data (splits, limit) otherwise than {recipe.name}"
        )
        raise UserError(f"{said}: {differs}; a partner trains on the same folds as the recipe")
    if replace(partner, name=recipe.name) == recipe:
        raise UserError(f"{said}: trains exactly what {recipe.name} trains; give another recipe")
    start = {
        "train.init_from": (partner.train.init_from, recipe.train.init_from),
        "train.fine_tune": (partner.train.fine_tune, recipe.train.fine_tune),
        "model.variational": (partner.model.variational, recipe.model.variational),
    }
    for key, (theirs, ours) in start.items():
        if theirs != ours:
            raise UserError(
                f"{said}: {key} = {theirs!r} there, {ours!r} in {recipe.name}; runs decoded as one field share "
                "their species table and box, which the start sets, so a partner starts as the recipe does"
            )


def check_member_seed(run_dir: Path, recipe: Recipe) -> None:
    """Refuse a member's folder holding a run of another seed: two copies of one seed are no ensemble."""
    if (run_dir / "last.pt").is_file():
        seed = read_checkpoint(run_dir / "last.pt")["recipe"]["train"]["seed"]
        if seed != recipe.train.seed:
            raise UserError(f"{run_dir} holds a run of seed {seed}, but this member is seed {recipe.train.seed}")


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
        f"{f', latents fitted for {fitted} steps' if (fitted := result.get('fit_steps')) else ''}"
        f"{_members_phrase(result)})\n\n"
        f"{markdown_table({**result['pooled'], 'dataset': dataset, 'split': split})}\n{AGGREGATION_NOTE}\n"
        f"Empty decodes: {result['pooled']['empty_decodes']}.\n"
    )
    if result["std"] is None:  # one fold: the pooled table is all there is
        return pooled
    return (
        f"{pooled}\n{'#' * (level + 1)} Fold to fold: mean ± std of each fold's own figures ({len(folds)} folds)\n\n"
        f"{markdown_table({**result['mean'], 'dataset': dataset, 'split': split}, result['std'])}"
    )


def _members_phrase(result: dict[str, Any]) -> str:
    """How many runs a fold the result decodes as one field, and which recipes when they are partners."""
    if partners := result.get("partners"):
        return f", {result['recipe']} with {' and '.join(partners)} a fold decoded as one field"
    return f", {members} runs a fold decoded as one field" if (members := result.get("members", 1)) > 1 else ""


@dataclass(frozen=True, kw_only=True)
class CrossValidationOptions:
    """What ``nesfgen cv`` runs: ``recipe`` (overrides applied) over ``folds``, its runs and reports under ``out``.

    ``split``: the test splits (None) or the validation splits a recipe is chosen on; ``fit_steps``: latents fitted
    to their structures first; ``members``: runs a fold decoded as one field (seeds of the recipe); ``partners``:
    other recipes trained beside it on each fold and decoded with it as one field. All refused before any training.
    """

    recipe: Recipe
    folds: list[int]
    out: Path
    split: str | None = None
    fit_steps: int = 0
    members: int = 1
    partners: tuple[Recipe, ...] = ()

    def __post_init__(self) -> None:
        data = self.recipe.data
        if self.split is not None and self.split not in (data.val_split, data.test_split):
            raise UserError(f"split={self.split}: expected {data.val_split} or {data.test_split}")
        EvaluateOptions(fit_steps=self.fit_steps)  # a fit_steps out of range is refused by name
        check_ensemble(self.recipe, self.members, self.partners, self.out)

    @classmethod
    def from_words(cls, arguments: list[str], folds: str) -> CrossValidationOptions:
        """``recipe=NAME`` (paper-ybco), ``out=``, ``split=``, ``fit_steps=``, ``members=``, ``partners=A,B`` and
        recipe overrides (applied to the partners too)."""
        words = ("recipe", "out", "split", "fit_steps", "members", "partners")
        overrides, own = recipe_words(arguments, "cv", words)
        recipe = load_recipe(own.get("recipe", "paper-ybco"), overrides)
        partners = tuple(load_recipe(name, overrides) for name in comma_list(own.get("partners", "")))
        return cls(
            recipe=recipe,
            folds=parse_folds(folds),
            out=Path(own.get("out") or f"runs/cv-{recipe.name}"),
            split=own.get("split"),
            fit_steps=parse_value(own.get("fit_steps", "0"), int, "fit_steps"),
            members=parse_value(own.get("members", "1"), int, "members"),
            partners=partners,
        )


def cross_validate_into(
    options: CrossValidationOptions,
    progress: TrainProgress | None = None,
    decoding: Callable[[str], Progress] | None = None,
) -> dict[str, Any]:
    """:func:`cross_validate`, then its report into ``options.out``; the result carries the markdown as ``report``.

    The test splits (the default) are reported in cv.md and cv.json; another ``split``, e.g. the validation
    splits a recipe is chosen on, in cv-SPLIT.md and cv-SPLIT.json beside them, so neither overwrites the other;
    latents fitted for ``fit_steps`` (not the paper's one-pass protocol) in files ending ``-fitN`` likewise, and
    ensembles in files ending ``-ensembleN`` (``members`` seeds a fold) or ``-ensemble-with-NAME`` (``partners``).
    """
    recipe, out, fit_steps, members = options.recipe, options.out, options.fit_steps, options.members
    partners = options.partners
    result = cross_validate(
        recipe,
        options.folds,
        out,
        progress,
        split=options.split,
        fit_steps=fit_steps,
        decoding=decoding,
        members=members,
        partners=partners,
    )
    report = crossval_markdown(result, recipe.data.name)
    stem = ("cv" if result["split"] == recipe.data.test_split else f"cv-{result['split']}") + fitted_suffix(fit_steps)
    stem += ensemble_suffix(members, partners)
    files = [out / f"{stem}.md", out / f"{stem}.json"]
    atomic_write_text(files[0], report)
    atomic_write_text(files[1], json.dumps(result, indent=1, default=str))
    return {**result, "report": report, "files": [str(path) for path in files]}
