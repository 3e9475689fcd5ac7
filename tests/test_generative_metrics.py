import math

import numpy as np
import pytest
from conftest import cesium_chloride, perovskite, rock_salt, zinc_blende

from nesfgen.crystal import Crystal
from nesfgen.data.store import CrystalSet
from nesfgen.generative_metrics import (
    COVERAGE_CUTOFFS,
    Fingerprints,
    build_reference,
    compositionally_valid,
    coverage,
    fingerprints,
    min_distance,
    novel_flags,
    score,
    smact_valid,
    space_group_distance,
    structurally_valid,
    unique_flags,
    wasserstein_distances,
)


def cubic(a, numbers, frac, id="x"):
    return Crystal.create([a] * 3, [90] * 3, atomic_numbers=numbers, frac_coords=frac, id=id)


def test_structural_validity_counts_periodic_images():
    assert structurally_valid(rock_salt()) and min_distance(rock_salt()) == pytest.approx(5.64 / 2)
    too_close = cubic(8.0, [11, 17], [[0.1, 0.1, 0.1], [0.1, 0.1, 0.14]])  # 0.32 Å apart
    assert not structurally_valid(too_close) and min_distance(too_close) == pytest.approx(0.32)
    across_the_face = cubic(10.0, [11, 17], [[0.01, 0.5, 0.5], [0.99, 0.5, 0.5]])  # 0.2 Å through the boundary
    assert not structurally_valid(across_the_face)
    own_image = cubic(0.4, [26], [[0, 0, 0]])  # an atom 0.4 Å from its own periodic image
    assert not structurally_valid(own_image)
    lonely = cubic(9.0, [26], [[0, 0, 0]])
    assert structurally_valid(lonely) and math.isinf(min_distance(lonely))


def test_smact_validity_as_cdvae_computes_it():
    assert smact_valid({"Zn": 4, "S": 4}) and smact_valid({"Sr": 1, "Ti": 1, "O": 3})
    assert smact_valid({"Fe": 2, "O": 3})
    assert not smact_valid({"Fe": 3, "O": 4})  # mixed valence: one state per element only
    assert not smact_valid({"Na": 2, "Cl": 1})
    assert smact_valid({"Na": 1, "O": 1})  # SMACT lists O-1 (peroxide), unlike pymatgen's common states
    assert smact_valid({"Cu": 3, "Au": 1}) and smact_valid({"Si": 8})  # an alloy, an element
    assert compositionally_valid(perovskite()) and compositionally_valid(zinc_blende())
    assert not compositionally_valid(cubic(5.0, [11, 11, 17], [[0, 0, 0], [0.5, 0.5, 0.5], [0, 0.5, 0]]))


