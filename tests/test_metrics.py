"""The paper's metrics on hand-computed cases, their aggregation, and the CDVAE-family metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nesfgen.crystal import Crystal
from nesfgen.estimator import Decoded
from nesfgen.metrics import (
    PAPER_METRICS,
    cdvae_metrics,
    mean_nearest_distance,
    mean_over_structures,
    mean_std,
    pool_over_atoms,
    structure_metrics,
)


def decoded(cart_coords, atomic_numbers, lengths=(10, 10, 10), angles=(90, 90, 90)) -> Decoded:
    numbers = np.asarray(atomic_numbers, dtype=np.int64)
    return Decoded(
        np.asarray(lengths, dtype=float),
        np.asarray(angles, dtype=float),
        np.asarray(cart_coords, dtype=float).reshape(-1, 3),
        np.zeros_like(numbers),
        numbers,
    )


@pytest.fixture
def two_atoms() -> Crystal:
    """Na at (1, 1, 1) and Cl at (5, 1, 1) in a 10 Å cube."""
    return Crystal.create([10] * 3, [90] * 3, cart_coords=[[1, 1, 1], [5, 1, 1]], atomic_numbers=[11, 17])


def test_mean_nearest_distance_is_asymmetric() -> None:
    a = np.array([[0.0, 0, 0]])
    b = np.array([[1.0, 0, 0], [3.0, 0, 0]])
    assert mean_nearest_distance(a, b) == pytest.approx(1.0)
    assert mean_nearest_distance(b, a) == pytest.approx(2.0)


def test_hand_computed_case(two_atoms: Crystal) -> None:
    # detected: near Na (0.1 Å off, right species), near Cl (0.2 Å off, wrong species: Na),
    # and a spurious Cl 1 Å from the Cl atom.
    found = decoded([[1.1, 1, 1], [5, 1.2, 1], [5, 1, 2]], [11, 11, 17], lengths=(10.3, 9.9, 10), angles=(90, 93, 90))
    row = structure_metrics(two_atoms, found)
    assert row["atom_count_wrong"] and not row["empty"]
    assert row["position_error_actual"] == pytest.approx((0.1 + 0.2) / 2)
    assert row["position_error_detected"] == pytest.approx((0.1 + 0.2 + 1.0) / 3)
    # actual: Na -> Na ok, Cl -> nearest detected is the Na at 0.2 Å: 1 of 2 wrong
    assert row["species_error_actual_pct"] == pytest.approx(50.0)
    # detected: Na -> Na ok, Na -> Cl wrong, Cl -> Cl ok: 1 of 3 wrong
    assert row["species_error_detected_pct"] == pytest.approx(100 / 3)
    assert row["length_error"] == pytest.approx((0.3 + 0.1 + 0.0) / 3)
    assert row["angle_error"] == pytest.approx(1.0)


def test_perfect_reconstruction(tiny_crystals: dict[str, Crystal]) -> None:
    for crystal in tiny_crystals.values():
        row = structure_metrics(crystal, crystal)
        assert not row["atom_count_wrong"]
        for name in ("position_error_actual", "position_error_detected", "length_error", "angle_error"):
            assert row[name] == pytest.approx(0.0, abs=1e-12)
        assert row["species_error_actual_pct"] == 0.0 and row["species_error_detected_pct"] == 0.0


def test_empty_decode_is_undefined_and_counted(two_atoms: Crystal) -> None:
    empty = structure_metrics(two_atoms, decoded(np.zeros((0, 3)), []))
    assert empty["empty"] and empty["atom_count_wrong"]
    assert math.isnan(empty["position_error_actual"]) and math.isnan(empty["species_error_detected_pct"])
    good = structure_metrics(two_atoms, decoded([[1, 1, 1.5], [5, 1, 1]], [11, 17]))
    summary = mean_over_structures([empty, good])
    assert summary["num_structures"] == 2 and summary["empty_decodes"] == 1
    assert summary["atom_count_error_pct"] == pytest.approx(50.0)
    assert summary["position_error_actual"] == pytest.approx(0.25)  # the empty decode is left out
    assert summary["species_error_actual_pct"] == 0.0
    assert summary["length_error"] == pytest.approx(0.0)
    only_empty = mean_over_structures([empty])
    assert math.isnan(only_empty["position_error_detected"]) and only_empty["empty_decodes"] == 1


def test_mean_over_structures_weighs_each_structure_once(two_atoms: Crystal) -> None:
    wrong_species = structure_metrics(two_atoms, decoded([[1, 1, 1], [5, 1, 1]], [11, 11]))
    right = structure_metrics(two_atoms, decoded([[1, 1, 1], [5, 1, 1]], [11, 17]))
    summary = mean_over_structures([wrong_species, right])
    assert summary["species_error_actual_pct"] == pytest.approx(25.0)
    assert summary["atom_count_error_pct"] == 0.0 and summary["empty_decodes"] == 0


@pytest.fixture
def eight_atoms() -> Crystal:
    """Na and Cl alternating on the corners of a 4 Å cube inside a 10 Å cell."""
    corners = [[x, y, z] for x in (1, 5) for y in (1, 5) for z in (1, 5)]
    return Crystal.create([10] * 3, [90] * 3, cart_coords=corners, atomic_numbers=[11, 17] * 4)


def two_and_eight_atom_rows(two_atoms: Crystal, eight_atoms: Crystal) -> list[dict]:
    """The hand-computed 2-atom case (3 detected) and an 8-atom decode with one atom 1 Å off and 2 species wrong."""
    over_detected = decoded(
        [[1.1, 1, 1], [5, 1.2, 1], [5, 1, 2]], [11, 11, 17], lengths=(10.3, 9.9, 10), angles=(90, 93, 90)
    )
    moved = eight_atoms.cart_coords.copy()
    moved[-1, 2] += 1.0
    species = eight_atoms.atomic_numbers.copy()
    species[:2] = species[:2][::-1]  # the first Na and Cl swapped
    return [structure_metrics(two_atoms, over_detected), structure_metrics(eight_atoms, decoded(moved, species))]


def test_pooling_over_atoms_weighs_large_cells_more(two_atoms: Crystal, eight_atoms: Crystal) -> None:
    rows = two_and_eight_atom_rows(two_atoms, eight_atoms)
    assert rows[1]["position_error_actual"] == pytest.approx(1.0 / 8) and rows[1]["species_error_actual_pct"] == 25.0
    per_structure, pooled = mean_over_structures(rows), pool_over_atoms(rows)
    assert pooled.keys() == set(PAPER_METRICS)
    # actual atoms: 2 + 8; distances 0.1, 0.2 | 1.0 and seven zeros; wrong species 1 | 2
    assert per_structure["position_error_actual"] == pytest.approx((0.15 + 0.125) / 2)
    assert pooled["position_error_actual"] == pytest.approx((0.1 + 0.2 + 1.0) / 10)
    assert per_structure["species_error_actual_pct"] == pytest.approx((50 + 25) / 2)
    assert pooled["species_error_actual_pct"] == pytest.approx(100 * 3 / 10)
    # detected atoms: 3 + 8; distances 0.1, 0.2, 1.0 | 1.0 and seven zeros; wrong species 1 | 2
    assert per_structure["position_error_detected"] == pytest.approx((1.3 / 3 + 0.125) / 2)
    assert pooled["position_error_detected"] == pytest.approx((1.3 + 1.0) / 11)
    assert pooled["species_error_detected_pct"] == pytest.approx(100 * 3 / 11)
    # structure-level and lattice figures are the same both ways (three lengths and angles per structure)
    for name in ("atom_count_error_pct", "length_error", "angle_error"):
        assert pooled[name] == pytest.approx(per_structure[name])
    assert pooled["atom_count_error_pct"] == 50.0 and pooled["angle_error"] == pytest.approx(3 / 6)


def test_an_empty_decode_pools_as_the_reference_code_has_it(two_atoms: Crystal, eight_atoms: Crystal) -> None:
    rows = two_and_eight_atom_rows(two_atoms, eight_atoms)
    rows.append(structure_metrics(two_atoms, decoded(np.zeros((0, 3)), [])))
    pooled, per_structure = pool_over_atoms(rows), mean_over_structures(rows)
    assert per_structure["empty_decodes"] == 1
    assert pooled["position_error_actual"] == math.inf  # its two atoms are infinitely far from any detection
    assert per_structure["position_error_actual"] == pytest.approx((0.15 + 0.125) / 2)  # left out there
    assert pooled["species_error_actual_pct"] == pytest.approx(100 * (1 + 2 + 2) / 12)  # its atoms count as wrong
    assert pooled["position_error_detected"] == pytest.approx((1.3 + 1.0) / 11)  # it adds no detected atom
    assert pooled["species_error_detected_pct"] == pytest.approx(100 * 3 / 11)
    assert pooled["atom_count_error_pct"] == pytest.approx(200 / 3)
    nothing_detected = pool_over_atoms(rows[-1:])
    assert (
        math.isnan(nothing_detected["position_error_detected"]) and nothing_detected["species_error_actual_pct"] == 100
    )


def test_pooling_equals_concatenating_per_atom_distances(tiny_crystals: dict[str, Crystal], rng) -> None:
    pairs = []
    for crystal in tiny_crystals.values():
        kept = crystal.cart_coords[: max(1, crystal.num_atoms - 1)]  # one atom missed where there are several
        found = kept + rng.normal(scale=0.2, size=kept.shape)
        pairs.append((crystal, decoded(found, crystal.atomic_numbers[: len(kept)][::-1])))
    pooled = pool_over_atoms([structure_metrics(true, found) for true, found in pairs])
    actual, detected, actual_wrong, detected_wrong = [], [], [], []
    for true, found in pairs:
        distance = np.linalg.norm(true.cart_coords[:, None] - found.cart_coords[None], axis=-1)  # (N, M)
        actual += list(distance.min(axis=1))
        detected += list(distance.min(axis=0))
        actual_wrong += list(found.atomic_numbers[distance.argmin(axis=1)] != true.atomic_numbers)
        detected_wrong += list(true.atomic_numbers[distance.argmin(axis=0)] != found.atomic_numbers)
    assert pooled["position_error_actual"] == pytest.approx(np.mean(actual))
    assert pooled["position_error_detected"] == pytest.approx(np.mean(detected))
    assert pooled["species_error_actual_pct"] == pytest.approx(100 * np.mean(actual_wrong))
    assert pooled["species_error_detected_pct"] == pytest.approx(100 * np.mean(detected_wrong))


def test_mean_std() -> None:
    runs = [{"position_error_actual": 0.1, "empty_decodes": 0}, {"position_error_actual": 0.3, "empty_decodes": 2}]
    summary = mean_std(runs)
    assert summary["position_error_actual"] == pytest.approx((0.2, 0.1))
    assert summary["empty_decodes"] == pytest.approx((1.0, 1.0))
    assert mean_std(runs, ddof=1)["empty_decodes"][1] == pytest.approx(math.sqrt(2))


def test_cdvae_metrics(tiny_crystals: dict[str, Crystal]) -> None:
    true = [tiny_crystals["NaCl"], tiny_crystals["CsCl"], tiny_crystals["SrTiO3"]]
    shifted = Crystal.create(
        true[0].lengths, true[0].angles, atomic_numbers=true[0].atomic_numbers, frac_coords=true[0].frac_coords + 0.01
    )
    result = cdvae_metrics(true, [shifted, tiny_crystals["ZnS"], None])
    assert result["num_structures"] == 3 and result["invalid_decodes"] == 1
    assert result["match_rate_pct"] == pytest.approx(100 / 3)  # a rigid shift matches; ZnS is not CsCl
    assert result["rmse"] == pytest.approx(0.0, abs=1e-6)
    assert result["spacegroup_match_pct"] == pytest.approx(100 / 3)
    assert math.isnan(cdvae_metrics(true[:1], [None])["rmse"])
