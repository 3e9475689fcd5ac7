"""Endpoints of an interpolation: a CIF/POSCAR path, a material id or a formula, resolved to one crystal.

A formula can match several polymorphs in the local datasets, the textbook table, the Materials Project
and the generated built-in dataset; which one is taken, and why, is decided here so it can be told to the user.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nesfgen.checkpoint import TrainedModel
from nesfgen.crystal import Crystal, parse_formula
from nesfgen.data import materials_project
from nesfgen.data.builtin import builtin_dataset, find_known, known_compounds
from nesfgen.data.importers import read_structure_file
from nesfgen.data.store import Dataset, data_dir, open_dataset
from nesfgen.errors import UserError
from nesfgen.symmetry import space_group, space_group_number

log = logging.getLogger(__name__)

#: dataset properties that hold the energy above the convex hull (eV/atom), lowest first among polymorphs
HULL_PROPERTIES = ("e_above_hull", "energy_above_hull")
#: folders of the data directory that hold the generated built-in dataset (one per generator version)
BUILTIN_FOLDER_PREFIX = "builtin-v"
#: damaged datasets already reported in this process: an interpolation looks up two endpoints, warn once
_reported_damaged: set[tuple[Path, str]] = set()
#: Materials Project entries fetched per formula (polymorphs), one request
MP_PAGE_SIZE = 50
TEXTBOOK_SOURCE = "built-in table of textbook compounds"
GENERATED_DATASET = "generated built-in dataset"
GENERATED_SOURCE = f"{GENERATED_DATASET} (hypothetical prototype)"


@dataclass(frozen=True)
class Candidate:
    """A structure that matches a formula, and where it was found."""

    crystal: Crystal
    source: str
    e_above_hull: float | None = None

    def describe(self) -> str:
        c = self.crystal
        return f"{c.id} ({c.formula}, {c.num_atoms} atoms, {_group_label(c)}; {self.source})"


@dataclass(frozen=True)
class Endpoint:
    """One end of an interpolation: what the user asked for and the crystal it resolved to."""

    query: str
    crystal: Crystal
    source: str  # where the crystal came from: a file, a dataset and split, the textbook table, ...
    kind: str  # "file", "id" or "formula"
    reason: str = ""  # why this candidate, when there were several
    alternatives: tuple[str, ...] = ()  # the other candidates, described

    def summary(self) -> dict[str, Any]:
        c = self.crystal
        return {
            "query": self.query,
            "kind": self.kind,
            "id": c.id,
            "formula": c.formula,
            "reduced_formula": c.reduced_formula,
            "num_atoms": c.num_atoms,
            "space_group": _group_label(c),
            "lengths": [round(float(x), 4) for x in c.lengths],
            "angles": [round(float(x), 3) for x in c.angles],
            "source": self.source,
            "reason": self.reason,
            "alternatives": list(self.alternatives),
        }


def resolve_endpoint(query: str, prefer_dataset_hash: str | None = None) -> Endpoint:
    """A crystal from a CIF/POSCAR path, a material id or a formula.

    Tried in this order: a file; an id in the datasets of the data directory (the one with
    ``prefer_dataset_hash``, the model's own, first); a formula; a textbook compound's name or id
    (``BaTiO3-tetragonal``, ``known-BaTiO3-tetragonal``) or an id of the generated built-in dataset,
    which are never formulas. A formula is looked up in the local datasets and the textbook table
    together, then the Materials Project (with a key), then the generated built-in dataset; see
    :func:`choose_default` for which of several polymorphs is taken.

    Raises:
        UserError: for a missing file, or a query that matches nothing, naming where it looked.
    """
    text = query.strip()
    if not text:
        raise UserError("an endpoint is empty: give a CIF/POSCAR file, a material id or a formula")
    path = Path(text).expanduser()
    if path.is_file() or _looks_like_path(text):
        return Endpoint(query, read_structure_file(path), f"file {path}", "file")
    datasets = local_datasets(prefer_dataset_hash)
    for dataset in datasets:
        found = _find_id(dataset, text)
        if found is not None:
            return Endpoint(query, *found, "id")
    amounts = parse_formula(text)
    if amounts is not None:
        total = sum(amounts.values())
        return _resolve_formula(query, {z: amount / total for z, amount in amounts.items()}, datasets)
    for compound in known_compounds():
        if text in (compound.name, compound.crystal.id):
            return Endpoint(query, compound.crystal, TEXTBOOK_SOURCE, "id")
    found = _find_id(builtin_dataset(), text)
    if found is not None:
        return Endpoint(query, *found, "id")
    names = ", ".join(d.name for d in datasets) or "none"
    raise UserError(
        f"{query!r} is neither a structure file, nor a material id (looked in the local datasets [{names}] in "
        f"{data_dir()}, the textbook compounds and the built-in dataset), nor a chemical formula such as 'ZnS'"
    )


def _looks_like_path(text: str) -> bool:
    name = Path(text).name
    return "/" in text or os.sep in text or name.lower().endswith((".cif", ".vasp")) or name.startswith("POSCAR")


def local_datasets(prefer_dataset_hash: str | None = None) -> list[Dataset]:
    """The sound datasets in the data directory except the generated built-in one, the preferred one first.

    A damaged dataset is left out with one warning naming it (once per process), so it cannot break lookups.
    """
    root = data_dir()
    if not root.is_dir():
        return []
    datasets = []
    for folder in sorted(root.iterdir()):
        hidden = folder.name.startswith((".", BUILTIN_FOLDER_PREFIX))  # staging folders of writes in progress
        if hidden or not (folder / "manifest.json").is_file():
            continue
        try:
            datasets.append(open_dataset(folder).verify())
        except UserError as error:
            if (folder, str(error)) not in _reported_damaged:
                _reported_damaged.add((folder, str(error)))
                log.warning("not searching %s: %s", folder, error)
    return sorted(datasets, key=lambda d: d.content_hash != prefer_dataset_hash)


def _find_id(dataset: Dataset, id: str) -> tuple[Crystal, str] | None:
    """The structure with this id and its source description, or None (ids are read from the manifest)."""
    for split, entry in dataset.manifest["splits"].items():
        if id in entry["ids"]:
            crystals = dataset.load(split)
            return crystals[crystals.ids.index(id)], f"dataset {dataset.name} ({split})"
    return None


def _resolve_formula(query: str, fractions: dict[int, float], datasets: Sequence[Dataset]) -> Endpoint:
    from pymatgen.core import Composition

    formula = Composition(query.strip()).reduced_formula
    local = formula_candidates(datasets, fractions)
    textbook = [Candidate(k.crystal, TEXTBOOK_SOURCE) for k in find_known(formula)]
    names = ", ".join(d.name for d in datasets)
    searched = [
        f"the local datasets in {data_dir()} ({names})" if datasets else f"local datasets (none in {data_dir()})",
        f"the {TEXTBOOK_SOURCE} ({len(known_compounds())} compounds)",
    ]
    if local or textbook:
        chosen, reason = choose_default(local, textbook)
        others = [c for c in local + textbook if c is not chosen]
    else:
        pool, note = materials_project_candidates(formula)
        searched.append(note)
        if not pool:
            pool = formula_candidates([builtin_dataset()], fractions, GENERATED_SOURCE)
            searched.append(f"the {GENERATED_DATASET}")
        if not pool:
            raise UserError(f"no structure with the formula {formula} found; looked in: " + "; ".join(searched))
        chosen, reason = _lowest(pool)
        others = [c for c in pool if c is not chosen]
    return Endpoint(
        query, chosen.crystal, chosen.source, "formula", reason if others else "", tuple(c.describe() for c in others)
    )


def formula_candidates(
    datasets: Sequence[Dataset], fractions: dict[int, float], source: str | None = None
) -> list[Candidate]:
    """Every structure of these datasets (all splits) with this composition, each id once."""
    wanted = np.array(sorted(fractions))
    candidates: dict[str, Candidate] = {}
    for dataset in datasets:
        for split in dataset.split_names:
            crystals = dataset.load(split)
            numbers, offsets = crystals.atomic_numbers, crystals.offsets
            if len(crystals) == 0:
                continue
            only_wanted = np.logical_and.reduceat(np.isin(numbers, wanted), offsets[:-1])  # (S,)
            hull = next((crystals.properties[p] for p in HULL_PROPERTIES if p in crystals.properties), None)
            for index in np.flatnonzero(only_wanted):
                if crystals.ids[index] in candidates:
                    continue
                elements, counts = np.unique(numbers[offsets[index] : offsets[index + 1]], return_counts=True)
                if len(elements) != len(wanted) or not np.allclose(
                    counts / counts.sum(), [fractions[int(z)] for z in elements], atol=1e-6
                ):
                    continue
                energy = float(hull[index]) if hull is not None and np.isfinite(hull[index]) else None
                where = source or f"dataset {dataset.name} ({split})"
                candidates[crystals.ids[index]] = Candidate(crystals[int(index)], where, energy)
    return list(candidates.values())


def choose_default(local: Sequence[Candidate], textbook: Sequence[Candidate]) -> tuple[Candidate, str]:
    """The default among several polymorphs of a formula, and why.

    For a compound of the textbook table the local entry with the textbook structure (same space group,
    closest volume per atom) is taken, so that a real material id is kept; if no local entry has that
    structure, the textbook cell itself. Otherwise the local entry with the lowest energy above hull
    (where the dataset records one), then the fewest atoms, then the first in dataset order.
    """
    if textbook:
        reference = textbook[0].crystal
        group = space_group_number(reference)
        volume = reference.volume / reference.num_atoms
        same = [c for c in local if space_group_number(c.crystal) == group]
        if same:
            chosen = min(same, key=lambda c: abs(c.crystal.volume / c.crystal.num_atoms - volume))
            return chosen, f"has the textbook structure of {reference.id} ({_group_label(reference)})"
        if local:
            return textbook[0], f"textbook structure; no local entry has its space group {_group_label(reference)}"
        return textbook[0], "first of the textbook table"
    return _lowest(local)


def _lowest(candidates: Sequence[Candidate]) -> tuple[Candidate, str]:
    """Lowest energy above hull (unknown counts as highest), then fewest atoms, then the first listed."""
    order = sorted(
        range(len(candidates)),
        key=lambda i: (
            math.inf if candidates[i].e_above_hull is None else candidates[i].e_above_hull,
            candidates[i].crystal.num_atoms,
            i,
        ),
    )
    chosen = candidates[order[0]]
    if chosen.e_above_hull is not None:
        return chosen, f"lowest energy above hull ({chosen.e_above_hull:.3f} eV/atom)"
    return chosen, "fewest atoms per cell"


def materials_project_candidates(formula: str) -> tuple[list[Candidate], str]:
    """Structures of this formula from the Materials Project when a key is configured, and what was done.

    A missing key, a failed request or an unreadable entry only skip the Materials Project (logged): the
    search then goes on to the generated built-in dataset.
    """
    try:
        key = materials_project.api_key()
    except UserError:
        log.info("Materials Project not searched for %s: no API key", formula)
        return [], "the Materials Project (skipped: no API key; set MP_API_KEY)"
    try:  # an mp-api too old (UserError) or a failed request only skip this source
        client = materials_project.MPResterClient(key)
        documents = client.search({"formula": formula}, materials_project.FIELDS, 1, MP_PAGE_SIZE)
    except (UserError, materials_project.MaterialsProjectError) as error:
        log.warning("Materials Project search for %s failed: %s", formula, error)
        return [], f"the Materials Project (failed: {error})"
    candidates = []
    for document in documents:
        try:
            crystal = materials_project.crystal_from_document(document)
        except UserError as error:
            log.info("skipping a Materials Project entry: %s", error)
            continue
        candidates.append(Candidate(crystal, "Materials Project", crystal.properties.get("energy_above_hull")))
    return candidates, f"the Materials Project ({len(documents)} entries)"


def check_species(endpoint: Endpoint, trained: TrainedModel, label: str) -> None:
    """Refuse an endpoint with elements outside the model's species table: the encoder has no input for them."""
    from pymatgen.core import Element

    missing = sorted(set(int(z) for z in endpoint.crystal.atomic_numbers) - set(trained.species_table))
    if missing:
        symbols = ", ".join(Element.from_Z(z).symbol for z in missing)
        table = " ".join(Element.from_Z(z).symbol for z in trained.species_table)
        raise UserError(
            f"{label} = {endpoint.query!r} ({endpoint.crystal.id}, {endpoint.crystal.formula}) holds {symbols}, which "
            f"the model {trained.path} cannot encode; its species table has {len(trained.species_table)} elements: "
            f"{table}"
        )


def _group_label(crystal: Crystal) -> str:
    return str(space_group(crystal) or "no space group")
