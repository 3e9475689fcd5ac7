import pytest
from conftest import perovskite, rock_salt, zinc_blende

from nesfgen.baselines import random_symmetric_crystals, reference_rows, training_draws
from nesfgen.data.store import CrystalSet
from nesfgen.generative_metrics import build_reference, element_counts
from nesfgen.symmetry import space_group_number


def test_random_symmetric_crystals_take_training_compositions_and_are_seeded():
    train = CrystalSet.from_crystals([rock_salt(), zinc_blende(), perovskite()])
    crystals = random_symmetric_crystals(train, 3, seed=0)
    compositions = [{"Na": 4, "Cl": 4}, {"Zn": 4, "S": 4}, {"Sr": 1, "Ti": 1, "O": 3}]
    assert all(element_counts(c.atomic_numbers) in compositions for c in crystals)
    again = random_symmetric_crystals(train, 3, seed=0)
    assert [c.to_cif() for c in crystals] == [c.to_cif() for c in again]


def test_training_draws_are_seeded_training_structures():
    train = CrystalSet.from_crystals([rock_salt(), zinc_blende(), perovskite()])
    draws = training_draws(train, 5, seed=0)
    assert len(draws) == 5 and {c.id for c in draws} <= {"NaCl", "ZnS", "SrTiO3"}
    assert [c.id for c in draws] == [c.id for c in training_draws(train, 5, seed=0)]


def test_the_ceiling_is_the_test_split_scored_as_samples():
    split = CrystalSet.from_crystals([rock_salt(), zinc_blende()])
    rows, crystals = reference_rows(build_reference(split, split), n=2, seed=0)
    # drawn training structures: scored (novelty 0 by construction) but not handed back as candidates
    assert rows["train_split_draws"]["novelty_pct"] == 0.0 and "train_split_draws" not in crystals
    assert [c.id for c in crystals["test_split"]] == ["NaCl", "ZnS"] and len(crystals["random_symmetric"]) == 2
    assert rows["test_split"]["cov_recall_pct"] == 100.0 and rows["test_split"]["novelty_pct"] == 0.0
    floor = crystals["random_symmetric"]  # pyxtal's: symmetric by construction, in the training compositions
    assert all(space_group_number(c, 0.01) >= 2 for c in floor)
    assert {c.formula for c in floor} <= {salt.formula for salt in (rock_salt(), zinc_blende())}
    assert 0 <= rows["random_symmetric"]["structural_validity_pct"] <= 100


def test_density_is_pymatgens():
    from nesfgen.generative_metrics import cell_statistics

    salt = rock_salt()
    statistics = cell_statistics(salt.lengths, salt.angles, salt.atomic_numbers)
    assert statistics["density"] == pytest.approx(salt.to_structure().density, rel=1e-6)
    assert statistics["num_atoms"] == len(salt.atomic_numbers) and statistics["num_elements"] == 2
