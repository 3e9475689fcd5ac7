"""A plan to a dataset folder: page through each query, convert, filter, rank, split and write atomically."""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from nesfgen.config import parse_overrides
from nesfgen.crystal import Crystal
from nesfgen.data.importers import seeded_split
from nesfgen.data.materials_project.cache import PageCounts, cached_pages, query_folder, retrying
from nesfgen.data.materials_project.client import MPResterClient, SummaryClient, api_key, mp_api_version
from nesfgen.data.materials_project.convert import FIELDS, crystal_from_document
from nesfgen.data.materials_project.options import plan_fetch, selection_keys
from nesfgen.data.materials_project.selections import YBCO_LENGTHS, FetchPlan, Selection
from nesfgen.data.store import Dataset, data_dir, write_dataset
from nesfgen.errors import UserError
from nesfgen.progress import Progress

log = logging.getLogger(__name__)

MP_LICENSE = (
    "Materials Project data, CC BY 4.0 (materialsproject.org); cite A. Jain et al., APL Materials 1, 011002 (2013)"
)


@dataclass(frozen=True)
class FetchReport:
    """What a fetch downloaded, kept and wrote, for the caller to show the user."""

    datasets: list[Dataset]
    documents: int  # documents read (downloaded or cached)
    pages_downloaded: int
    pages_cached: int
    kept: int
    filtered: dict[str, int]  # reason -> count of valid structures the selection leaves out
    skipped: list[tuple[str, str]]  # (material id, reason) of documents that are not valid structures
    cache: Path
    notes: list[str] = field(default_factory=list)


def default_out(name: str) -> Path:
    """Where ``nesfgen data fetch NAME`` writes without ``--out``: ``mp-NAME`` in the data directory."""
    if name == "query":
        raise UserError("nesfgen data fetch query needs --out DIR: the dataset folder to write")
    return data_dir() / f"mp-{name}"


def fold_names(out: Path, folds: int) -> list[Path]:
    """The folders a plan writes: OUT itself, or OUT-fold0 ... (then ``data.name=OUT data.fold=K`` trains on one)."""
    return [out] if folds == 1 else [out.with_name(f"{out.name}-fold{k}") for k in range(folds)]


def fetch_dataset(
    plan: FetchPlan,
    out: str | Path,
    client: SummaryClient,
    retries: int = 5,
    backoff: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[int, int | None], None] | None = None,
) -> FetchReport:
    """Fetch a selection, convert to conventional cells, filter, split with the plan's seed and write atomically.

    Every page is cached on disk as it arrives, so a fetch stopped half way (interrupt, network) continues from
    where it stopped when run again. Nothing is written to ``out`` unless the whole fetch succeeds.

    Args:
        plan: what to fetch and how to split it (:func:`plan_fetch`).
        out: the dataset folder (with ``plan.folds > 1``, the prefix of ``OUT-fold0`` ...).
        client: pages of summary documents (:class:`MPResterClient` or a recording).
        retries: attempts after the first for a page that fails transiently; back-off ``backoff·2^k`` seconds.
        sleep: waits between attempts (tests pass a recorder).
        progress: called with (documents read, None) after each page.

    Raises:
        UserError: if an output folder exists, the key or query is refused, the server stays unreachable, or
            nothing is left to write.
    """
    out = Path(out)
    targets = fold_names(out, plan.folds)
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise UserError(f"{', '.join(existing)} already exists; choose another --out or remove it first")
    cache = plan.cache or out.parent / ".mp-cache"
    collected = _collect(plan, client, retrying(retries, backoff, sleep, cache), cache, progress)
    crystals, notes = _within_limit(plan.selection, collected)
    provenance = _provenance(plan.selection, client, collected.skipped)
    datasets = _write_splits(targets, crystals, plan, provenance, notes)
    counts = collected.counts
    log.info("fetched %d documents, kept %d, wrote %s", counts.documents, len(crystals), [str(t) for t in targets])
    return FetchReport(
        datasets=datasets,
        documents=counts.documents,
        pages_downloaded=counts.downloaded,
        pages_cached=counts.cached,
        kept=len(crystals),
        filtered=dict(collected.filtered),
        skipped=collected.skipped,
        cache=cache,
        notes=notes,
    )


@dataclass
class _Collected:
    """What the pages held: the crystals kept (material id -> (rank, crystal)) and why the others were not."""

    counts: PageCounts
    kept: dict[str, tuple[float, Crystal]] = field(default_factory=dict)
    filtered: Counter[str] = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _collect(
    plan: FetchPlan,
    client: SummaryClient,
    retry: Callable[[Callable[[], list[dict]], str], list[dict]],
    cache: Path,
    progress: Callable[[int, int | None], None] | None,
) -> _Collected:
    """Read every page of the selection's queries (cached as they arrive), keeping the crystals its filters pass."""
    selection = plan.selection
    collected = _Collected(PageCounts())
    kept = collected.kept
    candidates = {id: i for i, id in enumerate(id for q in selection.queries for id in q.get("material_ids", ()))}
    for criteria in selection.queries:
        folder = query_folder(cache, criteria, plan.page_size)
        for documents in cached_pages(client, criteria, folder, plan.page_size, collected.counts, retry):
            for document in documents:
                material_id = str(document.get("material_id", "?"))
                if material_id in kept:
                    continue
                try:
                    crystal = crystal_from_document(document)
                except UserError as error:
                    collected.skipped.append((material_id, str(error)))
                    continue
                reason = selection.rejects(crystal)
                if reason:
                    collected.filtered[reason] += 1
                else:
                    kept[material_id] = (_rank(selection, candidates, crystal, len(kept)), crystal)
            if progress:
                progress(collected.counts.documents, None)
        if selection.order == "candidates" and selection.limit and len(kept) >= selection.limit:
            break  # the candidates come nearest first: later batches cannot displace these
    return collected


