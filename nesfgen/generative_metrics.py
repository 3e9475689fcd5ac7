"""The field's measures of a generative model's samples, computed as CDVAE (Xie et al. 2022) computes them.

- structural validity: no two atoms closer than 0.5 Å, periodic images included, and a cell of at least 0.1 Å³;
- compositional validity: SMACT's charge-neutrality and Pauling electronegativity screen, single elements
  and all-metal alloys counted valid (CDVAE's ``smact_validity``);
- coverage COV-R / COV-P: a sample covers a reference structure when both its CrystalNN structure
  fingerprint (mean of the site fingerprints, matminer's "ops" preset) is within 0.4 and its Magpie
  composition fingerprint, standardised with CDVAE's scaler, within 10 (CDVAE's MP-20 thresholds);
- Wasserstein distances of density, atoms per cell and number of elements between the valid samples and
  the training split;
- uniqueness among the samples and novelty against the training split (StructureMatcher);
- the space-group distribution (spglib, 0.1 Å) against the training split's, and the P1 share.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nesfgen.crystal import Crystal, lattice_matrix
from nesfgen.data.store import CrystalSet
from nesfgen.progress import Progress
from nesfgen.symmetry import space_group, space_group_number

log = logging.getLogger(__name__)


#: two atoms closer than this (Å), periodic images included, make a structure invalid (CDVAE's cutoff)
STRUCTURE_CUTOFF = 0.5
#: a cell smaller than this (Å³) is not a crystal (CDVAE's)
MIN_VOLUME = 0.1
#: how far (Å) to look for the nearest neighbour reported per sample
NEIGHBOUR_SEARCH = 4.0
#: StructureMatcher settings for uniqueness and novelty: those of the reconstruction metrics (CDVAE)
MATCHER_SETTINGS = {"stol": 0.5, "angle_tol": 10.0, "ltol": 0.3}
#: CDVAE's coverage thresholds for MP-20: structure fingerprint distance, standardised composition distance
COVERAGE_CUTOFFS = {"structure": 0.4, "composition": 10.0}
#: grams per cm³ of one atomic mass unit per Å³
AMU_PER_CUBIC_ANGSTROM = 1.66053906660
#: the distributions compared with the training set
DISTRIBUTIONS = ("num_atoms", "density", "num_elements")
#: CDVAE's means and standard deviations of the 132 Magpie features
MAGPIE_SCALER = Path(__file__).parent / "data" / "cdvae_magpie_scaler.json"


# --- validity -----------------------------------------------------------------------------------


def min_distance(crystal: Crystal, search: float = NEIGHBOUR_SEARCH) -> float:
    """Shortest distance (Å) between two atoms, periodic images included; inf if none within ``search``.

    Every atom has its own image one lattice vector away, so the search stops at the reduced cell's
    shortest vector: a collapsed decode's full neighbour list would otherwise take gigabytes.
    """
    structure = crystal.to_structure()
    shortest = min(structure.lattice.get_lll_reduced_lattice().abc)
    _, _, _, distances = structure.get_neighbor_list(min(search, shortest * (1 + 1e-9) + 1e-9))
    return float(distances.min()) if len(distances) else math.inf


def cell_volume(crystal: Crystal) -> float:
    return float(abs(np.linalg.det(lattice_matrix(crystal.lengths, crystal.angles))))


def structurally_valid(crystal: Crystal, distance: float | None = None) -> bool:
    """No two atoms (or an atom and its own image) closer than STRUCTURE_CUTOFF, and a cell of MIN_VOLUME.
    ``distance``: the crystal's shortest interatomic distance when already measured."""
    if distance is None:
        distance = min_distance(crystal, STRUCTURE_CUTOFF)
    return cell_volume(crystal) >= MIN_VOLUME and distance >= STRUCTURE_CUTOFF


def element_counts(atomic_numbers: Sequence[int] | np.ndarray) -> dict[str, int]:
    """Element symbol -> atoms in the cell, in order of atomic number."""
    from pymatgen.core import Element

    numbers, counts = np.unique(np.asarray(atomic_numbers, dtype=np.int64), return_counts=True)
    return {Element.from_Z(int(z)).symbol: int(n) for z, n in zip(numbers, counts)}


