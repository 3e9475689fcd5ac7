"""Latent-space tools: endpoints by file, id or formula, interpolation between two crystals, 2-D maps of a split.

These are the paper's two analyses of the latent space: decode points on the straight line between the
latents of two crystals (its Figs. 5 and 6), and project a dataset's latents to 2-D with t-SNE (Fig. 7).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nesfgen.checkpoint import DEFAULT_MODEL, TrainedModel, load_model
from nesfgen.config import EstimatorConfig
from nesfgen.crystal import Crystal, symmetry_dataset
from nesfgen.data import materials_project
from nesfgen.data.builtin import builtin_dataset, find_known, known_compounds
from nesfgen.data.importers import read_structure_file
from nesfgen.data.names import resolve_dataset
from nesfgen.data.store import CrystalSet, Dataset, data_dir, open_dataset
from nesfgen.drawing import draw_cells
from nesfgen.errors import UserError
from nesfgen.estimator import StructureField, estimate
from nesfgen.evaluate import encode, estimator_config
from nesfgen.files import atomic_write_text, new_figure, output_folder, save_figure
from nesfgen.metrics import space_group_number
from nesfgen.symmetry import STATED_SYMPREC, check_symprec, symmetrize_decoded

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

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
MAP_METHODS = ("tsne", "pca")
#: first space-group number of each crystal system after triclinic (1-2), for the colour bar of the map
CRYSTAL_SYSTEM_STARTS = {
    "monoclinic": 3,
    "orthorhombic": 16,
    "tetragonal": 75,
    "trigonal": 143,
    "hexagonal": 168,
    "cubic": 195,
}


# --- endpoints ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A structure that matches a formula, and where it was found."""

    crystal: Crystal
    source: str
    e_above_hull: float | None = None

    def describe(self) -> str:
        c = self.crystal
        return f"{c.id} ({c.formula}, {c.num_atoms} atoms, {space_group_label(c)}; {self.source})"


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
            "space_group": space_group_label(c),
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
    fractions = parse_formula(text)
    if fractions is not None:
        return _resolve_formula(query, fractions, datasets)
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


def parse_formula(text: str) -> dict[int, float] | None:
    """Atomic number -> atom fraction of a chemical formula, or None if ``text`` is not one of real elements."""
    from pymatgen.core import Composition, Element

    try:
        with warnings.catch_warnings():  # pymatgen warns before accepting unknown symbols as dummy species
            warnings.simplefilter("ignore")
            composition = Composition(text)
    except (ValueError, TypeError, KeyError):
        return None
    if len(composition) == 0 or any(not isinstance(species, Element) for species in composition):
        return None
    return {int(element.Z): float(amount) for element, amount in composition.fractional_composition.items()}


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
            return chosen, f"has the textbook structure of {reference.id} ({space_group_label(reference)})"
        if local:
            return textbook[0], f"textbook structure; no local entry has its space group {space_group_label(reference)}"
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


# --- interpolation -----------------------------------------------------------------------------------------------


@dataclass
class Interpolation:
    """The decoded structures along the line between two endpoints' latents, and their table rows."""

    endpoints: tuple[Endpoint, Endpoint]
    checkpoint: str
    t: np.ndarray  # (T,) position on the line, 0 at A and 1 at B
    decoded: list[Crystal | None]
    rows: list[dict[str, Any]]
    symprec: float = STATED_SYMPREC  # spglib tolerance (Å) of the space groups and of symmetrize
    symmetrized: bool = False
    files: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        a, b = self.endpoints
        first, last = self.rows[0], self.rows[-1]
        return {
            "checkpoint": self.checkpoint,
            "steps": len(self.rows),
            "symprec": self.symprec,
            "symmetrized": self.symmetrized,
            "a": a.summary(),
            "b": b.summary(),
            "a_recovered": first["reduced_formula"] == a.crystal.reduced_formula
            and first["num_atoms"] == a.crystal.num_atoms,
            "b_recovered": last["reduced_formula"] == b.crystal.reduced_formula
            and last["num_atoms"] == b.crystal.num_atoms,
            "intermediate_only_end_elements_pct": self.intermediate_only_end_elements_pct(),
            "rows": self.rows,
            "files": self.files,
        }

    def intermediate_only_end_elements_pct(self) -> float | None:
        """Share of the steps between the ends whose decoded cell holds only elements of A or B (an empty
        decode does not); None with no step between the ends. Measures how chemically coherent the line is."""
        inner = self.rows[1:-1]
        if not inner:
            return None
        return 100.0 * sum(row.get("share_other") == 0.0 for row in inner) / len(inner)


