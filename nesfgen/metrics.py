"""Reconstruction metrics: the paper's seven (per structure, pooled over atoms as the paper does, and per-structure means) and the CDVAE-family ones."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nesfgen.crystal import Crystal
from nesfgen.estimator import Decoded
from nesfgen.symmetry import space_group_number

#: the paper's metrics in table order; all lower-is-better
PAPER_METRICS = (
    "atom_count_error_pct",
    "position_error_actual",
    "position_error_detected",
    "species_error_actual_pct",
    "species_error_detected_pct",
    "length_error",
    "angle_error",
)
#: metrics undefined when nothing was detected; aggregated over the structures with detections only
NEEDS_DETECTIONS = (
    "position_error_actual",
    "position_error_detected",
    "species_error_actual_pct",
    "species_error_detected_pct",
)


def mean_nearest_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The paper's m(A, B): mean over a in A of the distance to the nearest b (Cartesian, no images)."""
    return float(_distances(a, b).min(axis=1).mean())


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=float).reshape(-1, 3), np.asarray(b, dtype=float).reshape(-1, 3)
    return np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)  # (|A|, |B|)


def structure_metrics(true: Crystal, decoded: Decoded | Crystal) -> dict[str, Any]:
    """The paper's metrics for one structure.

    Position and species errors compare Cartesian positions directly, without periodic images, as the
    paper does. When nothing was detected they are undefined: NaN, with ``empty`` set.

    Returns:
        num_atoms, num_detected, empty, atom_count_wrong (bool), position_error_actual and
        position_error_detected (Å), species_error_actual_pct and species_error_detected_pct (% of
        atoms whose nearest atom on the other side has another species), length_error (Å, mean over
        a, b, c) and angle_error (degrees, mean over α, β, γ).
    """
    detected = decoded.num_atoms
    row: dict[str, Any] = {
        "num_atoms": true.num_atoms,
        "num_detected": detected,
        "empty": detected == 0,
        "atom_count_wrong": detected != true.num_atoms,
        "length_error": float(np.abs(np.asarray(decoded.lengths, dtype=float) - true.lengths).mean()),
        "angle_error": float(np.abs(np.asarray(decoded.angles, dtype=float) - true.angles).mean()),
    }
    if detected == 0:
        return row | dict.fromkeys(NEEDS_DETECTIONS, math.nan)
    distance = _distances(true.cart_coords, decoded.cart_coords)  # (N, M)
    true_species, detected_species = true.atomic_numbers, np.asarray(decoded.atomic_numbers)
    return row | {
        "position_error_actual": float(distance.min(axis=1).mean()),
        "position_error_detected": float(distance.min(axis=0).mean()),
        "species_error_actual_pct": 100.0 * float(np.mean(detected_species[distance.argmin(axis=1)] != true_species)),
        "species_error_detected_pct": 100.0 * float(np.mean(true_species[distance.argmin(axis=0)] != detected_species)),
    }


