"""Space-group symmetry of crystals with spglib: analysis over a tolerance ladder, and snapping to it.

The paper's first stated limitation is that decoded cells do not obey space-group symmetry. This module
measures that (the space group a structure has at each tolerance, compared with its input's) and offers
the fix (:func:`symmetrize`: spglib's refined cell, expressed back in the decoded cell's own basis).
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from nesfgen.config import STATED_SYMPREC, check_symprec
from nesfgen.crystal import Crystal, symmetry_dataset
from nesfgen.errors import UserError, require

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from nesfgen.data.store import Dataset

log = logging.getLogger(__name__)

#: spglib's symprec (Å) at which structures are analysed
TOLERANCES = (0.01, 0.05, 0.1, 0.2)
#: first space-group number of each crystal system
CRYSTAL_SYSTEMS = (
    (195, "cubic"),
    (168, "hexagonal"),
    (143, "trigonal"),
    (75, "tetragonal"),
    (16, "orthorhombic"),
    (3, "monoclinic"),
    (1, "triclinic"),
)
DECODED_SUFFIX = ".decoded.cif"
INPUT_SUFFIX = ".input.cif"


def crystal_system(number: int) -> str:
    """The crystal system of an international space-group number (1-230)."""
    if not 1 <= number <= 230:
        raise UserError(f"space-group number must lie in 1..230, got {number}")
    return next(name for first, name in CRYSTAL_SYSTEMS if number >= first)


@dataclass(frozen=True)
class SpaceGroup:
    """A space group as spglib names it: international number and Hermann-Mauguin symbol."""

    number: int
    symbol: str

    def __str__(self) -> str:
        return f"{self.symbol} ({self.number})"


def space_group(crystal: Crystal, symprec: float = STATED_SYMPREC) -> SpaceGroup | None:
    """The space group spglib finds at ``symprec`` (Å), or None when it finds no symmetry."""
    dataset = symmetry_dataset(crystal, symprec)
    if dataset is None:
        log.debug("spglib found no symmetry for %r at symprec %s", crystal.id, symprec)
        return None
    return SpaceGroup(int(dataset.number), str(dataset.international))


def space_group_number(crystal: Crystal, symprec: float = STATED_SYMPREC) -> int:
    """The international space-group number, 0 when spglib finds no symmetry (a histogram bin of its own)."""
    found = space_group(crystal, symprec)
    return found.number if found else 0


@dataclass(frozen=True)
class SymmetryLevel:
    """What spglib finds at one tolerance; ``number`` is None when it finds nothing."""

    symprec: float
    number: int | None
    symbol: str | None  # Hermann-Mauguin, e.g. Fm-3m
    crystal_system: str | None
    wyckoffs: tuple[str, ...]  # letter per atom, in the crystal's atom order
    sites: str  # orbits as "element count+letter", e.g. "Na 4a, Cl 4b"

    def to_dict(self) -> dict[str, Any]:
        return {
            "symprec": self.symprec,
            "number": self.number,
            "symbol": self.symbol,
            "crystal_system": self.crystal_system,
            "wyckoffs": list(self.wyckoffs),
            "sites": self.sites,
        }


@dataclass(frozen=True)
class SymmetryReport:
    """The space group of one structure at each tolerance of a ladder."""

    id: str
    formula: str
    num_atoms: int
    levels: tuple[SymmetryLevel, ...]

    def at(self, symprec: float) -> SymmetryLevel:
        for level in self.levels:
            if np.isclose(level.symprec, symprec):
                return level
        raise UserError(f"tolerance {symprec} is not among the analysed ones {[lv.symprec for lv in self.levels]}")

    def same_group(self, other: SymmetryReport) -> dict[float, bool]:
        """Per tolerance: do both have the same space group (and one was found at all)?"""
        return {
            level.symprec: level.number is not None and level.number == other.at(level.symprec).number
            for level in self.levels
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "formula": self.formula,
            "num_atoms": self.num_atoms,
            "levels": [level.to_dict() for level in self.levels],
        }


def as_crystal(structure: Crystal | Structure, id: str = "") -> Crystal:
    """A Crystal from a Crystal or an ordered pymatgen Structure.

    Raises:
        UserError: for partial occupancy (disordered sites), an invalid cell or anything else.
    """
    if isinstance(structure, Crystal):
        return structure
    from pymatgen.core import Structure

    if isinstance(structure, Structure):
        return Crystal.from_structure(structure, id=id)
    raise UserError(f"expected a crystal structure (Crystal or pymatgen Structure), got {type(structure).__name__}")


def _check_tolerances(tolerances: Iterable[float]) -> tuple[float, ...]:
    values = tuple(check_symprec(t, "each of tolerances") for t in tolerances)
    if not values:
        raise UserError("give at least one symmetry tolerance")
    return values


def _level(crystal: Crystal, symprec: float) -> SymmetryLevel:
    dataset = symmetry_dataset(crystal, symprec)
    if dataset is None:
        log.debug("spglib found no symmetry for %r at symprec %s", crystal.id, symprec)
        return SymmetryLevel(symprec, None, None, None, (), "")
    from pymatgen.core import Element

    wyckoffs = tuple(str(w) for w in dataset.wyckoffs)
    orbits = np.asarray(dataset.equivalent_atoms)  # (N,) index of each atom's orbit representative
    sites = []
    for representative in dict.fromkeys(orbits.tolist()):
        symbol = Element.from_Z(int(crystal.atomic_numbers[representative])).symbol
        sites.append(f"{symbol} {int(np.sum(orbits == representative))}{wyckoffs[representative]}")
    number = int(dataset.number)
    return SymmetryLevel(
        symprec, number, str(dataset.international), crystal_system(number), wyckoffs, ", ".join(sites)
    )


def analyse(crystal: Crystal | Structure, tolerances: Sequence[float] = TOLERANCES) -> SymmetryReport:
    """The space group, crystal system and Wyckoff letters spglib finds at each tolerance (Å).

    Raises:
        UserError: for a disordered or invalid structure, or a non-positive tolerance.
    """
    crystal = as_crystal(crystal)
    levels = tuple(_level(crystal, symprec) for symprec in _check_tolerances(tolerances))
    return SymmetryReport(crystal.id, crystal.reduced_formula, crystal.num_atoms, levels)


def _highest_symmetry(crystal: Crystal, symprec: float) -> Any:
    """spglib's dataset with the most operations among the ladder's tolerances up to ``symprec``.

    spglib is not monotone in its tolerance, so a smaller one can find a larger group; ties go to the
    smaller tolerance, which moves atoms least.
    """
    best = None
    for tolerance in sorted({t for t in TOLERANCES if t < symprec} | {symprec}):
        dataset = symmetry_dataset(crystal, tolerance)
        if dataset is not None and (best is None or len(dataset.rotations) > len(best.rotations)):
            best = dataset
    return best


def symmetrize(crystal: Crystal, symprec: float = STATED_SYMPREC) -> Crystal:
    """Snap a crystal to the highest-symmetry space group spglib finds within ``symprec`` (Å).

    spglib's refined (idealised and symmetrised) standard cell is mapped back to the crystal's own
    basis and origin: for a decoded conventional cell that is the conventional setting, with the same
    atom count, axis order and Cartesian frame, so the paper's metrics still compare like with like.
    Atoms keep the input's order (each refined atom takes the place of the input atom it came from);
    id and properties are kept.

    Raises:
        UserError: for a disordered or invalid structure, a non-positive tolerance, or when spglib
            finds no symmetry.
    """
    crystal = as_crystal(crystal)
    symprec = check_symprec(symprec)
    where = f"structure {crystal.id!r}" if crystal.id else "structure"
    dataset = _highest_symmetry(crystal, symprec)
    if dataset is None:
        raise UserError(f"{where}: spglib finds no symmetry within symprec={symprec} Å, so it cannot be symmetrised")
    # spglib: (a_s b_s c_s) = (a b c) P⁻¹ and x_s = P x + p (mod 1); the idealisation only rotates, so
    # the refined lattice in our basis is Pᵀ · std_lattice (rows) up to a rotation lengths/angles ignore.
    transform = np.asarray(dataset.transformation_matrix, dtype=float)  # (3, 3) P
    shift = np.asarray(dataset.origin_shift, dtype=float)  # (3,) p
    lattice = transform.T @ np.asarray(dataset.std_lattice, dtype=float)  # (3, 3) rows a, b, c
    std_positions = np.asarray(dataset.std_positions, dtype=float)  # (M, 3)
    std_types = np.asarray(dataset.std_types, dtype=np.int64)  # (M,)
    # every lattice translation n of the standard cell that can land a standard atom inside our cell
    corners = np.array(list(itertools.product((0.0, 1.0), repeat=3))) @ transform.T + shift  # (8, 3)
    ranges = [range(int(np.floor(lo)) - 1, int(np.ceil(hi)) + 1) for lo, hi in zip(corners.min(0), corners.max(0))]
    translations = np.array(list(itertools.product(*ranges)), dtype=float)  # (T, 3)
    frac = (std_positions[:, None, :] + translations[None, :, :] - shift) @ np.linalg.inv(transform).T  # (M, T, 3)
    inside = np.all((frac >= -1e-6) & (frac < 1 - 1e-6), axis=-1)  # (M, T)
    frac, numbers = frac[inside], np.repeat(std_types, inside.sum(axis=1))
    if len(numbers) != crystal.num_atoms:
        raise UserError(
            f"{where}: the refined cell maps back to {len(numbers)} atoms instead of {crystal.num_atoms}; "
            "cannot symmetrise it in its own setting"
        )
    order = _match_atoms(crystal, frac % 1.0, numbers)
    from pymatgen.core import Lattice, Structure

    refined = Structure(Lattice(lattice), [int(z) for z in numbers[order]], frac[order] % 1.0)
    return Crystal.from_structure(refined, id=crystal.id, properties=crystal.properties)


def _match_atoms(crystal: Crystal, frac: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """Index of the refined atom that takes each input atom's place (same species, nearest image)."""
    from scipy.optimize import linear_sum_assignment

    delta = crystal.frac_coords[:, None, :] - frac[None, :, :]  # (N, N, 3)
    delta -= np.round(delta)
    cost = np.linalg.norm(delta @ crystal.lattice, axis=-1)  # (N, N) Å
    cost[crystal.atomic_numbers[:, None] != numbers[None, :]] = 1e6
    rows, columns = linear_sum_assignment(cost)
    return columns[np.argsort(rows)]