def interpolate(
    a: str,
    b: str,
    checkpoint: str | None = None,
    steps: int = 7,
    device: str = "cpu",
    estimator_overrides: dict[str, str] | None = None,
    symprec: float = STATED_SYMPREC,
    symmetrize: bool = False,
    progress: Progress | None = None,
) -> Interpolation:
    """Encode two crystals, decode ``steps`` evenly spaced points on the line between their latents.

    Args:
        a, b: each a CIF/POSCAR path, a material id or a formula (see :func:`resolve_endpoint`).
        checkpoint: run folder, .pt file or shipped model name; None means the shipped default model.
        steps: points on the line, both ends included.
        estimator_overrides: ``{"estimator.steps": "32"}``-style overrides of the estimator settings.
        symprec: spglib tolerance (Å) for the reported space groups and for ``symmetrize``.
        symmetrize: snap every decoded structure to the highest symmetry spglib finds within ``symprec``.

    Raises:
        UserError: for an endpoint that cannot be resolved or holds elements the model does not know.
    """
    if steps < 2:
        raise UserError(f"steps must be at least 2 (the two endpoints), got {steps}")
    symprec = check_symprec(symprec)
    trained = load_model(checkpoint or DEFAULT_MODEL, device)
    config = estimator_config(trained, estimator_overrides or {})
    endpoints = (resolve_endpoint(a, trained.dataset_hash), resolve_endpoint(b, trained.dataset_hash))
    for label, endpoint in zip("AB", endpoints):
        check_species(endpoint, trained, label)
    z = encode(trained, CrystalSet.from_crystals([e.crystal for e in endpoints]))  # (2, D)
    t, decoded = decode_line(trained.model, z[0], z[1], steps, trained.box, trained.species_table, config, progress)
    if symmetrize:
        decoded, failed = symmetrize_decoded(decoded, symprec)
        if failed:
            log.warning("%d of %d decoded structures could not be symmetrised and are kept as decoded", failed, steps)
    rows = step_rows(t, decoded, endpoints[0].crystal, endpoints[1].crystal, symprec)
    return Interpolation(endpoints, trained.path, t, decoded, rows, symprec, symmetrize)


def interpolation_folder(a: str, b: str) -> Path:
    """The default output folder of an interpolation: ``runs/interpolate-A-B`` with file-safe names."""
    names = (Path(q).name.removesuffix(".cif").removesuffix(".vasp") for q in (a, b))
    safe = ("".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) for name in names)
    return Path("runs") / "interpolate-{}-{}".format(*safe)


def decode_line(
    field: StructureField,
    z_a: Tensor,
    z_b: Tensor,
    steps: int,
    box: np.ndarray,
    species_table: Sequence[int],
    config: EstimatorConfig = EstimatorConfig(),
    progress: Progress | None = None,
) -> tuple[np.ndarray, list[Crystal | None]]:
    """Decode ``steps`` evenly spaced points from z_a to z_b (both (D,)), ends included and exact.

    Returns:
        t (T,) and the decoded crystals, None where nothing valid was decoded.
    """
    t = torch.linspace(0.0, 1.0, steps, dtype=z_a.dtype, device=z_a.device)[:, None]  # (T, 1)
    z = (1 - t) * z_a[None, :] + t * z_b[None, :]  # (T, D); exactly z_a and z_b at the ends
    decoded = estimate(field, z, box, species_table, config, progress)
    return t[:, 0].cpu().numpy(), [d.to_crystal(f"step-{k:02d}") for k, d in enumerate(decoded)]


def composition_shares(numbers: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None, float]:
    """How much of a decoded cell is A's composition, B's, and neither's (fractions of its atoms).

    Atoms of an element only A has count for A, only B has for B, neither has for "other"; atoms of an
    element both have are split in the ratio of the A-only to B-only atoms. Without any A-only or
    B-only atom (say between two BaTiO3 polymorphs) the A and B shares are undefined (None).
    """
    numbers = np.asarray(numbers)
    if numbers.size == 0:
        return None, None, 0.0
    in_a, in_b = np.isin(numbers, a), np.isin(numbers, b)
    only_a, only_b = int(np.sum(in_a & ~in_b)), int(np.sum(in_b & ~in_a))
    other = int(np.sum(~in_a & ~in_b))
    shared = numbers.size - only_a - only_b - other
    if only_a + only_b == 0:
        return None, None, other / numbers.size
    share_a = (only_a + shared * only_a / (only_a + only_b)) / numbers.size
    share_b = (only_b + shared * only_b / (only_a + only_b)) / numbers.size
    return share_a, share_b, other / numbers.size


