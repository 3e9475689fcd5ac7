"""Importers: the paper's pickled folders, CIF/POSCAR files and CDVAE-style CSVs into dataset folders."""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import pickle
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from nesfgen.crystal import Crystal
from nesfgen.data.store import CrystalSet, Dataset, content_hash, open_dataset, write_dataset
from nesfgen.errors import UserError
from nesfgen.files import output_folder

if TYPE_CHECKING:
    from pymatgen.core import Structure

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
PAPER_LICENSE = (
    "MIT License, Copyright (c) 2023 NeSF Project: datasets released with Chiba et al., 'Neural structure fields "
    "with application to crystal structure autoencoders', Communications Materials 4, 106 (2023); "
    "structures from the Materials Project"
)
#: pymatgen notes that do not mean the parsed structure is wrong (matched anywhere in the note: pymatgen puts
#: counts in front, "2 fractional coordinates rounded ..."); every other pymatgen warning refuses the input
HARMLESS_PYMATGEN_WARNINGS = (
    "Skipping relative stoichiometry check",
    "fractional coordinates rounded to ideal values",
    "A 1-line symmetry op P1 CIF is detected",
    "No _symmetry_equiv_pos_as_xyz type key found",
    "Keys changed to match new magCIF specification",
    "No Pauling electronegativity for",  # noble gases (He, Ne, Ar): pymatgen's oxidation guess, not the structure
)
CELL_KEYS = ("_cell_length_a", "_cell_length_b", "_cell_length_c")
ANGLE_KEYS = ("_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")
FRACT_KEYS = ("_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z")


@dataclass(frozen=True)
class ImportReport:
    """What an import wrote and what it left out, for the caller to show the user.

    ``skipped`` holds ``(entry, reason)`` for each input refused under ``skip_invalid``; ``notes`` says
    what else the user should know (splits not released, all structures put in one split).
    """

    dataset: Dataset
    imported: dict[str, int]
    skipped: list[tuple[str, str]]
    notes: list[str]
    unchanged: bool = False  # the folder already held exactly this import and was kept

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.dataset.name,
            "path": str(self.dataset.path),
            "imported": dict(self.imported),
            "unchanged": self.unchanged,
            "skipped": [{"entry": entry, "reason": why} for entry, why in self.skipped],
        }


class _Entries:
    """Valid crystals of one import; bad entries raise, or are recorded when ``skip_invalid`` is set."""

    def __init__(self, skip_invalid: bool):
        self.skip_invalid = skip_invalid
        self.skipped: list[tuple[str, str]] = []
        self._ids: dict[str, str] = {}

    @contextmanager
    def entry(self, where: str) -> Iterator[None]:
        """Prefix any UserError raised inside with ``where``, or record it and carry on."""
        try:
            yield
        except UserError as error:
            if not self.skip_invalid:
                raise UserError(f"{where}: {error}") from None
            self.skipped.append((where, str(error)))

    def claim_id(self, id: str, where: str) -> None:
        """Refuse a second structure with the same id: ids name structures in datasets and reports."""
        if id in self._ids:
            raise UserError(f"id {id!r} is already used by {self._ids[id]}")
        self._ids[id] = where


# --- the paper's pickles ---------------------------------------------------------------------------------------------


@functools.cache
def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The globals a pickle of numpy arrays and scalars refers to, under numpy 1 and numpy 2 module names."""
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5 pickles arrays through it
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays, tuples, lists, numbers and strings; refuses every other global, so no code runs."""

    def __init__(self, file: BinaryIO, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        allowed = _numpy_globals().get((module, name))
        if allowed is None:
            raise UserError(
                f"{self.path}: refused to load the global {module}.{name}: a paper dataset pickle may hold only "
                "numpy arrays, tuples, lists, numbers and strings (the file is corrupt or may carry code)"
            )
        return allowed


def _unpickle(path: Path) -> Any:
    """Load an untrusted pickle through :class:`_ArrayUnpickler`.

    Raises:
        UserError: naming the file, for a refused global or an unreadable pickle.
    """
    try:
        with open(path, "rb") as file:
            return _ArrayUnpickler(file, path).load()
    except UserError:
        raise
    except Exception as error:  # a damaged pickle fails in many ways (EOFError, UnpicklingError, ValueError...)
        raise UserError(f"{path}: not a readable pickle ({type(error).__name__}: {error})") from None


def _species_table(path: Path) -> list[int]:
    """``sidx_to_z`` of a ``dataset_attr.json``: species index -> atomic number."""
    try:
        table = json.loads(path.read_text())["sidx_to_z"]
    except FileNotFoundError:
        raise UserError(f"{path} is missing: it maps the pickle's species indices to elements") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path}: cannot read 'sidx_to_z' ({type(error).__name__}: {error})") from None
    if not isinstance(table, list) or not all(isinstance(z, int) and not isinstance(z, bool) for z in table):
        raise UserError(f"{path}: 'sidx_to_z' must be a list of atomic numbers")
    return table


