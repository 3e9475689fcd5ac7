"""Energy above the convex hull and the S.U.N. shares (stable, unique, novel) of a set of relaxed structures.

Two hulls: the Materials Project's entries of each chemical system (``mp``, MP2020-corrected energies through
mp-api), or a local hull of CHGNet energies of a dataset's own structures (``local:NAME``), built once by
:func:`build_local_hull` and cached beside the dataset. CHGNet was trained on MP2020-corrected energies
(MPtrj's ``energy_per_atom``), so its energies are compared with MP's corrected ones as they are.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nesfgen.errors import UserError, require
from nesfgen.files import atomic_write_text
from nesfgen.options import required
from nesfgen.progress import Progress
from nesfgen.relax import (
    DEFAULT_BATCH,
    DEFAULT_FMAX,
    DEFAULT_POTENTIAL,
    DEFAULT_RATTLE,
    DEFAULT_STEPS,
    RelaxOptions,
    check_potential,
)

log = logging.getLogger(__name__)

HULL_FORMAT = "nesfgen-hull"
HULL_VERSION = 1
#: eV/atom: on or below the hull, within the energy resolution of a relaxation stopped at fmax 0.1 eV/Å
#: (relaxed diamond Si sits 0.2 meV/atom above its own scanned elemental reference)
STABLE = 1e-3
#: eV/atom: metastable, MatterGen's and FlowMM's threshold
METASTABLE = 0.1
#: structures evaluated per call of the potential while building a hull
BATCH = 16
#: how a hull's own structures and elemental references relax: no rattle, as hulls cached before it was added
#: were built, since the dataset's structures already sit at their minima (a prototype may not: docs/relax.md)
HULL_RELAXATION = functools.partial(RelaxOptions, rattle=0.0)
#: elemental prototypes relaxed for each element's reference: (name, nearest-neighbour distance in units of 2r)
PROTOTYPES = ("fcc", "bcc", "hcp", "diamond", "dimer")
#: Å: the shortest nearest-neighbour distance of a prototype (denser cells blow up the potential's angle graph)
MIN_BOND = 1.5
#: Å: the cell of a dimer prototype leaves this much beyond the molecule along each axis
DIMER_GAP = 2.8


# --- the hull ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HullEntry:
    """A phase on the hull: its composition (element -> atoms) and energy per atom (eV)."""

    id: str
    composition: Mapping[str, float]
    energy_per_atom: float


class Hull:
    """Energies above the convex hull, one pymatgen PhaseDiagram per chemical system (built on first use).

    Args:
        source: ``mp`` or ``local:NAME``, reported with the results.
        entries_for: the entries of a chemical system and all its subsystems (a set of element symbols).
    """

    def __init__(self, source: str, entries_for: Callable[[frozenset[str]], list[HullEntry]]):
        self.source = source
        self._entries_for = entries_for
        self._diagrams: dict[frozenset[str], Any] = {}

    def _diagram(self, elements: frozenset[str]) -> Any:
        if elements not in self._diagrams:
            from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
            from pymatgen.core import Composition

            entries = [
                PDEntry(Composition(dict(e.composition)), e.energy_per_atom * sum(e.composition.values()), name=e.id)
                for e in self._entries_for(elements)
            ]
            present = {str(el) for e in entries for el in e.composition.elements}
            missing = sorted(elements - present)
            self._diagrams[elements] = (
                f"no reference for {', '.join(missing)} on the {self.source} hull" if missing else PhaseDiagram(entries)
            )
        return self._diagrams[elements]

    def e_above_hull(self, composition: Mapping[str, float], energy_per_atom: float) -> tuple[float, str]:
        """Energy above the hull (eV/atom; negative below it) and "" or why it is unknown (then NaN)."""
        from pymatgen.analysis.phase_diagram import PDEntry
        from pymatgen.core import Composition

        comp = Composition(dict(composition))
        diagram = self._diagram(frozenset(str(el) for el in comp.elements))
        if isinstance(diagram, str):
            return math.nan, diagram
        entry = PDEntry(comp, energy_per_atom * comp.num_atoms)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, above = diagram.get_decomp_and_e_above_hull(entry, allow_negative=True)
        return float(above), ""


def _subsystem_filter(entries: Sequence[HullEntry]) -> Callable[[frozenset[str]], list[HullEntry]]:
    keyed = [(frozenset(e.composition), e) for e in entries]
    return lambda elements: [e for key, e in keyed if key <= elements]


def hull_from_entries(source: str, entries: Sequence[HullEntry]) -> Hull:
    return Hull(source, _subsystem_filter(entries))


# --- the Materials Project hull ------------------------------------------------------------------------------------


def mp_hull(client: Any) -> Hull:
    """The Materials Project's GGA/GGA+U entries (MP2020-corrected by mp-api), one request per chemical system.

    Args:
        client: an :class:`~nesfgen.data.materials_project.MPResterClient` (tests pass one on a recording).
    """
    from nesfgen.data.materials_project import KeyRejected, MaterialsProjectError

    fetched: dict[frozenset[str], list[HullEntry]] = {}

    def entries_for(elements: frozenset[str]) -> list[HullEntry]:
        if elements not in fetched:
            try:
                documents = client.entries_in_chemsys(sorted(elements))
            except KeyRejected as error:
                raise UserError(f"the Materials Project refused the API key (MP_API_KEY): {error}") from None
            except MaterialsProjectError as error:
                raise UserError(
                    f"the Materials Project request for {'-'.join(sorted(elements))} failed: {error}"
                ) from None
            fetched[elements] = [HullEntry(d["id"], d["composition"], d["energy_per_atom"]) for d in documents]
        return fetched[elements]

    return Hull("mp", entries_for)


# --- the local hull ------------------------------------------------------------------------------------------------


def _potential_label(potential: str) -> str:
    return f"CHGNet {potential}"


def _potential_version(potential: str) -> str:
    from importlib.metadata import version

    return f"{_potential_label(potential)} (chgnet {version('chgnet')})"


def _prototype(symbol: str, name: str) -> Any:
    """An elemental prototype cell, nearest neighbours at twice the covalent radius (at least MIN_BOND)."""
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius
    from pymatgen.core import Lattice, Structure

    covalent = CovalentRadius.radius.get(symbol, 1.5)
    d = max(2 * covalent, MIN_BOND)
    fcc = np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]]) / 2  # primitive vectors of a unit-cube fcc lattice
    if name == "fcc":
        return Structure(Lattice(fcc * d * math.sqrt(2)), [symbol], [[0, 0, 0]])
    if name == "bcc":
        return Structure(Lattice.cubic(2 * d / math.sqrt(3)), [symbol] * 2, [[0, 0, 0], [0.5, 0.5, 0.5]])
    if name == "hcp":
        frac = [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]
        return Structure(Lattice.hexagonal(d, d * math.sqrt(8 / 3)), [symbol] * 2, frac)
    if name == "diamond":
        return Structure(Lattice(fcc * 4 * d / math.sqrt(3)), [symbol] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
    if name == "dimer":  # molecular solids (O2, N2, halogens): one dimer along the body diagonal, a vdW gap around
        bond = 1.85 * covalent
        a = bond / math.sqrt(3) + DIMER_GAP
        half = bond / (2 * math.sqrt(3) * a)
        return Structure(Lattice.cubic(a), [symbol] * 2, [[0.5 - half] * 3, [0.5 + half] * 3])
    raise ValueError(name)


#: isotropic scalings of each prototype's cell: a coarse scan, then a fine one around the best
SCAN = (0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.3)
FINE_SCAN = (-0.03, -0.015, 0.015, 0.03)
#: prototypes with a free coordinate (c/a, the bond length), relaxed after the scans when they win
FREE_PROTOTYPES = ("hcp", "dimer")


def _scaled(cell: Any, scale: float) -> Any:
    scaled = cell.copy()
    scaled.scale_lattice(cell.volume * scale**3)
    return scaled


def elemental_references(
    symbols: Iterable[str], steps: int = 60, progress: Progress | None = None, potential: str = DEFAULT_POTENTIAL
) -> list[dict[str, Any]]:
    """Each element's lowest CHGNet energy per atom over prototypes (fcc, bcc, hcp, diamond, dimer).

    pymatgen and chgnet ship no elemental ground states, so they are searched for: every prototype is
    scanned over cell sizes in batched calls of the potential (fcc, bcc and diamond have no free
    coordinate, so the scan is their relaxation); an hcp or dimer winner is then relaxed in cell and
    positions (FIRE). That is the real ground state where it is one of these cells, an upper bound
    otherwise (alpha-B, Ga, black P, S8, ...), which makes compounds of those elements look a little more
    stable than they are.
    """
    from nesfgen.relax import relax_structure

    symbols = sorted(set(symbols))
    references = []
    for done, symbol in enumerate(symbols):
        cells = {name: _prototype(symbol, name) for name in PROTOTYPES}
        candidates = [(name, scale) for name in PROTOTYPES for scale in SCAN]
        energies = _single_point_energies([_scaled(cells[n], x) for n, x in candidates], potential)
        finite = [k for k, e in enumerate(energies) if math.isfinite(e)]
        if not finite:
            raise UserError(f"CHGNet gives no finite energy for any prototype of {symbol}")
        name, scale = candidates[min(finite, key=lambda k: energies[k])]
        fine = [(name, scale + step) for step in FINE_SCAN]
        candidates += fine
        energies += _single_point_energies([_scaled(cells[n], x) for n, x in fine], potential)
        best = min((k for k, e in enumerate(energies) if math.isfinite(e)), key=lambda k: energies[k])
        name, scale = candidates[best]
        energy = energies[best]
        if name in FREE_PROTOTYPES:
            relaxation = HULL_RELAXATION(fmax=0.05, steps=steps, potential=potential)
            record, relaxed = relax_structure(_scaled(cells[name], scale), relaxation)
            if relaxed is not None:
                energy = min(energy, record["energy_after"])
        references.append({"element": symbol, "prototype": name, "scale": scale, "energy_per_atom": energy})
        if progress:
            progress(done + 1, len(symbols))
    return references


def _single_point_energies(structures: Sequence[Any], potential: str) -> list[float]:
    """CHGNet energies per atom, batched: 4.4x faster than one at a time here (docs/relax.md). A structure
    the potential refuses (an atom with no neighbour within its 6 Å cutoff, as a stretched prototype of a
    large atom has) gets NaN, as does an energy outside the physical range a relaxation is held to (a
    compressed prototype where the potential has a hole: 0.2.0's hcp nitrogen, -140 eV/atom); the others keep
    their energies."""
    from nesfgen.relax import is_physical_energy, load_potential

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predictions = load_potential(potential).predict_structure(list(structures), task="e", batch_size=BATCH)
    except (ValueError, RuntimeError) as error:  # chgnet refuses the whole batch for one structure
        if len(structures) == 1:
            log.debug("no CHGNet energy for %s: %s", structures[0].composition.reduced_formula, error)
            return [math.nan]
        return [energy for structure in structures for energy in _single_point_energies([structure], potential)]
    if isinstance(predictions, dict):
        predictions = [predictions]
    return [float(p["e"]) if is_physical_energy(p["e"]) else math.nan for p in predictions]


def _element_numbers(symbols: Sequence[str]) -> set[int]:
    from pymatgen.core import Element

    try:
        return {Element(symbol).Z for symbol in symbols}
    except ValueError as error:
        raise UserError(f"elements=: {error}; give element symbols separated by commas, e.g. Na,Cl,Si") from None


def hull_path(dataset: Any, potential: str = DEFAULT_POTENTIAL) -> Path:
    """One cached hull per dataset and CHGNet weights (energies of different weights do not share a hull); the
    default weights' keeps the name hulls had before the weights could be chosen."""
    name = "hull-chgnet.json" if potential == DEFAULT_POTENTIAL else f"hull-chgnet-{potential}.json"
    return Path(dataset.path) / name


def build_local_hull(
    name: str,
    split: str = "train",
    relax: bool = False,
    limit: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
    elements: Sequence[str] = (),
    potential: str = DEFAULT_POTENTIAL,
) -> dict[str, Any]:
    """CHGNet energies of a dataset split plus elemental references, written as :func:`hull_path` beside it.

    The dataset's structures are evaluated as they are (single point; ``relax`` relaxes them first): MP's
    structures are already DFT-relaxed, and CHGNet moves them little (docs/relax.md has the measurement).
    Progress is kept in a partial file, so an interrupted build resumes. ``elements`` restricts the hull to
    the structures made of those elements only (the chemical systems a screen needs; much faster).

    Returns:
        The cache's contents (entries, elements, provenance).
    """
    from nesfgen.data.names import resolve_dataset
    from nesfgen.relax import relax_many

    check_potential(potential)
    allowed = _element_numbers(elements)  # a typo fails before the dataset is opened
    dataset = resolve_dataset(name)
    crystals = dataset.load(split)
    if allowed:
        keep = [i for i in range(len(crystals)) if set(crystals[i].atomic_numbers.tolist()) <= allowed]
        if not keep:
            raise UserError(f"no structure of {name}:{split} is made of {', '.join(elements)} only")
        crystals = crystals.subset(keep)
    count = len(crystals) if limit <= 0 else min(limit, len(crystals))
    started = time.perf_counter()
    partial = hull_path(dataset, potential).with_suffix(".partial.json")
    entries: list[dict[str, Any]] = []
    saved_references: list[dict[str, Any]] = []
    if partial.is_file():
        saved = json.loads(partial.read_text())
        if saved.get("relax") == relax and saved.get("split") == split and saved.get("elements") == sorted(elements):
            entries = saved["entries"][:count]
            saved_references = saved.get("references", [])
    for start in range(len(entries), count, BATCH):
        chunk = [crystals[i] for i in range(start, min(start + BATCH, count))]
        structures = [c.to_structure() for c in chunk]
        if relax:
            energies = [math.nan] * len(structures)
            for k, record, _ in relax_many(structures, HULL_RELAXATION(potential=potential)):
                energies[k] = record["energy_after"]
        else:
            energies = _single_point_energies(structures, potential)
        for crystal, structure, energy in zip(chunk, structures, energies):
            if math.isfinite(energy):
                composition = {str(el): float(n) for el, n in structure.composition.items()}
                entries.append({"id": crystal.id, "composition": composition, "energy_per_atom": energy})
        atomic_write_text(
            partial, json.dumps({"relax": relax, "split": split, "elements": sorted(elements), "entries": entries})
        )
        if progress:
            progress("dataset structures", min(start + BATCH, count), count)
    symbols = sorted({el for e in entries for el in e["composition"]})
    references: list[dict[str, Any]] = []
    for done, symbol in enumerate(symbols):  # one at a time, each kept in the partial file
        references += [r for r in saved_references if r["element"] == symbol] or elemental_references(
            [symbol], potential=potential
        )
        state = {"relax": relax, "split": split, "elements": sorted(elements), "entries": entries}
        atomic_write_text(partial, json.dumps({**state, "references": references}))
        if progress:
            progress("elemental references", done + 1, len(symbols))
    cache = {
        "format": HULL_FORMAT,
        "format_version": HULL_VERSION,
        "dataset": dataset.name,
        "content_hash": dataset.content_hash,
        "split": split,
        "structures": count,
        "relaxed": relax,
        "elements_only": sorted(elements),
        "potential": _potential_version(potential),
        "seconds": time.perf_counter() - started,
        "entries": entries,
        "elements": references,
    }
    atomic_write_text(hull_path(dataset, potential), json.dumps(cache, indent=0))
    partial.unlink(missing_ok=True)
    return cache


def local_hull(name: str, potential: str = DEFAULT_POTENTIAL) -> Hull:
    """The cached hull of dataset ``name`` for the CHGNet weights ``potential``.

    Raises:
        UserError: when it has not been built (the message gives the command) or is stale.
    """
    from nesfgen.data.names import resolve_dataset

    check_potential(potential)
    dataset = resolve_dataset(name)
    path = hull_path(dataset, potential)
    build = f"nesfgen data hull {name}" + ("" if potential == DEFAULT_POTENTIAL else f" potential={potential}")
    if not path.is_file():
        raise UserError(f"no CHGNet {potential} hull for dataset {name!r} yet: build it once with `{build}`")
    cache = json.loads(path.read_text())
    made_by = str(cache.get("potential", "")).startswith(_potential_label(potential) + " ")
    if cache.get("format") != HULL_FORMAT or cache.get("content_hash") != dataset.content_hash or not made_by:
        raise UserError(f"{path} is stale or not a nesfgen hull; rebuild it with `{build}`")
    entries = [HullEntry(e["id"], e["composition"], e["energy_per_atom"]) for e in cache["entries"]]
    entries += [
        HullEntry(f"{e['element']}-{e['prototype']}", {e["element"]: 1.0}, e["energy_per_atom"])
        for e in cache["elements"]
    ]
    return hull_from_entries(f"local:{name}", entries)


def open_hull(spec: str, potential: str = DEFAULT_POTENTIAL) -> Hull:
    """``mp`` (needs MP_API_KEY) or ``local:NAME`` / ``NAME`` (built with the CHGNet weights ``potential``)."""
    if spec == "mp":
        from nesfgen.data.materials_project import MPResterClient, api_key

        return mp_hull(MPResterClient(api_key()))
    return local_hull(spec.removeprefix("local:"), potential)


# --- the shares ----------------------------------------------------------------------------------------------------


def screen(
    records: list[dict[str, Any]],
    crystals: Mapping[str, Any],
    hull: Hull | None,
    reference: Any | None,
) -> dict[str, Any]:
    """Fill each record's ``e_above_hull``, ``stable``, ``metastable``, ``unique``, ``novel`` and return the shares.

    Shares are over all structures given (a failed relaxation is not stable), converged_pct over the relaxed
    ones; uniqueness is among the
    relaxed structures (StructureMatcher, first of each group kept), novelty against ``reference`` (the
    training split). Without a hull or reference the shares that need them are None.
    """
    from pymatgen.core import Composition

    from nesfgen.generative_metrics import novel_flags, unique_flags

    relaxed = [r for r in records if r["status"] == "relaxed"]
    for r in records:
        r.update(e_above_hull=math.nan, stable=False, metastable=False, unique=False, novel=None, hull_note="")
    if hull is not None:
        for r in relaxed:
            composition = Composition(crystals[r["id"]].formula).as_dict()
            r["e_above_hull"], r["hull_note"] = hull.e_above_hull(composition, r["energy_after"])
            r["stable"] = bool(r["e_above_hull"] <= STABLE)
            r["metastable"] = bool(r["e_above_hull"] <= METASTABLE)
    for r, unique in zip(relaxed, unique_flags([crystals[r["id"]] for r in relaxed])):
        r["unique"] = unique
    if reference is not None:
        for r, novel in zip(relaxed, novel_flags([crystals[r["id"]] for r in relaxed], reference)):
            r["novel"] = novel

    def pct(flags: Iterable[bool]) -> float | None:
        return 100.0 * sum(flags) / len(records) if records else None

    above = [r["e_above_hull"] for r in relaxed if math.isfinite(r["e_above_hull"])]
    rmsds = [r["rmsd"] for r in relaxed if r["rmsd"] is not None and math.isfinite(r["rmsd"])]
    shares: dict[str, Any] = {
        "n": len(records),
        "relaxed": len(relaxed),
        "failed": len(records) - len(relaxed),
        "converged_pct": 100.0 * sum(r["converged"] for r in relaxed) / len(relaxed) if relaxed else None,
        "mean_rmsd": float(np.mean(rmsds)) if rmsds else None,
        "mean_energy_after": float(np.mean([r["energy_after"] for r in relaxed])) if relaxed else None,
        "hull_source": hull.source if hull else None,
        "mean_e_above_hull": float(np.mean(above)) if above else None,
        "stable_pct": pct(r["stable"] for r in relaxed) if hull else None,
        "metastable_pct": pct(r["metastable"] for r in relaxed) if hull else None,
        "unique_pct": pct(r["unique"] for r in relaxed),
        "novel_pct": pct(bool(r["novel"]) for r in relaxed) if reference is not None else None,
        "sun_pct": None,
        "msun_pct": None,
        "failures": [{"id": r["id"], "reason": r["reason"]} for r in records if r["status"] != "relaxed"],
    }
    if hull is not None and reference is not None:
        shares["sun_pct"] = pct(r["stable"] and r["unique"] and r["novel"] for r in relaxed)
        shares["msun_pct"] = pct(r["metastable"] and r["unique"] and r["novel"] for r in relaxed)
    return shares


# --- a relaxation run with its screen ------------------------------------------------------------------------------

CSV_COLUMNS = (
    "id",
    "source",
    "formula",
    "num_atoms",
    "status",
    "reason",
    "converged",
    "steps",
    "energy_before",
    "energy_after",
    "rmsd",
    "volume_before",
    "volume_after",
    "volume_change_pct",
    "space_group_before",
    "space_group_after",
    "e_above_hull",
    "stable",
    "metastable",
    "unique",
    "novel",
    "hull_note",
    "seconds",
)


@dataclass(frozen=True, kw_only=True)
class ScreenOptions:
    """What to relax, how hard, and against which hull and training set.

    ``inputs``: CIF/POSCAR files, folders of them, or formulas of the built-in table. ``hull``: ``mp``,
    ``local:NAME`` or ``NAME``; by default the local hull of ``data`` when given. ``data``: the dataset
    whose training split novelty is measured against. ``potential``: the CHGNet weights that relax, and whose
    local hull is used.
    """

    WORDS: ClassVar[str] = "inputs"

    inputs: tuple[str, ...] = required(
        "nothing to relax: give CIF/POSCAR files, folders or built-in formulas, and out=DIR"
    )
    out: str = required("out=DIR is required: the folder for the relaxed CIFs, relax.csv and summary.json")
    fmax: float = DEFAULT_FMAX
    steps: int = DEFAULT_STEPS
    batch: int = DEFAULT_BATCH
    workers: int = 1
    rattle: float = DEFAULT_RATTLE
    hull: str | None = None
    data: str | None = None
    potential: str = DEFAULT_POTENTIAL

    @property
    def relaxation(self) -> RelaxOptions:
        return RelaxOptions(self.fmax, self.steps, self.batch, self.workers, self.rattle, self.potential)

    @property
    def hull_spec(self) -> str | None:
        """The hull to place the relaxed structures on: ``hull=``, else the local hull of ``data=``, else none."""
        return self.hull or (f"local:{self.data}" if self.data else None)


def relax_and_screen(options: ScreenOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Relax ``options.inputs`` into ``options.out`` (resuming), place them on a hull, write relax.csv and summary.json."""
    import csv
    import io

    from nesfgen.relax import gather_inputs, relax_all, relaxed_crystal

    started = time.perf_counter()
    out, data, spec = Path(options.out), options.data, options.hull_spec
    reference_name = data or (spec.removeprefix("local:") if spec and spec != "mp" else None)
    chosen = open_hull(spec, options.potential) if spec else None  # before relaxing: a missing hull fails at once
    reference = None
    if reference_name:
        from nesfgen.data.names import resolve_dataset

        reference = resolve_dataset(reference_name).load("train")
    items = gather_inputs(options.inputs)
    records = relax_all(items, out, options.relaxation, progress)
    crystals = {}
    for r in records:
        if r["status"] == "relaxed":
            try:
                crystals[r["id"]] = relaxed_crystal(out, r["id"])
            except UserError as error:  # e.g. a relaxed file removed or edited since: report it, go on
                r.update(status="failed", reason=f"relaxed structure unreadable: {error}")
    summary = screen(records, crystals, chosen, reference)
    summary.update(
        novelty_reference=f"{reference_name}:train" if reference_name else None,
        fmax=options.fmax,
        steps=options.steps,
        rattle=options.rattle,
        potential=_potential_version(options.potential),
        seconds=time.perf_counter() - started,
        out=str(out),
    )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    atomic_write_text(Path(out) / "relax.csv", buffer.getvalue())
    atomic_write_text(Path(out) / "summary.json", json.dumps(summary, indent=1, default=str))
    return summary


@dataclass(frozen=True, kw_only=True)
class HullOptions:
    """Which dataset split's structures make the local hull, relaxed or single point, for which elements, with
    which CHGNet weights."""

    name: str = required("give the dataset: nesfgen data hull NAME")
    split: str = "train"
    relax: bool = False
    limit: int = 0  # 0: all
    elements: tuple[str, ...] = ()
    potential: str = DEFAULT_POTENTIAL

    def __post_init__(self) -> None:
        require(self.limit >= 0, "limit", self.limit, "0 (all) or a number of structures")