def step_rows(
    t: np.ndarray, decoded: Sequence[Crystal | None], a: Crystal, b: Crystal, symprec: float = STATED_SYMPREC
) -> list[dict[str, Any]]:
    """One table row per step: formulas, atoms, lattice parameters, space group and composition shares."""
    rows = []
    for step, (position, crystal) in enumerate(zip(t, decoded)):
        row: dict[str, Any] = {"step": step, "t": round(float(position), 6)}
        if crystal is None:
            rows.append(row | {"formula": None, "reduced_formula": None, "num_atoms": 0, "space_group": None})
            continue
        dataset = symmetry_dataset(crystal, symprec)
        share_a, share_b, other = composition_shares(crystal.atomic_numbers, a.atomic_numbers, b.atomic_numbers)
        row |= {
            "formula": crystal.formula,
            "reduced_formula": crystal.reduced_formula,
            "num_atoms": crystal.num_atoms,
            **{k: round(float(v), 4) for k, v in zip(("a", "b", "c"), crystal.lengths)},
            **{k: round(float(v), 3) for k, v in zip(("alpha", "beta", "gamma"), crystal.angles)},
            "volume": round(crystal.volume, 3),
            "space_group": int(dataset.number) if dataset is not None else None,
            "space_group_symbol": str(dataset.international) if dataset is not None else None,
            "share_a": share_a,
            "share_b": share_b,
            "share_other": other,
        }
        rows.append(row)
    return rows


def write_interpolation(result: Interpolation, out: Path) -> list[Path]:
    """``a.input.cif``, ``b.input.cif``, ``step-NN.cif`` per decoded step, ``interpolation.json`` and ``.png``.

    Step CIFs of an earlier, longer run in the same folder are removed so the folder shows one path.
    """
    out = output_folder(out, "interpolation folder")
    for stale in out.glob("step-*.cif"):
        stale.unlink()
    written = [
        atomic_write_text(out / f"{label}.input.cif", endpoint.crystal.to_cif())
        for label, endpoint in zip("ab", result.endpoints)
    ]
    for step, crystal in enumerate(result.decoded):
        if crystal is not None:
            written.append(atomic_write_text(out / f"step-{step:02d}.cif", crystal.to_cif()))
        else:
            log.info("step %d decoded to no valid crystal; no CIF written", step)
    titles = [_panel_title(row) for row in result.rows]
    titles[0], titles[-1] = f"A: {titles[0]}", f"B: {titles[-1]}"
    written.append(draw_cells(result.decoded, titles, out / "interpolation.png"))
    result.files = [str(p) for p in written] + [str(out / "interpolation.json")]
    written.append(atomic_write_text(out / "interpolation.json", json.dumps(result.summary(), indent=1)))
    return written


def _panel_title(row: dict[str, Any]) -> str:
    if row["formula"] is None:
        return f"t = {row['t']:.2f}\nnothing decoded"
    group = f"{row['space_group_symbol']} ({row['space_group']})" if row["space_group"] else "no space group"
    return f"t = {row['t']:.2f}\n{row['formula']}\n{group}"


def space_group_label(crystal: Crystal, symprec: float = STATED_SYMPREC) -> str:
    dataset = symmetry_dataset(crystal, symprec)
    return "no space group" if dataset is None else f"{dataset.international} ({dataset.number})"


# --- embedding and maps ------------------------------------------------------------------------------------------


@dataclass
class Embedding:
    """The latents of a dataset's structures, with the attributes the maps are coloured by."""

    ids: list[str]
    splits: list[str]
    formulas: list[str]
    latents: np.ndarray  # (S, D)
    volume: np.ndarray  # (S,) Å³
    num_atoms: np.ndarray  # (S,)
    space_group: np.ndarray  # (S,) spglib number, 0 where none was found
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def embed(
    checkpoint: str | None = None,
    data: str | None = None,
    split: str = "test",
    device: str = "cpu",
    symprec: float = STATED_SYMPREC,
) -> Embedding:
    """Latents of one split (or ``all`` splits) of a dataset, with id, formula, volume, atoms and space group.

    Args:
        checkpoint: run folder, .pt file or shipped model name; None means the shipped default model.
        data: dataset name or folder; None means the dataset the model was trained on.
    """
    trained = load_model(checkpoint or DEFAULT_MODEL, device)
    dataset = resolve_dataset(data or trained.recipe.data.dataset_name)
    splits = dataset.split_names if split == "all" else [split]
    parts = [(name, dataset.load(name)) for name in splits]
    crystals = [c for _, part in parts for c in part]
    if not crystals:
        raise UserError(f"split {split!r} of dataset {dataset.name!r} is empty")
    latents = torch.cat([encode(trained, part) for _, part in parts if len(part)]).cpu().numpy()  # (S, D)
    return Embedding(
        ids=[c.id for c in crystals],
        splits=[name for name, part in parts for _ in range(len(part))],
        formulas=[c.reduced_formula for c in crystals],
        latents=latents.astype(np.float32),
        volume=np.array([c.volume for c in crystals]),
        num_atoms=np.array([c.num_atoms for c in crystals]),
        space_group=np.array([space_group_number(c, symprec) or 0 for c in crystals]),
        meta={"checkpoint": trained.path, "dataset": dataset.name, "split": split, "symprec": symprec},
    )