def mean_over_structures(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Per-structure means: each structure's errors are averaged first, so a 2-atom cell weighs as much as a 16-atom one.

    This is not how the paper's Table 1 is computed (see ``pool_over_atoms``); it is kept beside it
    because it says how a typical structure fares. atom_count_error_pct is the % of structures with a
    wrong atom count (an empty decode counts as wrong). Position and species errors are undefined for
    empty decodes, so they are averaged over the structures with at least one detected atom;
    ``empty_decodes`` says how many were left out. Lattice errors are averaged over all structures.
    """
    if not rows:
        raise ValueError("no structures to aggregate")
    with_atoms = [row for row in rows if not row["empty"]]
    result = {
        "num_structures": len(rows),
        "empty_decodes": len(rows) - len(with_atoms),
        "atom_count_error_pct": 100.0 * float(np.mean([row["atom_count_wrong"] for row in rows])),
    }
    for name in NEEDS_DETECTIONS:
        result[name] = float(np.mean([row[name] for row in with_atoms])) if with_atoms else math.nan
    for name in ("length_error", "angle_error"):
        result[name] = float(np.mean([row[name] for row in rows]))
    return result


def pool_over_atoms(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The paper's seven as its public code computes Table 1 (``src/evaluate.py``): pooled over atoms.

    The per-atom nearest distances and species hits of all structures are concatenated and averaged
    once, so a 12-atom cell weighs six times a 2-atom one. An empty decode, as there, gives each of its
    actual atoms an infinite distance and a wrong species and adds no detected atom: one empty decode
    makes position_error_actual infinite (the reference takes the mean with the infinities in). With no
    detected atom at all the detected errors are NaN (the mean of nothing). Lattice errors are pooled
    over a, b, c (α, β, γ) of all structures; every structure has three, so they equal the
    per-structure means. Each row's means times its atom counts give the sums, so rows suffice.

    Returns:
        Exactly the keys of ``PAPER_METRICS``.
    """
    if not rows:
        raise ValueError("no structures to aggregate")
    with_atoms = [row for row in rows if not row["empty"]]
    empty = [row for row in rows if row["empty"]]
    actual_atoms = sum(row["num_atoms"] for row in rows)
    detected_atoms = sum(row["num_detected"] for row in with_atoms)

    def pooled(name: str, count: str, total: int, extra: float = 0.0) -> float:
        """(Σ count · per-structure mean + extra) / total over the structures with detections."""
        return float((sum(row[count] * row[name] for row in with_atoms) + extra) / total) if total else math.nan

    missed_species = 100.0 * sum(row["num_atoms"] for row in empty)  # every atom of an empty decode is wrong
    return {
        "atom_count_error_pct": 100.0 * float(np.mean([row["atom_count_wrong"] for row in rows])),
        "position_error_actual": math.inf if empty else pooled("position_error_actual", "num_atoms", actual_atoms),
        "position_error_detected": pooled("position_error_detected", "num_detected", detected_atoms),
        "species_error_actual_pct": pooled("species_error_actual_pct", "num_atoms", actual_atoms, missed_species),
        "species_error_detected_pct": pooled("species_error_detected_pct", "num_detected", detected_atoms),
        "length_error": float(np.mean([row["length_error"] for row in rows])),
        "angle_error": float(np.mean([row["angle_error"] for row in rows])),
    }


def mean_std(results: Sequence[Mapping[str, float]], ddof: int = 0) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation of each metric over runs (the paper's 10 seeds or 20 folds).

    NaN in any run propagates, so an undefined run is not silently dropped.
    """
    if not results:
        raise ValueError("no runs to summarise")
    keys = [key for key, value in results[0].items() if isinstance(value, (int, float))]
    summary = {}
    for key in keys:
        values = np.array([run[key] for run in results], dtype=float)
        std = float(values.std(ddof=ddof)) if len(values) > ddof else math.nan
        summary[key] = (float(values.mean()), std)
    return summary


def cdvae_metrics(
    true_crystals: Sequence[Crystal],
    decoded_crystals: Sequence[Crystal | None],
    stol: float = 0.5,
    angle_tol: float = 10.0,
    ltol: float = 0.3,
    symprec: float = 0.1,
) -> dict[str, float]:
    """Match rate and RMSE with pymatgen's StructureMatcher (CDVAE's settings), and space-group agreement.

    A decode that is None (no valid crystal) counts as unmatched and as a space-group disagreement.

    Returns:
        match_rate_pct, rmse (get_rms_dist, normalised by (V/N)^(1/3), mean over matched structures;
        NaN if none matched), spacegroup_match_pct (spglib numbers equal at ``symprec``),
        num_structures and invalid_decodes.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    if len(true_crystals) != len(decoded_crystals):
        raise ValueError(f"{len(true_crystals)} true crystals but {len(decoded_crystals)} decoded ones")
    if not true_crystals:
        raise ValueError("no structures to compare")
    matcher = StructureMatcher(stol=stol, angle_tol=angle_tol, ltol=ltol)
    rms, same_group = [], []
    for true, decoded in zip(true_crystals, decoded_crystals):
        if decoded is None:
            same_group.append(False)
            continue
        match = matcher.get_rms_dist(true.to_structure(), decoded.to_structure())
        if match is not None:
            rms.append(match[0])
        group = space_group_number(decoded, symprec)
        same_group.append(group != 0 and group == space_group_number(true, symprec))
    return {
        "num_structures": len(true_crystals),
        "invalid_decodes": sum(d is None for d in decoded_crystals),
        "match_rate_pct": 100.0 * len(rms) / len(true_crystals),
        "rmse": float(np.mean(rms)) if rms else math.nan,
        "spacegroup_match_pct": 100.0 * float(np.mean(same_group)),
    }