def symmetrize_decoded(
    crystals: Sequence[Crystal | None], symprec: float = STATED_SYMPREC
) -> tuple[list[Crystal | None], list[bool]]:
    """Symmetrise decoded structures, keeping one as decoded where that fails (None stays None).

    Returns:
        the structures, and for each whether it could not be symmetrised (kept as decoded).
    """
    check_symprec(symprec)
    result, failed = [], []
    for crystal in crystals:
        try:
            result.append(None if crystal is None else symmetrize(crystal, symprec))
            failed.append(False)
        except UserError as error:
            log.debug("kept %r unsymmetrised: %s", crystal.id, error)
            result.append(crystal)
            failed.append(True)
    return result, failed


def recovery_rates(
    truth: Sequence[Crystal], decoded: Sequence[Crystal | None], tolerances: Sequence[float] = TOLERANCES
) -> tuple[dict[float, float], list[SymmetryReport], list[SymmetryReport | None]]:
    """% of decoded structures whose space group equals their input's, per tolerance (None counts as a miss).

    Returns:
        the rates, and the reports of the true and the decoded structures (for per-structure columns).
    """
    if len(truth) != len(decoded):
        raise ValueError(f"{len(truth)} true crystals but {len(decoded)} decoded ones")
    tolerances = _check_tolerances(tolerances)
    true_reports = [analyse(c, tolerances) for c in truth]
    decoded_reports = [analyse(c, tolerances) if c is not None else None for c in decoded]
    rates = {}
    for symprec in tolerances:
        same = [d is not None and d.same_group(t)[symprec] for t, d in zip(true_reports, decoded_reports)]
        rates[symprec] = 100.0 * float(np.mean(same)) if same else float("nan")
    return rates, true_reports, decoded_reports