def _within_limit(selection: Selection, collected: _Collected) -> tuple[list[Crystal], list[str]]:
    """The kept crystals in rank order, cut to the selection's limit, with notes on what the limit did."""
    crystals = [crystal for _, crystal in sorted(collected.kept.values(), key=lambda item: (item[0], item[1].id))]
    notes = []
    if selection.limit and len(crystals) > selection.limit:
        notes.append(
            f"kept the first {selection.limit} of the {len(crystals)} fetched structures that pass the filters"
        )
        crystals = crystals[: selection.limit]
    if not crystals:
        raise UserError(
            f"nothing to write: the Materials Project returned {collected.counts.documents} documents for "
            f"{selection.description} and none passed ({sum(collected.filtered.values())} filtered out, "
            f"{len(collected.skipped)} not valid structures)"
        )
    if selection.limit and len(crystals) < selection.limit and selection.order != "fetched":
        notes.append(f"only {len(crystals)} structures pass the filters, fewer than limit={selection.limit}")
    return crystals, notes


def _provenance(selection: Selection, client: SummaryClient, skipped: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "format": "materials-project",
        "importer": "nesfgen.data.materials_project.fetch_dataset",
        "source": f"Materials Project summary documents via mp-api {mp_api_version()}",
        "database_version": getattr(client, "database_version", None),
        "selection": asdict(selection),
        "fields": list(FIELDS),
        "cell": "conventional standard cell (spglib, symprec 0.01)",
        "license": MP_LICENSE,
        "fetched_on": datetime.now(timezone.utc).date().isoformat(),
        "skipped": [list(item) for item in skipped],
    }


def _rank(selection: Selection, candidates: Mapping[str, int], crystal: Crystal, position: int) -> float:
    """Sort key: candidate-list position, distance to YBa2Cu3O7's cell, or the order fetched."""
    if selection.order == "candidates":
        return float(candidates.get(crystal.id, len(candidates) + position))  # an id the server renamed goes last
    if selection.order == "ybco":
        a, b, c = crystal.lengths
        return float(np.linalg.norm(np.array([min(a, b), max(a, b), c]) - np.array(YBCO_LENGTHS)))
    return float(position)


def _write_splits(
    targets: list[Path], crystals: list[Crystal], plan: FetchPlan, provenance: dict[str, Any], notes: list[str]
) -> list[Dataset]:
    """One seeded split, or k folds (each fold's test set a distinct share, 5 % of the rest as validation)."""
    if plan.folds == 1:
        splits, split_notes = seeded_split(crystals, plan.seed, plan.fractions)
        notes.extend(split_notes)
        layouts = [(splits, {"seed": plan.seed, "fractions": list(plan.fractions)})]
    else:
        if len(crystals) < plan.folds:
            raise UserError(f"{len(crystals)} structures cannot make {plan.folds} folds; lower folds=")
        layouts = [
            (splits, {"seed": plan.seed, "fold": k, "folds": plan.folds})
            for k, splits in enumerate(_fold_splits(crystals, plan.folds, plan.seed))
        ]
    written: list[Dataset] = []
    try:
        for target, (splits, split) in zip(targets, layouts):
            extra = {"split": split, "notes": list(notes)}
            written.append(write_dataset(target, splits, name=target.name, provenance={**provenance, **extra}))
    except BaseException:
        for dataset in written:
            shutil.rmtree(dataset.path, ignore_errors=True)
        raise
    return written


def _fold_splits(crystals: list[Crystal], folds: int, seed: int) -> list[dict[str, list[Crystal]]]:
    """The paper's k-fold layout: test sets partition the structures; validation is 5 % drawn from the rest."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(crystals))
    layouts = []
    for test in np.array_split(order, folds):
        rest = np.setdiff1d(order, test)
        val_count = max(1, round(0.05 * len(crystals))) if len(rest) > 1 else 0
        val = rng.choice(rest, size=val_count, replace=False) if val_count else np.array([], dtype=int)
        train = np.setdiff1d(rest, val)
        splits = {"train": train, "val": val, "test": test}
        layouts.append({name: [crystals[i] for i in sorted(index)] for name, index in splits.items() if len(index)})
    return layouts


def fetch_selection(
    name: str, arguments: list[str], out: Path | None, progress: Progress | None = None
) -> dict[str, Any]:
    """``nesfgen data fetch NAME key=value ...``: plan, fetch with the key from MP_API_KEY, and report."""
    values, positional = parse_overrides(arguments)
    if positional:
        raise UserError(f"unexpected argument(s) {' '.join(positional)}; nesfgen data fetch takes key=value pairs")
    allowed = selection_keys(name)
    for key in values:
        if key not in allowed:
            raise UserError(f"unknown option {key} for nesfgen data fetch {name}; valid: {', '.join(sorted(allowed))}")
    plan = plan_fetch(name, values)
    report = fetch_dataset(plan, out or default_out(name), MPResterClient(api_key()), progress=progress)
    return {
        "selection": plan.selection.description,
        "documents": report.documents,
        "pages_downloaded": report.pages_downloaded,
        "pages_cached": report.pages_cached,
        "kept": report.kept,
        "filtered": report.filtered,
        "skipped": [{"id": i, "reason": why} for i, why in report.skipped],
        "datasets": [
            {
                "name": d.name,
                "path": str(d.path),
                "counts": {s: d.manifest["splits"][s]["count"] for s in d.split_names},
            }
            for d in report.datasets
        ],
        "cache": str(report.cache),
        "notes": report.notes,
    }