def save_embedding(embedding: Embedding, path: Path) -> Path:
    """Write latents as ``.npz`` (arrays, no pickle) or ``.csv`` (one row per structure, columns z0 … z{D-1})."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = _attribute_columns(embedding)
    if path.suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow([*columns, *(f"z{k}" for k in range(embedding.latents.shape[1]))])
        for index in range(len(embedding)):
            values = [columns[name][index] for name in columns]
            writer.writerow([*values, *(f"{x:.7g}" for x in embedding.latents[index])])
        return atomic_write_text(path, buffer.getvalue())
    if path.suffix != ".npz":
        raise UserError(f"out={path}: the latents file must end in .npz or .csv")
    temporary = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(
        temporary,
        latents=embedding.latents,
        **{name: np.asarray(values) for name, values in columns.items()},
        meta=np.array(json.dumps(embedding.meta)),
    )
    os.replace(temporary, path)
    return path


def _attribute_columns(embedding: Embedding) -> dict[str, list[Any]]:
    return {
        "id": list(embedding.ids),
        "split": list(embedding.splits),
        "formula": list(embedding.formulas),
        "volume": [round(float(v), 4) for v in embedding.volume],
        "num_atoms": [int(n) for n in embedding.num_atoms],
        "space_group": [int(g) for g in embedding.space_group],
    }


def load_embedding(path: Path) -> Embedding:
    """Read a latents file written by :func:`save_embedding`.

    Raises:
        UserError: naming the file when it is missing or not a latents file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"latents file {path} does not exist (write one with `nesfgen embed ... out={path}`)")
    try:
        if path.suffix == ".csv":
            with path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
            if not rows:
                raise UserError("it has no rows")
            dims = sorted((k for k in rows[0] if k[:1] == "z" and k[1:].isdigit()), key=lambda k: int(k[1:]))
            return Embedding(
                ids=[r["id"] for r in rows],
                splits=[r["split"] for r in rows],
                formulas=[r["formula"] for r in rows],
                latents=np.array([[float(r[k]) for k in dims] for r in rows], dtype=np.float32),
                volume=np.array([float(r["volume"]) for r in rows]),
                num_atoms=np.array([int(r["num_atoms"]) for r in rows]),
                space_group=np.array([int(r["space_group"]) for r in rows]),
                meta={"source": str(path)},
            )
        if path.suffix != ".npz":
            raise UserError("expected a .npz or .csv latents file")
        with np.load(path, allow_pickle=False) as arrays:
            return Embedding(
                ids=[str(x) for x in arrays["id"]],
                splits=[str(x) for x in arrays["split"]],
                formulas=[str(x) for x in arrays["formula"]],
                latents=arrays["latents"],
                volume=arrays["volume"],
                num_atoms=arrays["num_atoms"],
                space_group=arrays["space_group"],
                meta=json.loads(str(arrays["meta"])),
            )
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    except (KeyError, ValueError, OSError) as error:
        raise UserError(f"{path} is not a latents file written by `nesfgen embed` ({error})") from None