# --- structures from files or datasets, for `nesfgen symmetry` --------------------------------------------------------


def read_crystals(path: Path) -> list[Crystal]:
    """The structures of a CIF/POSCAR file as they are (not standardised): ids are the file's stem.

    Raises:
        UserError: naming the file, for unreadable, disordered or invalid structures.
    """
    from nesfgen.data.importers import structures_from_file

    stem = path.name.removesuffix(DECODED_SUFFIX).removesuffix(INPUT_SUFFIX).removesuffix(path.suffix)
    try:
        structures = structures_from_file(path)
        ids = [stem] if len(structures) == 1 else [f"{stem}-{k}" for k in range(len(structures))]
        return [as_crystal(s, id) for s, id in zip(structures, ids)]
    except UserError as error:
        raise UserError(f"{path}: {error}") from None


def _entry(name: str, source: str, report: SymmetryReport) -> dict[str, Any]:
    return {"name": name, "source": source, **report.to_dict(), "input": None, "same_as_input": None}


def analyse_files(paths: Sequence[str | Path], tolerances: Sequence[float] = TOLERANCES) -> list[dict[str, Any]]:
    """Analyse CIF/POSCAR files (folders are expanded); a ``X.decoded.cif`` is compared with ``X.input.cif``.

    That is the layout ``nesfgen reconstruct`` writes. Each entry is a report's ``to_dict()`` with its
    ``source`` file, a display ``name`` and, for decoded structures, ``input`` (the file) and
    ``same_as_input`` (per tolerance).
    """
    tolerances = _check_tolerances(tolerances)
    cache: dict[Path, list[SymmetryReport]] = {}

    def reports(path: Path) -> list[SymmetryReport]:
        if path not in cache:
            cache[path] = [analyse(c, tolerances) for c in read_crystals(path)]
        return cache[path]

    from nesfgen.data.importers import structure_files

    entries = []
    for path in structure_files(paths):
        partner = path.with_name(path.name.removesuffix(DECODED_SUFFIX) + INPUT_SUFFIX)
        paired = path.name.endswith(DECODED_SUFFIX) and partner.is_file()
        found = reports(path)
        for index, report in enumerate(found):
            entry = _entry(path.name if len(found) == 1 else f"{path.name} ({report.id})", str(path), report)
            inputs = reports(partner) if paired else []
            if index < len(inputs):
                entry["input"] = str(partner)
                entry["same_as_input"] = {str(t): same for t, same in report.same_group(inputs[index]).items()}
            entries.append(entry)
    return entries