def _paper_frame(lengths: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Row-vector lattice of the released positions: a along x, b in the xy plane (angles in radians).

    Not pymatgen's ``from_parameters`` frame (c along z): in that frame the atoms of 124 of the 140 oblique
    LCS6Å train cells fall outside their cell, in this one every atom of every released folder lies inside.
    """
    a, b, c = lengths
    alpha, beta, gamma = angles
    cx = c * np.cos(beta)
    cy = c * (np.cos(alpha) - np.cos(beta) * np.cos(gamma)) / np.sin(gamma)
    cz = np.sqrt(c * c - cx * cx - cy * cy)
    return np.array([[a, 0.0, 0.0], [b * np.cos(gamma), b * np.sin(gamma), 0.0], [cx, cy, cz]])


def _paper_crystal(entry: Any, table: Sequence[int]) -> Crystal:
    """One pickled tuple ``(positions Å, species indices, (a, b, c), (α, β, γ) radians, material_id)``."""
    if not isinstance(entry, (tuple, list)) or len(entry) != 5:
        raise UserError("expected a tuple (positions, species, lengths, angles, material_id)")
    positions, species, lengths, angles, material_id = entry
    if not isinstance(material_id, str):
        raise UserError(f"material_id must be a string, got {type(material_id).__name__}")
    try:
        positions = np.asarray(positions, dtype=np.float64)  # (N, 3)
        species = np.asarray(species)  # (N,)
        lengths = np.asarray(lengths, dtype=np.float64)
        radians = np.asarray(angles, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise UserError(f"structure {material_id!r}: non-numeric positions or lattice ({error})") from None
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise UserError(f"structure {material_id!r}: positions must have shape (N, 3), got {positions.shape}")
    if species.ndim != 1 or (species.size and not np.issubdtype(species.dtype, np.integer)):
        raise UserError(f"structure {material_id!r}: species must be a 1-d array of integer indices")
    outside = (species < 0) | (species >= len(table))
    if np.any(outside):
        raise UserError(
            f"structure {material_id!r}: species index {int(species[outside][0])} is outside the species table "
            f"(sidx_to_z has {len(table)} entries)"
        )
    numbers = [table[int(i)] for i in species]
    with np.errstate(all="ignore"):  # a NaN or degenerate lattice is reported by Crystal.create below
        try:
            frac = positions @ np.linalg.inv(_paper_frame(lengths, radians))
        except (np.linalg.LinAlgError, ValueError):
            frac = np.full_like(positions, np.nan)
    return Crystal.create(lengths, np.degrees(radians), atomic_numbers=numbers, frac_coords=frac, id=material_id)


def _read_paper_folder(folder: Path, entries: _Entries) -> list[Crystal]:
    pickle_path = folder / "dataset.pkl"
    table = _species_table(folder / "dataset_attr.json")
    records = _unpickle(pickle_path)
    if not isinstance(records, list):
        raise UserError(f"{pickle_path}: expected a list of structure tuples, got {type(records).__name__}")
    crystals = []
    for index, record in enumerate(records):
        has_id = isinstance(record, (tuple, list)) and len(record) == 5 and isinstance(record[4], str)
        where = f"{pickle_path} entry {index}" + (f" ({record[4]})" if has_id else "")
        with entries.entry(where):
            crystal = _paper_crystal(record, table)
            entries.claim_id(crystal.id, where)
            crystals.append(crystal)
    return crystals


def load_paper_folder(folder: str | Path) -> list[Crystal]:
    """The structures of one released folder (``dataset.pkl`` + ``dataset_attr.json``), validated.

    Raises:
        UserError: naming the file and entry, for a refused or unreadable pickle or an invalid structure.
    """
    return _read_paper_folder(Path(folder), _Entries(skip_invalid=False))


def _paper_split_folders(src: Path) -> tuple[dict[str, Path], list[str]]:
    """Split name -> folder, and notes: ``src`` itself when it holds ``dataset.pkl``, else ``{src}_train`` etc."""
    if (src / "dataset.pkl").is_file():
        split = next((s for s in SPLITS if src.name.endswith(f"_{s}")), "all")
        return {split: src}, []
    folders = {s: src.with_name(f"{src.name}_{s}") for s in SPLITS}
    found = {s: f for s, f in folders.items() if (f / "dataset.pkl").is_file()}
    if not found:
        raise UserError(
            f"no paper dataset at {src}: expected {src}/dataset.pkl or split folders such as "
            f"{folders['train']}/dataset.pkl (to import the whole nesf-paper folder, import it as a collection)"
        )
    notes = [
        f"{folder} has no dataset.pkl: split {split!r} not imported"
        for split, folder in folders.items()
        if split not in found and folder.is_dir()
    ]
    return found, notes


def _collect_paper(src: Path, skip_invalid: bool) -> tuple[dict[str, list[Crystal]], _Entries, list[str], list[str]]:
    """Read every split of ``src``: (splits, entries, notes, source folders)."""
    folders, notes = _paper_split_folders(src)
    entries = _Entries(skip_invalid)
    splits = {split: _read_paper_folder(folder, entries) for split, folder in folders.items()}
    return splits, entries, notes, [str(f) for f in folders.values()]


def _paper_provenance(sources: list[str], importer: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {"format": "paper", "importer": importer, "sources": sources, "license": PAPER_LICENSE, **extra}


def import_paper(src: str | Path, out: str | Path, skip_invalid: bool = False) -> ImportReport:
    """Convert the paper's released folders into a dataset folder (pickle read once, through a safe unpickler).

    Args:
        src: a split prefix such as ``.../dataset_lim_l6`` (its ``_train``, ``_val``, ``_test`` folders that exist
            become those splits) or one folder holding ``dataset.pkl`` (split named by its ``_train``/``_val``/
            ``_test`` suffix, else ``all``).
        out: the dataset folder to create; nothing is written unless every structure is valid.
        skip_invalid: leave invalid structures out and list them in the report instead of failing.

    Raises:
        UserError: naming the file and entry at fault, or if ``out`` exists.
    """
    src, out = Path(src), Path(out)
    _refuse_existing(out)
    splits, entries, notes, sources = _collect_paper(src, skip_invalid)
    provenance = _paper_provenance(sources, "nesfgen.data.importers.import_paper", {})
    return _write(out, splits, entries, notes, provenance)


def _paper_collection(root: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    """(canonical name, split prefix, provenance notes) of each dataset the paper released."""
    icsg3d_train = root / "dataset_ICSG3D_train" / "dataset_attr.json"
    try:
        released_ids = f" ({len(json.loads(icsg3d_train.read_text())['mpid'])} ids)"
    except (OSError, ValueError, KeyError, TypeError):
        released_ids = ""
    collection = [
        ("lcs6", root / "dataset_lim_l6", {"paper_name": "LCS6Å"}),
        (
            "icsg3d",
            root / "dataset_ICSG3D",
            {
                "paper_name": "ICSG3D",
                "note": "the train split's structures are not released, only their Materials Project ids "
                f"in {icsg3d_train}{released_ids}; this dataset has the val and test splits only",
            },
        ),
    ]
    for fold in range(20):
        note = f"fold {fold} of the paper's 20-fold cross-validation over the same 100 structures"
        collection.append(
            (f"ybco-fold{fold}", root / f"dataset_YBCO13_fold{fold}", {"paper_name": "YBCO-like", "note": note})
        )
    return collection


def import_paper_collection(root: str | Path, out_dir: str | Path, skip_invalid: bool = False) -> list[ImportReport]:
    """Import every dataset of the paper's ``nesf-paper`` folder as ``out_dir/<name>``.

    Names: ``lcs6``, ``icsg3d`` (val and test only: the train structures were not released) and
    ``ybco-fold0`` … ``ybco-fold19``. Everything is read and validated before the first folder is written,
    and a failure while writing removes what this call wrote. A rerun after an interrupted import finishes
    it: a dataset folder that already holds exactly what this import would write (same sources, same content
    hash) is kept and reported as unchanged, and the staging folder the interrupted write left is removed.

    Raises:
        UserError: if ``root`` holds none of the paper's datasets, a target folder exists with other content,
            or an input is invalid.
    """
    root, out_dir = Path(root), Path(out_dir)
    present = [
        (name, prefix, extra)
        for name, prefix, extra in _paper_collection(root)
        if any((prefix.with_name(f"{prefix.name}_{s}") / "dataset.pkl").is_file() for s in SPLITS)
    ]
    if not present:
        raise UserError(f"{root} holds none of the paper's dataset_* folders (dataset_lim_l6_train/dataset.pkl ...)")
    collected = [(name, _collect_paper(prefix, skip_invalid), extra) for name, prefix, extra in present]
    kept: dict[str, Dataset] = {}
    conflicts = []
    for name, (splits, _, _, sources), _ in collected:
        if (out_dir / name).exists():
            same = _same_import(out_dir / name, splits, sources)
            if same is None:
                conflicts.append(str(out_dir / name))
            else:
                kept[name] = same
    if conflicts:
        raise UserError(
            "these dataset folders already exist and do not hold what this import would write; remove them "
            f"first or import into another data directory: {', '.join(conflicts)}"
        )
    reports: list[ImportReport] = []
    try:
        for name, (splits, entries, notes, sources), extra in collected:
            if name in kept:
                imported = {split: len(crystals) for split, crystals in splits.items()}
                reports.append(ImportReport(kept[name], imported, list(entries.skipped), notes, unchanged=True))
                continue
            provenance = _paper_provenance(sources, "nesfgen.data.importers.import_paper_collection", extra)
            reports.append(_write(out_dir / name, splits, entries, notes, provenance))
    except BaseException:
        for report in reports:
            if not report.unchanged:
                shutil.rmtree(report.dataset.path, ignore_errors=True)
        raise
    return reports


def _same_import(folder: Path, splits: Mapping[str, Sequence[Crystal]], sources: Sequence[str]) -> Dataset | None:
    """The dataset in ``folder`` if it is sound and holds exactly these splits from these sources, else None."""
    try:
        dataset = open_dataset(folder).verify()
    except UserError:
        return None
    recorded = dataset.manifest.get("provenance", {}).get("sources")
    if not isinstance(recorded, list) or [Path(s).resolve() for s in recorded] != [Path(s).resolve() for s in sources]:
        return None
    expected = content_hash({split: CrystalSet.from_crystals(crystals) for split, crystals in splits.items()})
    return dataset if expected == dataset.content_hash else None


# --- CIF, POSCAR and CDVAE CSV -----------------------------------------------------------------------------------------


@contextmanager
def _pymatgen_parsing() -> Iterator[list[str]]:
    """Turn pymatgen's exceptions, and its warnings about the input, into UserError.

    Yields a list to which the caller adds notes pymatgen keeps without warning (``CifParser.warnings``).
    """
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield notes
        except UserError:
            raise
        except Exception as error:  # pymatgen raises anything from ValueError to ZeroDivisionError on bad input
            said = "".join(f"; {w.message}" for w in caught if issubclass(w.category, UserWarning))
            raise UserError(f"cannot parse the structure ({type(error).__name__}: {error}{said})") from None
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            notes.append(str(warning.message))
        else:  # about code, not about the input: pass it on
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    problems = [n for n in dict.fromkeys(notes) if not any(harmless in n for harmless in HARMLESS_PYMATGEN_WARNINGS)]
    if problems:
        raise UserError(f"pymatgen reports: {'; '.join(problems)}")


def _cif_number(block: Any, key: str, index: int | None = None) -> float:
    from pymatgen.io.cif import str2float

    value = block.data.get(key)
    if value is None:
        raise UserError(f"missing {key}")
    text = value[index] if index is not None else value
    try:
        return float(str2float(text))
    except (TypeError, ValueError):
        raise UserError(f"{key} is {text!r}, not a number") from None


def _check_cif_block(block: Any) -> None:
    """Refuse what pymatgen would silently repair: a non-positive or NaN cell, no atoms, non-numeric positions.

    Positions outside the cell (x = -0.515, 1.63) are valid CIF and are wrapped into it later.
    """
    for key in (*CELL_KEYS, *ANGLE_KEYS):
        value = _cif_number(block, key)
        if not math.isfinite(value):
            raise UserError(f"{key} is {value}: lattice parameters must be finite numbers, not NaN or infinity")
        if key in CELL_KEYS and value <= 0:
            raise UserError(f"{key} is {value}: lattice lengths must be positive")
        if key in ANGLE_KEYS and not 0 < value < 180:
            raise UserError(f"{key} is {value}: lattice angles must lie in (0, 180) degrees")
    if not block.data.get("_atom_site_fract_x") and not block.data.get("_atom_site_Cartn_x"):
        raise UserError("has no atom sites (no _atom_site_fract_x loop): an empty structure")
    if not block.data.get("_atom_site_fract_x"):
        return
    labels = block.data.get("_atom_site_label") or block.data.get("_atom_site_type_symbol") or []
    for index in range(len(block.data["_atom_site_fract_x"])):
        for key in FRACT_KEYS:
            value = _cif_number(block, key, index)
            if not math.isfinite(value):
                label = labels[index] if index < len(labels) else str(index)
                raise UserError(f"atom site {label} has {key} = {value}, not a finite number")


def _structures_from_cif(text: str) -> list[Structure]:
    """Every structure of a CIF text, refusing malformed input instead of repairing it."""
    from pymatgen.io.cif import CifFile, CifParser

    with _pymatgen_parsing() as notes:
        try:
            blocks = list(CifFile.from_str(text).data.values())
        except Exception as error:  # CifFile fails on broken loops with ZeroDivisionError, ValueError...
            raise UserError(f"malformed CIF ({type(error).__name__}: {error})") from None
        if not blocks:
            raise UserError("not a CIF: no data_ block found")
        for block in blocks:
            _check_cif_block(block)
        parser = CifParser.from_str(text)
        structures = parser.parse_structures(primitive=False, on_error="raise")
        notes.extend(parser.warnings)
    return structures


def structures_from_file(path: Path) -> list[Structure]:
    if path.suffix.lower() == ".cif":
        return _structures_from_cif(path.read_text(encoding="utf-8", errors="replace"))
    from pymatgen.core import Structure

    with _pymatgen_parsing():
        return [Structure.from_file(path)]


def _to_crystal(structure: Structure, id: str, properties: Mapping[str, float] | None = None) -> Crystal:
    """The conventional standard cell of a parsed structure."""
    from pymatgen.core import DummySpecies

    for site in structure:
        for species in site.species:
            if isinstance(species, DummySpecies):
                raise UserError(f"unknown element {species.symbol!r}")
    return Crystal.from_structure(structure, id=id, properties=properties, conventional=True)


def is_structure_file(path: Path) -> bool:
    return path.suffix.lower() in (".cif", ".vasp") or path.name.startswith("POSCAR")


def structure_files(paths: Sequence[str | Path]) -> list[Path]:
    """The CIF/POSCAR files named, in order, each folder replaced by the structure files it holds (sorted),
    each file once.

    Raises:
        UserError: for a path that does not exist, a folder that holds no structure file, or no path at all.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_structure_file(p))
            if not found:
                raise UserError(f"{path} holds no *.cif, POSCAR* or *.vasp files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"structure file {path} does not exist")
    if not files:
        raise UserError("no structure files given")
    return list(dict.fromkeys(files))


def read_structure_file(path: str | Path) -> Crystal:
    """The conventional standard cell of the one structure in a CIF or POSCAR file; its id is the file stem.

    Raises:
        UserError: naming the file, when it is missing or unreadable or holds no or several structures.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"structure file {path} does not exist")
    try:
        structures = structures_from_file(path)
        if len(structures) != 1:
            raise UserError(f"holds {len(structures)} structures; give a file with exactly one")
        return _to_crystal(structures[0], path.stem)
    except UserError as error:
        raise UserError(f"{path}: {error}") from None


def import_cif(
    src: str | Path | Sequence[str | Path],
    out: str | Path,
    skip_invalid: bool = False,
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> ImportReport:
    """Import CIF and POSCAR files as conventional standard cells, split train/val/test by a seeded shuffle.

    Args:
        src: a folder (its ``*.cif``, ``POSCAR*`` and ``*.vasp`` files) or a list of files. A structure's id is its
            file stem (``stem-1``, ``stem-2`` … when a CIF holds several structures).
        out: the dataset folder to create.
        skip_invalid: leave invalid files out and list them in the report instead of failing.
        seed: seed of the shuffle that assigns structures to splits.
        fractions: train, val and test fractions; a split with fraction 0 is not made.

    Raises:
        UserError: naming the file and what is wrong with it, or if ``out`` exists.
    """
    out = Path(out)
    _refuse_existing(out)
    files = sorted(structure_files([src] if isinstance(src, (str, Path)) else src))  # the split's seed sees one order
    entries = _Entries(skip_invalid)
    crystals = []
    for file in files:
        with entries.entry(str(file)):
            structures = structures_from_file(file)
            ids = [file.stem] if len(structures) == 1 else [f"{file.stem}-{k + 1}" for k in range(len(structures))]
            parsed = [_to_crystal(s, id) for s, id in zip(structures, ids)]
            for crystal in parsed:
                entries.claim_id(crystal.id, str(file))
            crystals.extend(parsed)
    splits, notes = seeded_split(crystals, seed, fractions)
    sources = [str(src)] if isinstance(src, (str, Path)) else [str(f) for f in files]
    provenance = {
        "format": "cif",
        "importer": "nesfgen.data.importers.import_cif",
        "sources": sources,
        "files": len(files),
        "cell": "conventional standard cell (spglib, symprec 0.01)",
        "split": {"seed": seed, "fractions": list(fractions)},
    }
    return _write(out, splits, entries, notes, provenance)


def _read_cdvae_csv(path: Path, entries: _Entries) -> list[Crystal]:
    """The rows of one CDVAE-style CSV: ``material_id``, ``cif`` and numeric property columns."""
    try:
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"{path}: cannot read the CSV ({type(error).__name__}: {error})") from None
    if "cif" not in columns:
        raise UserError(f"{path}: no 'cif' column; the columns are: {', '.join(columns) or 'none'}")
    candidates = [c for c in columns if c not in ("cif", "material_id") and c.strip() and not c.startswith("Unnamed")]
    properties = [c for c in candidates if all(_is_float(row[c]) for row in rows if row[c])]
    crystals = []
    for number, row in enumerate(rows, start=1):
        id = row.get("material_id") or f"{path.stem}-{number}"
        where = f"{path} row {number} ({id})"
        with entries.entry(where):
            values = {name: float(row[name]) for name in properties if row[name]}
            structures = _structures_from_cif(row["cif"] or "")
            if len(structures) != 1:
                raise UserError(f"the cif field holds {len(structures)} structures, expected one")
            crystal = _to_crystal(structures[0], id, values)
            entries.claim_id(id, where)
            crystals.append(crystal)
    return crystals


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def import_cdvae_csv(
    src: str | Path,
    out: str | Path,
    skip_invalid: bool = False,
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> ImportReport:
    """Import CSVs laid out as CDVAE's perov_5, carbon_24 and mp_20 (conventional cells, numeric columns kept).

    Args:
        src: a folder with ``train.csv``, ``val.csv``, ``test.csv`` (each present file becomes that split) or one
            CSV file (``train.csv`` etc. become that split; any other name is split by a seeded shuffle).
        out: the dataset folder to create.
        skip_invalid: leave invalid rows out and list them in the report instead of failing.
        seed: seed of the shuffle for a single CSV.
        fractions: train, val and test fractions for a single CSV.

    Raises:
        UserError: naming the file, row and problem, or if ``out`` exists.
    """
    src, out = Path(src), Path(out)
    _refuse_existing(out)
    entries = _Entries(skip_invalid)
    provenance: dict[str, Any] = {
        "format": "cdvae-csv",
        "importer": "nesfgen.data.importers.import_cdvae_csv",
        "cell": "conventional standard cell (spglib, symprec 0.01)",
    }
    notes: list[str] = []
    if src.is_dir():
        files = {split: src / f"{split}.csv" for split in SPLITS if (src / f"{split}.csv").is_file()}
        if not files:
            raise UserError(f"{src} holds none of train.csv, val.csv, test.csv")
        splits = {split: _read_cdvae_csv(file, entries) for split, file in files.items()}
        provenance["sources"] = [str(f) for f in files.values()]
    elif src.is_file():
        crystals = _read_cdvae_csv(src, entries)
        provenance["sources"] = [str(src)]
        if src.stem in SPLITS:
            splits = {src.stem: crystals}
        else:
            splits, notes = seeded_split(crystals, seed, fractions)
            provenance["split"] = {"seed": seed, "fractions": list(fractions)}
    else:
        raise UserError(f"{src} does not exist")
    return _write(out, splits, entries, notes, provenance)


# --- shared ------------------------------------------------------------------------------------------------------------


def seeded_split(
    crystals: list[Crystal], seed: int, fractions: Sequence[float]
) -> tuple[dict[str, list[Crystal]], list[str]]:
    """Assign crystals to train/val/test by a seeded shuffle, each split with a positive fraction non-empty.

    With fewer crystals than such splits, all go to the first of them (train) and a note says so.
    """
    fractions = [float(f) for f in fractions]
    if len(fractions) != 3 or not all(math.isfinite(f) and f >= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    wanted = {split: f for split, f in zip(SPLITS, fractions) if f > 0}
    total = len(crystals)
    if total < len(wanted):
        first = next(iter(wanted))
        note = f"only {total} structure(s): all put in split {first!r} (a {'/'.join(wanted)} split needs {len(wanted)})"
        return {first: crystals}, [note] if total else []
    counts = {split: max(1, math.floor(total * f)) for split, f in wanted.items()}
    while sum(counts.values()) < total:  # hand out the remainder where the shortfall is largest
        counts[max(wanted, key=lambda s: total * wanted[s] - counts[s])] += 1
    while sum(counts.values()) > total:  # minimum-one bumps overshot: take from the largest split
        counts[max(counts, key=counts.get)] -= 1
    order = np.random.default_rng(seed).permutation(total)
    splits, start = {}, 0
    for split, count in counts.items():
        splits[split] = [crystals[i] for i in sorted(order[start : start + count])]
        start += count
    return splits, []


def _refuse_existing(out: Path) -> None:
    """Fail before any parsing work when the target exists or cannot be written (write_dataset checks again)."""
    output_folder(out, "dataset folder", create=False)
    if out.exists():
        raise UserError(f"{out} already exists; choose another --out or remove it first")


def _write(
    out: Path,
    splits: dict[str, list[Crystal]],
    entries: _Entries,
    notes: list[str],
    provenance: dict[str, Any],
) -> ImportReport:
    """Write the dataset once every split has a valid structure; return the report."""
    if not any(splits.values()):
        if not entries.skipped:
            raise UserError(f"nothing to import into {out}: the input holds no structures")
        reasons = "".join(f"\n  {where}: {reason}" for where, reason in entries.skipped[:5])
        raise UserError(
            f"nothing valid to import into {out}: {len(entries.skipped)} entries skipped, none left{reasons}"
        )
    for split, crystals in splits.items():
        if not crystals:
            raise UserError(f"split {split!r} of {out} would be empty: its input holds no valid structure")
    provenance = {
        **provenance,
        "imported_on": datetime.now(timezone.utc).date().isoformat(),
        "skipped": [list(item) for item in entries.skipped],
        "notes": notes,
    }
    dataset = write_dataset(out, splits, name=out.name, provenance=provenance)
    imported = {split: len(crystals) for split, crystals in splits.items()}
    log.info("imported %s into %s (%d skipped)", imported, out, len(entries.skipped))
    return ImportReport(dataset=dataset, imported=imported, skipped=list(entries.skipped), notes=list(notes))


IMPORT_FORMATS = ("paper", "cif", "cdvae-csv")


def import_any(src: Path, format: str, out: Path | None, skip_invalid: bool = False) -> list[ImportReport]:
    """Import ``src`` in one of IMPORT_FORMATS into ``out``; the paper's whole folder without ``out`` goes into
    the data directory, one dataset per paper dataset."""
    from nesfgen.data.store import data_dir

    if format not in IMPORT_FORMATS:
        raise UserError(f"unknown --format {format!r}; choose one of: {', '.join(IMPORT_FORMATS)}")
    if format == "paper" and out is None and src.is_dir() and not (src / "dataset.pkl").exists():
        return import_paper_collection(src, data_dir(), skip_invalid=skip_invalid)
    if out is None:
        raise UserError("--out DIR is required: the dataset folder to write")
    importer = {"paper": import_paper, "cif": import_cif, "cdvae-csv": import_cdvae_csv}[format]
    return [importer(src, out, skip_invalid=skip_invalid)]