def test_uniqueness_and_novelty_use_structure_matching():
    samples = [rock_salt(), rock_salt(5.75, id="bigger"), zinc_blende(), rock_salt(id="again"), cesium_chloride()]
    assert unique_flags(samples) == [True, False, True, False, True]
    training = CrystalSet.from_crystals([rock_salt(5.5), perovskite()])
    cscl_type_nacl = cubic(3.3, [11, 17], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert novel_flags([rock_salt(), zinc_blende(), cscl_type_nacl], training) == [False, True, True]


def test_wasserstein_distances():
    reference = {"num_atoms": np.array([2.0, 4.0]), "density": np.array([3.0]), "num_elements": np.array([2.0])}
    samples = [
        {"num_atoms": 3.0, "density": 3.0, "num_elements": 1.0},
        {"num_atoms": 5.0, "density": 3.0, "num_elements": 1.0},
    ]
    assert wasserstein_distances(samples, reference) == pytest.approx(
        {"num_atoms": 1.0, "density": 0.0, "num_elements": 1.0}
    )


def test_coverage_needs_both_fingerprints_close():
    s, c = COVERAGE_CUTOFFS["structure"], COVERAGE_CUTOFFS["composition"]
    reference = Fingerprints(np.array([[0.0], [1.0], [5.0]]), np.array([[0.0], [0.0], [0.0]]))
    # sample 1 is near reference 1 in structure but far from everything in composition
    samples = Fingerprints(np.array([[0.1], [1.0]]), np.array([[c - 1], [c + 1]]))
    result = coverage(samples, reference, num_samples=4)  # two more samples had no fingerprint
    # recall takes the nearest structure and the nearest composition apart, as CDVAE does: reference 1 counts
    # as covered (structure by sample 1, composition by sample 0); reference 2 is 4 away in structure
    assert result["cov_recall_pct"] == pytest.approx(200 / 3)
    assert result["cov_precision_pct"] == pytest.approx(25.0)
    # its two halves: both samples are near in structure, only sample 0 in composition
    assert result["cov_precision_structure_pct"] == pytest.approx(50.0)
    assert result["cov_precision_composition_pct"] == pytest.approx(25.0)
    assert s == 0.4 and c == 10.0
    nothing = fingerprints([None, None])
    assert len(nothing.structure) == 0 and coverage(nothing, reference, 2) == {
        "cov_recall_pct": 0.0,
        "cov_precision_pct": 0.0,
        "cov_precision_structure_pct": 0.0,
        "cov_precision_composition_pct": 0.0,
    }


def test_space_group_distance_is_total_variation():
    assert space_group_distance([225, 225], [225]) == 0.0
    assert space_group_distance([225, 1], [225, 225]) == pytest.approx(0.5)
    assert space_group_distance([1], [2]) == 1.0 and space_group_distance([], [1]) is None


def test_score_of_a_reference_against_itself():
    crystals = [rock_salt(), zinc_blende(), cesium_chloride(), perovskite()]
    reference = build_reference(CrystalSet.from_crystals(crystals), CrystalSet.from_crystals(crystals))
    rows, summary = score([*crystals, None], reference)
    assert summary["structural_validity_pct"] == pytest.approx(80.0)  # the missing one is invalid
    assert summary["compositional_validity_pct"] == pytest.approx(80.0)
    assert summary["train_compositional_validity_pct"] == pytest.approx(100.0)
    assert summary["cov_recall_pct"] == pytest.approx(100.0)
    assert summary["cov_precision_pct"] == pytest.approx(80.0)  # over all five samples
    assert summary["w1_num_atoms"] == pytest.approx(0.0) and summary["w1_density"] == pytest.approx(0.0)
    assert summary["uniqueness_pct"] == pytest.approx(100.0) and summary["novelty_pct"] == pytest.approx(0.0)
    assert summary["p1_pct"] == pytest.approx(0.0) and summary["test_split_p1_pct"] == pytest.approx(0.0)
    assert summary["space_group_tv_distance"] == pytest.approx(0.0)
    assert rows[-1]["decoded"] is False


def test_a_composition_smact_rejects_still_counts_in_coverage_as_in_cdvae():
    # CDVAE's compute_cov fingerprints every sample it could build; only a collapsed cell is left out here.
    frac = rock_salt().frac_coords  # a rock-salt arrangement holding K3Br5, which SMACT rejects
    odd = Crystal.create([5.64] * 3, [90] * 3, atomic_numbers=[19] * 3 + [35] * 5, frac_coords=frac)
    collapsed = cubic(8.0, [11, 17], [[0.1, 0.1, 0.1], [0.1, 0.1, 0.14]])
    reference = build_reference(CrystalSet.from_crystals([rock_salt()]), CrystalSet.from_crystals([odd, rock_salt()]))
    rows, summary = score([odd, collapsed], reference)
    assert not rows[0]["compositionally_valid"] and rows[0]["structurally_valid"]
    assert not rows[1]["structurally_valid"]
    assert summary["cov_precision_pct"] == pytest.approx(50.0)
    assert summary["cov_recall_pct"] == pytest.approx(50.0)  # the rock salt has no sample near it