def analyse_dataset(
    data: str, split: str = "train", limit: int = 0, tolerances: Sequence[float] = TOLERANCES
) -> list[dict[str, Any]]:
    """Analyse the structures of a dataset split (the first ``limit`` only when limit > 0)."""
    from nesfgen.data.names import resolve_dataset

    dataset = resolve_dataset(data)
    if split not in dataset.split_names:
        raise UserError(f"dataset {dataset.name!r} has no split {split!r}; it has {', '.join(dataset.split_names)}")
    crystals = dataset.load(split)
    count = len(crystals) if limit <= 0 else min(limit, len(crystals))
    source = f"{dataset.name}/{split}"
    return [_entry(crystals.ids[i], source, analyse(crystals[i], tolerances)) for i in range(count)]


def agreement(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Over the decoded entries of :func:`analyse_files`: how many share their input's space group, per tolerance."""
    paired = [e["same_as_input"] for e in entries if e["same_as_input"] is not None]
    if not paired:
        return {"decoded": 0, "same_space_group": {}}
    return {
        "decoded": len(paired),
        "same_space_group": {t: sum(p[t] for p in paired) for t in paired[0]},
    }


@dataclass(frozen=True, kw_only=True)
class SymmetryOptions:
    """Structure files (or folders), or a dataset split, and the tolerance ladder."""

    WORDS: ClassVar[str] = "paths"

    paths: tuple[str, ...] = ()
    data: str | None = None
    split: str | None = None
    limit: int | None = None
    tolerances: tuple[float, ...] = TOLERANCES

    def __post_init__(self) -> None:
        require(self.limit is None or self.limit >= 1, "limit", self.limit, "at least 1 (leave it out for all)")


def symmetry_table(options: SymmetryOptions) -> dict[str, Any]:
    """Space groups at each tolerance of the files or dataset entries, and decoded-against-input agreement."""
    if options.paths and options.data:
        raise UserError("give structure files or data=NAME, not both")
    if options.data:
        entries = analyse_dataset(options.data, options.split or "train", options.limit or 0, options.tolerances)
    elif options.paths:
        if options.split is not None or options.limit is not None:
            raise UserError("split= and limit= go with data=NAME, not with structure files")
        entries = analyse_files(options.paths, options.tolerances)
    else:
        raise UserError("nothing to analyse: give CIF/POSCAR files or folders, or data=NAME")
    return {"tolerances": list(options.tolerances), "structures": entries, "agreement": agreement(entries)}


def space_group_histogram(dataset: Dataset, symprec: float = STATED_SYMPREC) -> dict[str, Any]:
    """How many training structures (the first split without ``train``) spglib puts in each space group, most common first.

    A few milliseconds per structure: ``nesfgen data info`` shows it beside the dataset's counts.
    """
    split = "train" if "train" in dataset.split_names else dataset.split_names[0]
    crystals = dataset.load(split)
    groups: Counter[tuple[int, str]] = Counter()
    unassigned = 0
    for crystal in crystals:
        found = space_group(crystal, symprec)
        if found is None:
            unassigned += 1
        else:
            groups[(found.number, found.symbol)] += 1
    ranked = sorted(groups.items(), key=lambda item: (-item[1], item[0][0]))
    return {
        "split": split,
        "symprec": symprec,
        "structures": len(crystals),
        "groups": [{"number": number, "symbol": symbol, "count": count} for (number, symbol), count in ranked],
        "unassigned": unassigned,
    }