def project(
    latents: np.ndarray, method: str = "tsne", seed: int = 0, perplexity: float = 30.0
) -> tuple[np.ndarray, dict]:
    """Latents (S, D) -> 2-D coordinates (S, 2), with what the method reports.

    ``tsne``: scikit-learn's Barnes-Hut t-SNE (PCA initialisation, seeded), the perplexity capped at
    (S - 1) / 3 for small sets. ``pca``: the first two principal components, signs fixed so the largest
    loading of each is positive.
    """
    if method not in MAP_METHODS:
        raise UserError(f"method must be one of {', '.join(MAP_METHODS)}, got {method!r}")
    latents = np.asarray(latents, dtype=np.float64)
    count = latents.shape[0]
    if latents.ndim != 2 or latents.shape[1] < 2:
        raise UserError(f"expected latents of at least 2 dimensions, got shape {latents.shape}")
    if method == "pca":
        if count < 2:
            raise UserError(f"PCA needs at least 2 structures, got {count}")
        centred = latents - latents.mean(0)
        _, singular, components = np.linalg.svd(centred, full_matrices=False)  # components (K, D)
        leading = np.argmax(np.abs(components[:2]), axis=1)  # (2,) largest loading of each component
        components = components[:2] * np.sign(components[[0, 1], leading])[:, None]  # (2, D)
        variance = singular**2 / max(float((singular**2).sum()), 1e-300)
        return centred @ components.T, {"explained_variance_ratio": [float(v) for v in variance[:2]]}
    if count < 4:
        raise UserError(f"t-SNE needs at least 4 structures, got {count}; use method=pca")
    from sklearn.manifold import TSNE

    used = min(perplexity, (count - 1) / 3)
    if used < perplexity:
        log.info("perplexity lowered from %s to %.2f for %d structures", perplexity, used, count)
    tsne = TSNE(n_components=2, perplexity=used, init="pca", learning_rate="auto", random_state=seed)
    coords = tsne.fit_transform(latents)
    return coords, {"perplexity": used, "seed": seed, "kl_divergence": float(tsne.kl_divergence_)}


def write_map(embedding: Embedding, coords: np.ndarray, method: str, out: Path, info: dict | None = None) -> list[Path]:
    """``map.csv`` (2-D coordinates with the attributes), ``map.json`` and the paper's Fig. 7 as three PNGs."""
    out = output_folder(out, "map folder")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = _attribute_columns(embedding)
    writer.writerow([*columns, "x", "y"])
    for index in range(len(embedding)):
        writer.writerow(
            [*(columns[name][index] for name in columns), f"{coords[index, 0]:.5g}", f"{coords[index, 1]:.5g}"]
        )
    label = {"tsne": "t-SNE", "pca": "PCA"}[method]
    where = " ".join(str(embedding.meta[k]) for k in ("dataset", "split") if k in embedding.meta)
    heading = f"{label} of {len(embedding)} latents" + (f" ({where})" if where else "")
    written = [
        atomic_write_text(out / "map.csv", buffer.getvalue()),
        _map_png(coords, embedding.volume, "cell volume [Å³]", heading, out / "map-volume.png"),
        _map_png(coords, embedding.num_atoms, "atoms per cell", heading, out / "map-atoms.png"),
        _map_png(coords, embedding.space_group, "space group", heading, out / "map-space-group.png", space_group=True),
    ]
    summary = {"method": method, "structures": len(embedding), **(info or {}), "embedding": embedding.meta}
    summary["files"] = [str(p) for p in written] + [str(out / "map.json")]
    written.append(atomic_write_text(out / "map.json", json.dumps(summary, indent=1)))
    return written


def _map_png(
    coords: np.ndarray, values: np.ndarray, label: str, heading: str, path: Path, space_group: bool = False
) -> Path:
    figure, axis = new_figure(1, 6.2, 5.2)
    values = np.asarray(values, dtype=float)
    size = float(np.clip(4000 / max(len(values), 1), 2, 30))
    shown = values > 0 if space_group else np.ones(len(values), dtype=bool)
    if not shown.all():  # no space group found: grey, beneath the rest
        axis.scatter(coords[~shown, 0], coords[~shown, 1], s=size, color="0.75", linewidths=0, label="none found")
        axis.legend(loc="best", fontsize=7)
    options = {"cmap": "turbo", "vmin": 1, "vmax": 230} if space_group else {"cmap": "viridis"}
    points = axis.scatter(coords[shown, 0], coords[shown, 1], c=values[shown], s=size, linewidths=0, **options)
    bar = figure.colorbar(points, ax=axis, label=label)
    if space_group:
        bar.set_ticks(list(CRYSTAL_SYSTEM_STARTS.values()) + [230])
        bar.set_ticklabels([f"{n} {name}" for name, n in CRYSTAL_SYSTEM_STARTS.items()] + ["230"], fontsize=8)
    elif label == "atoms per cell":
        bar.ax.yaxis.get_major_locator().set_params(integer=True)
    axis.set_title(f"{heading}\ncoloured by {label}", fontsize=9)
    axis.set_xticks([])
    axis.set_yticks([])
    return save_figure(figure, path)