def smact_valid(counts: Mapping[str, int]) -> bool:
    """CDVAE's SMACT validity of a composition (element -> count); see :func:`_smact_valid`."""
    gcd = math.gcd(*counts.values())
    return _smact_valid(tuple(counts), tuple(count // gcd for count in counts.values()))


@functools.cache
def _smact_valid(symbols: tuple[str, ...], stoichiometry: tuple[int, ...]) -> bool:
    """Valid if one element, all metals (an alloy), or some choice of SMACT's oxidation states is
    charge-neutral at these (gcd-reduced) counts and passes Pauling's electronegativity test."""
    import smact
    from smact.screening import pauling_test

    if len(symbols) == 1 or all(symbol in smact.metals for symbol in symbols):
        return True
    elements = smact.element_dictionary(symbols)
    ordered = [elements[symbol] for symbol in symbols]
    electronegativities = [element.pauling_eneg for element in ordered]
    stoichs = [(count,) for count in stoichiometry]
    for states in itertools.product(*(element.oxidation_states for element in ordered)):
        if not smact.neutral_ratios(states, stoichs=stoichs, threshold=max(stoichiometry)):  # neutral ratios
            continue
        try:
            if pauling_test(states, electronegativities):
                return True
        except TypeError:  # an element without an electronegativity: accepted, as CDVAE does
            return True
    return False


def compositionally_valid(crystal: Crystal) -> bool:
    return smact_valid(element_counts(crystal.atomic_numbers))


# --- uniqueness and novelty ----------------------------------------------------------------------


def reduced_formula(atomic_numbers: Sequence[int] | np.ndarray) -> str:
    from pymatgen.core import Composition

    return Composition(element_counts(atomic_numbers)).reduced_formula


def _matcher() -> Any:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(**MATCHER_SETTINGS)


def unique_flags(crystals: Sequence[Crystal]) -> list[bool]:
    """True for the first crystal of each group of StructureMatcher-equal ones (compared within a formula)."""
    matcher = _matcher()
    kept: dict[str, list[Any]] = defaultdict(list)  # reduced formula -> structures of the unique ones
    flags = []
    for crystal in crystals:
        structure = crystal.to_structure()
        group = kept[reduced_formula(crystal.atomic_numbers)]
        unique = not any(matcher.fit(structure, other) for other in group)
        if unique:
            group.append(structure)
        flags.append(unique)
    return flags


def novel_flags(crystals: Sequence[Crystal], reference: CrystalSet) -> list[bool]:
    """True for each crystal that StructureMatcher matches to no reference structure of the same formula."""
    matcher = _matcher()
    by_formula: dict[str, list[int]] = defaultdict(list)
    for index in range(len(reference)):
        start, stop = reference.offsets[index], reference.offsets[index + 1]
        by_formula[reduced_formula(reference.atomic_numbers[start:stop])].append(index)

    @functools.cache
    def reference_structure(index: int) -> Any:
        return reference[index].to_structure()

    flags = []
    for crystal in crystals:
        structure = crystal.to_structure()
        candidates = by_formula.get(reduced_formula(crystal.atomic_numbers), [])
        flags.append(not any(matcher.fit(structure, reference_structure(i)) for i in candidates))
    return flags


# --- distributions -------------------------------------------------------------------------------


@functools.cache
def _atomic_masses() -> np.ndarray:
    from pymatgen.core import Element

    return np.array([0.0] + [float(Element.from_Z(z).atomic_mass) for z in range(1, 119)])


def cell_statistics(lengths: np.ndarray, angles: np.ndarray, atomic_numbers: np.ndarray) -> dict[str, float]:
    """Atoms per cell, density (g/cm³) and number of elements of one cell."""
    volume = abs(np.linalg.det(lattice_matrix(lengths, angles)))
    mass = _atomic_masses()[np.asarray(atomic_numbers, dtype=np.int64)].sum()
    return {
        "num_atoms": float(len(atomic_numbers)),
        "density": float(mass * AMU_PER_CUBIC_ANGSTROM / volume),
        "num_elements": float(len(np.unique(atomic_numbers))),
    }


def wasserstein_distances(samples: Sequence[Mapping[str, float]], reference: Mapping[str, np.ndarray]) -> dict:
    """Earth mover's distance per statistic between the samples and the reference; None without samples."""
    from scipy.stats import wasserstein_distance

    if not samples:
        return dict.fromkeys(DISTRIBUTIONS)
    return {
        name: float(wasserstein_distance([row[name] for row in samples], reference[name])) for name in DISTRIBUTIONS
    }


def space_group_distance(numbers: Sequence[int], reference: Sequence[int]) -> float | None:
    """Total variation distance (0 same, 1 disjoint) between two space-group histograms (0: none found)."""
    if not len(numbers) or not len(reference):
        return None
    ours, theirs = Counter(numbers), Counter(reference)
    return 0.5 * sum(abs(ours[g] / len(numbers) - theirs[g] / len(reference)) for g in ours.keys() | theirs.keys())


# --- fingerprints and coverage -------------------------------------------------------------------


@functools.cache
def _featurizers() -> tuple[Any, Any]:
    """matminer's CrystalNN site fingerprint ("ops") and Magpie composition featurizer, as CDVAE builds them."""
    from matminer.featurizers.composition.composite import ElementProperty
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    # CDVAE's matminer left missing element data as NaN, which its scaler then sets to 0
    return CrystalNNFingerprint.from_preset("ops"), ElementProperty.from_preset("magpie", impute_nan=False)


@functools.cache
def _magpie_scaler() -> tuple[np.ndarray, np.ndarray]:
    scaler = json.loads(MAGPIE_SCALER.read_text())
    return np.array(scaler["means"]), np.array(scaler["stds"])


def structure_fingerprint(crystal: Crystal) -> np.ndarray | None:
    """Mean CrystalNN site fingerprint; None where matminer cannot build it (CDVAE then counts no coverage)."""
    site_featurizer, _ = _featurizers()
    structure = crystal.to_structure()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # CrystalNN warns for every site without oxidation states
            return np.mean([site_featurizer.featurize(structure, i) for i in range(len(structure))], axis=0)
    except Exception as error:  # matminer raises many kinds for degenerate cells
        log.debug("no CrystalNN fingerprint for %s: %s", crystal.id, error)
        return None


def composition_fingerprint(counts: Mapping[str, int]) -> np.ndarray:
    """Magpie features standardised with CDVAE's scaler (missing values 0)."""
    from pymatgen.core import Composition

    _, featurizer = _featurizers()
    means, stds = _magpie_scaler()
    scaled = (np.array(featurizer.featurize(Composition(dict(counts))), dtype=float) - means) / stds
    return np.nan_to_num(scaled, nan=0.0)


@dataclass(frozen=True)
class Fingerprints:
    """(S, 61) structure and (S, 132) composition fingerprints of the structures that have both."""

    structure: np.ndarray
    composition: np.ndarray


def fingerprints(crystals: Sequence[Crystal | None], progress: Progress | None = None) -> Fingerprints:
    """Fingerprints of every crystal that has them (None entries and failures are left out)."""
    structures, compositions = [], []
    for index, crystal in enumerate(crystals):
        if crystal is not None and (structure := structure_fingerprint(crystal)) is not None:
            structures.append(structure)
            compositions.append(composition_fingerprint(element_counts(crystal.atomic_numbers)))
        if progress:
            progress(index + 1, len(crystals))
    if not structures:
        return Fingerprints(np.zeros((0, 0)), np.zeros((0, 0)))
    return Fingerprints(np.array(structures), np.array(compositions))


#: COV-P's two halves: the share of samples with a held-out structure near in structure, and near in composition
PRECISION_PARTS = ("cov_precision_structure_pct", "cov_precision_composition_pct")


def coverage(samples: Fingerprints, reference: Fingerprints, num_samples: int) -> dict[str, float | None]:
    """COV-R (share of the reference covered by some sample) and COV-P (share of the ``num_samples``
    samples near some reference structure), in %, as CDVAE's ``compute_cov``."""
    from scipy.spatial.distance import cdist

    if not len(samples.structure) or not len(reference.structure):
        empty = 0.0 if len(reference.structure) else None
        return {"cov_recall_pct": empty, "cov_precision_pct": 0.0} | dict.fromkeys(PRECISION_PARTS, 0.0)
    structure = cdist(samples.structure, reference.structure)  # (N, R)
    composition = cdist(samples.composition, reference.composition)
    close_structure, close_composition = COVERAGE_CUTOFFS["structure"], COVERAGE_CUTOFFS["composition"]
    recall = (structure.min(axis=0) <= close_structure) & (composition.min(axis=0) <= close_composition)
    near_structure = structure.min(axis=1) <= close_structure
    near_composition = composition.min(axis=1) <= close_composition
    precision = near_structure & near_composition
    return {
        "cov_recall_pct": 100.0 * recall.mean(),
        "cov_precision_pct": 100.0 * precision.sum() / num_samples,
        # which half of COV-P a sample misses: its structure, its composition, or both
        "cov_precision_structure_pct": 100.0 * near_structure.sum() / num_samples,
        "cov_precision_composition_pct": 100.0 * near_composition.sum() / num_samples,
    }


# --- the reference and the score -----------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """What samples are measured against: the training split (novelty, distributions, space groups) and
    the held-out test split (coverage, as CDVAE measures it, and its P1 share)."""

    train: CrystalSet
    test: CrystalSet | None
    statistics: dict[str, np.ndarray]  # name -> (S,) of the training split
    train_compositional_validity_pct: float
    train_space_groups: list[int]  # 0 where spglib finds none
    test_fingerprints: Fingerprints | None
    test_p1_pct: float | None


def set_statistics(crystals: CrystalSet) -> dict[str, np.ndarray]:
    """cell_statistics of every structure of a split: name -> (S,)."""
    rows = [
        cell_statistics(
            crystals.lengths[i],
            crystals.angles[i],
            crystals.atomic_numbers[crystals.offsets[i] : crystals.offsets[i + 1]],
        )
        for i in range(len(crystals))
    ]
    return {name: np.array([row[name] for row in rows]) for name in DISTRIBUTIONS}


def compositional_validity_pct(crystals: CrystalSet) -> float:
    """Share of a split's structures with a SMACT-valid composition (each distinct composition checked once)."""
    verdicts = [
        smact_valid(element_counts(crystals.atomic_numbers[crystals.offsets[i] : crystals.offsets[i + 1]]))
        for i in range(len(crystals))
    ]
    return 100.0 * sum(verdicts) / len(verdicts)


def p1_pct(numbers: Sequence[int]) -> float | None:
    """Share of structures in P1 (or without any symmetry found)."""
    return 100.0 * sum(n <= 1 for n in numbers) / len(numbers) if len(numbers) else None


def build_reference(train: CrystalSet, test: CrystalSet | None, progress: Progress | None = None) -> Reference:
    """The training split's statistics and space groups, the test split's fingerprints (the slow part)."""
    train_crystals = [train[i] for i in range(len(train))]
    test_crystals = [test[i] for i in range(len(test))] if test is not None else []
    return Reference(
        train=train,
        test=test,
        statistics=set_statistics(train),
        train_compositional_validity_pct=compositional_validity_pct(train),
        train_space_groups=[space_group_number(c) for c in train_crystals],
        test_fingerprints=fingerprints(test_crystals, progress) if test is not None else None,
        test_p1_pct=p1_pct([space_group_number(c) for c in test_crystals]) if test is not None else None,
    )


def describe(index: int, crystal: Crystal | None) -> dict[str, Any]:
    """One CSV row: composition, cell, nearest-neighbour distance, validity and space group."""
    row: dict[str, Any] = {
        "id": crystal.id if crystal is not None and crystal.id else f"sample-{index:04d}",
        "decoded": crystal is not None,
        "formula": "",
        "reduced_formula": "",
        **dict.fromkeys(DISTRIBUTIONS, math.nan),
        **dict.fromkeys(("a", "b", "c", "alpha", "beta", "gamma", "min_distance"), math.nan),
        "structurally_valid": False,
        "compositionally_valid": False,
        "space_group": "",
        "space_group_number": 0,
        "unique": False,
        "novel": None,
    }
    if crystal is None:
        return row
    distance = min_distance(crystal)
    group = space_group(crystal)
    row.update(
        formula=crystal.formula,
        reduced_formula=reduced_formula(crystal.atomic_numbers),
        **cell_statistics(crystal.lengths, crystal.angles, crystal.atomic_numbers),
        **dict(zip(("a", "b", "c"), crystal.lengths.tolist())),
        **dict(zip(("alpha", "beta", "gamma"), crystal.angles.tolist())),
        min_distance=distance,
        structurally_valid=structurally_valid(crystal, distance),
        compositionally_valid=compositionally_valid(crystal),
        space_group=str(group or ""),
        space_group_number=group.number if group else 0,
    )
    return row


def score(
    crystals: Sequence[Crystal | None], reference: Reference | None, progress: Progress | None = None
) -> tuple[list[dict], dict[str, Any]]:
    """Per-sample rows and the summary of a set of generated structures (None: no crystal came out).

    Validity rates and COV-P are over all samples (a missing or structurally invalid one covers nothing, a composition
    SMACT rejects may, as in CDVAE); uniqueness and the
    space groups over the crystals; novelty over the unique ones; the distributions are those of the
    valid ones (structurally and compositionally), as CDVAE reports them. Undefined figures are None.
    """
    rows = [describe(index, crystal) for index, crystal in enumerate(crystals)]
    present = [(row, crystal) for row, crystal in zip(rows, crystals) if crystal is not None]
    for (row, _), unique in zip(present, unique_flags([c for _, c in present])):
        row["unique"] = unique
    unique = [(row, crystal) for row, crystal in present if row["unique"]]
    valid = [row for row in rows if row["structurally_valid"] and row["compositionally_valid"]]
    numbers = [row["space_group_number"] for row, _ in present]
    count = len(rows)
    summary: dict[str, Any] = {
        "decoded": len(present),
        "structural_validity_pct": 100.0 * sum(row["structurally_valid"] for row in rows) / count,
        "compositional_validity_pct": 100.0 * sum(row["compositionally_valid"] for row in rows) / count,
        "validity_pct": 100.0 * len(valid) / count,
        "train_compositional_validity_pct": None,
        "cov_recall_pct": None,
        "cov_precision_pct": None,
        **dict.fromkeys(PRECISION_PARTS),
        **{f"w1_{name}": None for name in DISTRIBUTIONS},
        "unique": len(unique),
        "uniqueness_pct": 100.0 * len(unique) / len(present) if present else None,
        "novel": None,
        "novelty_pct": None,
        "p1_pct": p1_pct(numbers),
        "test_split_p1_pct": None,
        "train_p1_pct": None,
        "space_group_tv_distance": None,
        "space_groups": dict(Counter(row["space_group"] or "none" for row, _ in present).most_common()),
        "sample_means": {
            name: float(np.mean([row[name] for row in valid])) if valid else None for name in DISTRIBUTIONS
        },
    }
    if reference is None:
        return rows, summary
    for (row, _), novel in zip(unique, novel_flags([c for _, c in unique], reference.train)):
        row["novel"] = novel
    novel = sum(row["novel"] for row, _ in unique)
    summary.update(
        train_compositional_validity_pct=reference.train_compositional_validity_pct,
        **{f"w1_{name}": value for name, value in wasserstein_distances(valid, reference.statistics).items()},
        novel=novel,
        novelty_pct=100.0 * novel / len(unique) if unique else None,
        test_split_p1_pct=reference.test_p1_pct,
        train_p1_pct=p1_pct(reference.train_space_groups),
        space_group_tv_distance=space_group_distance(numbers, reference.train_space_groups),
        reference_means={name: float(values.mean()) for name, values in reference.statistics.items()},
    )
    if reference.test_fingerprints is not None:
        # CDVAE's compute_cov fingerprints every sample it could build, a composition SMACT rejects included, and
        # leaves out only those CrystalNN fails on; here structurally invalid ones are left out too (CrystalNN on a
        # collapsed cell, atoms closer than 0.5 Å, gathers neighbour lists that can fill the memory)
        built = [c if row["structurally_valid"] else None for row, c in zip(rows, crystals)]
        summary.update(coverage(fingerprints(built, progress), reference.test_fingerprints, count))
    return rows, summary
