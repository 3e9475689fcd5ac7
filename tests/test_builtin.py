"""The built-in dataset generator, the textbook-compound table and the cached dataset folder."""

from __future__ import annotations

import itertools
import re
from collections import Counter

import numpy as np
import pytest

from nesfgen.crystal import Crystal, symmetry_dataset
from nesfgen.data import builtin
from nesfgen.data.builtin import builtin_dataset, find_known, generate_builtin, known_compounds
from nesfgen.data.store import write_dataset
from nesfgen.errors import UserError

EXPECTED_SPACE_GROUPS = {
    "rocksalt": 225,
    "cscl": 221,
    "zincblende": 216,
    "heusler": 225,
    "halfheusler": 216,
    "perovskite": 221,
    "fluorite": 225,
    "antifluorite": 225,
    "l12": 221,
    "rutile": 136,
    "fcc": 225,
    "bcc": 229,
    "diamond": 227,
}
KNOWN_SPACE_GROUPS = {
    "ZnS-zincblende": 216,
    "GaAs-zincblende": 216,
    "NaCl-rocksalt": 225,
    "MgO-rocksalt": 225,
    "BaTiO3-cubic": 221,
    "BaTiO3-tetragonal": 99,
    "SrTiO3-perovskite": 221,
    "Si-diamond": 227,
    "CaF2-fluorite": 225,
    "CsCl-cscl": 221,
    "Cu-fcc": 225,
    "Fe-bcc": 229,
    "TiO2-rutile": 136,
    "ZnO-wurtzite": 186,
    "Cu2MnAl-heusler": 225,
}
IONIC = ("rocksalt", "zincblende", "fluorite", "antifluorite", "rutile", "perovskite")


@pytest.fixture(scope="module")
def splits() -> dict[str, list[Crystal]]:
    return generate_builtin()


@pytest.fixture(scope="module")
def crystals(splits: dict[str, list[Crystal]]) -> list[Crystal]:
    return [c for split in splits.values() for c in split]


def prototype_of(crystal: Crystal) -> str:
    return crystal.id.split("-")[1]


def space_group(crystal: Crystal) -> int:
    return symmetry_dataset(crystal, symprec=0.01).number


def min_distance(crystal: Crystal) -> float:
    """Brute force over the 27 nearest cells, independent of the generator's own check."""
    frac = crystal.frac_coords
    best = np.inf
    for shift in itertools.product((-1, 0, 1), repeat=3):
        delta = (frac[:, None, :] - frac[None, :, :] + np.array(shift)) @ crystal.lattice
        distance = np.linalg.norm(delta, axis=-1)
        if shift == (0, 0, 0):
            np.fill_diagonal(distance, np.inf)
        best = min(best, distance.min())
    return float(best)


def test_generation_is_deterministic(splits):
    again = generate_builtin()
    assert list(again) == list(splits) == ["train", "val", "test"]
    for name in splits:
        assert again[name] == splits[name]
    other = generate_builtin(seed=1)
    assert sum(len(s) for s in other.values()) == sum(len(s) for s in splits.values())
    lengths = {c.id: c.lengths[0] for c in itertools.chain(*splits.values())}
    assert any(not np.isclose(c.lengths[0], lengths[c.id]) for c in other["train"] if c.id.startswith("builtin-"))


def test_sizes_and_splits(splits, crystals):
    total = len(crystals)
    assert 2000 <= total <= 4000
    generated = total - len(known_compounds())
    for name in ("val", "test"):
        assert abs(len(splits[name]) - 0.05 * generated) <= 1
    ids = [c.id for c in crystals]
    assert len(set(ids)) == total
    assert all(i.startswith(("builtin-", "known-")) for i in ids)
    assert all(c.id.startswith("builtin-") for c in splits["val"] + splits["test"])
    species = {int(z) for c in crystals for z in c.atomic_numbers}
    assert len(species) <= 60
    assert species <= {builtin._element(s).number for s in builtin.ELEMENTS}
    assert (
        Counter(prototype_of(c) for c in crystals if c.id.startswith("builtin-")).keys() == EXPECTED_SPACE_GROUPS.keys()
    )


def test_every_crystal_is_valid(crystals):
    for crystal in crystals:
        Crystal.create(
            crystal.lengths, crystal.angles, atomic_numbers=crystal.atomic_numbers, frac_coords=crystal.frac_coords
        )
        assert builtin.MIN_LENGTH <= crystal.lengths.min() and crystal.lengths.max() <= builtin.MAX_LENGTH, crystal
        assert crystal.num_atoms <= 16
        assert min_distance(crystal) >= builtin.MIN_DISTANCE, crystal
        assert crystal.properties["lattice_constant"] == pytest.approx(crystal.lengths[0])


def test_distances_agree_with_pymatgen(crystals):
    for crystal in crystals[::50]:
        matrix = crystal.to_structure().distance_matrix
        np.fill_diagonal(matrix, np.inf)
        # pymatgen's minimum image misses an atom's own images, which the cell lengths bound from below.
        assert min(matrix.min(), crystal.lengths.min()) == pytest.approx(min_distance(crystal), abs=1e-6)


def test_same_prototype_and_composition_appear_once(crystals):
    keys = [(c.properties["space_group"], c.reduced_formula, prototype_of(c)) for c in crystals]
    generated = [k for k, c in zip(keys, crystals) if c.id.startswith("builtin-")]
    assert len(set(generated)) == len(generated)
    known = {(k.prototype, k.formula) for k in known_compounds()}
    assert not any((p, f) in known for _, f, p in generated)
    assert "builtin-rocksalt-NaCl" not in {c.id for c in crystals}


def test_ionic_compounds_are_charge_balanced(crystals):
    from pymatgen.core import Composition

    ionic = [c for c in crystals if c.id.startswith("builtin-") and prototype_of(c) in IONIC]
    assert len(ionic) > 500
    for crystal in ionic[::6]:
        assert Composition(crystal.reduced_formula).oxi_state_guesses(), crystal.id


@pytest.mark.parametrize("prototype", sorted(EXPECTED_SPACE_GROUPS))
def test_space_group_of_each_prototype(crystals, prototype):
    example = next(c for c in crystals if c.id.startswith(f"builtin-{prototype}-"))
    assert space_group(example) == EXPECTED_SPACE_GROUPS[prototype] == example.properties["space_group"]


def test_known_compounds_space_groups_and_lattices():
    known = {k.name: k for k in known_compounds()}
    for name, expected in KNOWN_SPACE_GROUPS.items():
        assert space_group(known[name].crystal) == expected == known[name].crystal.properties["space_group"], name
    for k in known.values():
        assert k.crystal.id == f"known-{k.name}"
        assert k.crystal.reduced_formula == k.formula
        assert min_distance(k.crystal) >= builtin.MIN_DISTANCE, k.name
        assert k.note
    assert known["ZnS-zincblende"].crystal.lengths[0] == pytest.approx(5.41)
    tetragonal = known["BaTiO3-tetragonal"].crystal
    assert tetragonal.lengths == pytest.approx([3.992, 3.992, 4.036])
    assert not np.allclose(tetragonal.frac_coords[1], [0.5, 0.5, 0.5])  # Ti off-centre along c
    assert known["ZnO-wurtzite"].crystal.angles[2] == pytest.approx(120)


def test_known_compounds_lead_the_train_split(splits):
    known = known_compounds()
    assert splits["train"][: len(known)] == [k.crystal for k in known]
    species = {int(z) for split in splits.values() for c in split for z in c.atomic_numbers}
    assert {int(z) for k in known for z in k.crystal.atomic_numbers} <= species


@pytest.mark.parametrize("formula", ["ZnS", "S Zn", "Zn2S2"])
def test_find_known_normalises_the_formula(formula):
    assert [k.name for k in find_known(formula)] == ["ZnS-zincblende"]


def test_find_known_lists_polymorphs_with_the_default_first():
    assert [k.name for k in find_known("BaTiO3")] == ["BaTiO3-cubic", "BaTiO3-tetragonal"]
    assert find_known("O3TiBa")[0].prototype == "perovskite"


def test_find_known_unknown_compound_is_empty():
    assert find_known("H2O") == []


@pytest.mark.parametrize("formula", ["NaCl!!", "Xx", "", "123"])
def test_find_known_rejects_invalid_formulas(formula):
    with pytest.raises(UserError, match=re.escape(repr(formula))):
        find_known(formula)


def test_builtin_dataset_is_written_once(tmp_path, monkeypatch):
    monkeypatch.setenv("NESFGEN_DATA_DIR", str(tmp_path))
    first = builtin_dataset()
    assert first.path == tmp_path / f"builtin-v{builtin.GENERATOR_VERSION}"
    assert first.split_names == ["train", "val", "test"]
    assert len(first.species_table) <= 60
    train = first.load("train")
    assert train.ids[0] == known_compounds()[0].crystal.id
    assert train[0] == known_compounds()[0].crystal

    def fail(seed: int = 0):
        raise AssertionError("regenerated although the dataset exists")

    monkeypatch.setattr(builtin, "generate_builtin", fail)
    second = builtin_dataset()
    assert second.content_hash == first.content_hash


def test_builtin_dataset_opens_what_a_concurrent_writer_wrote(tmp_path, monkeypatch):
    monkeypatch.setenv("NESFGEN_DATA_DIR", str(tmp_path))
    path = tmp_path / f"builtin-v{builtin.GENERATOR_VERSION}"
    small = {"train": [known_compounds()[0].crystal], "val": [known_compounds()[1].crystal]}

    def generate_while_another_writes(seed: int = 0):
        write_dataset(path, small, name="other-writer")  # lands between our check and our write
        return small

    monkeypatch.setattr(builtin, "generate_builtin", generate_while_another_writes)
    dataset = builtin_dataset()
    assert dataset.name == "other-writer"


def test_damaged_builtin_cache_is_generated_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NESFGEN_DATA_DIR", str(tmp_path))
    small = {"train": [known_compounds()[0].crystal], "val": [known_compounds()[1].crystal]}
    monkeypatch.setattr(builtin, "generate_builtin", lambda seed=0: small)
    first = builtin_dataset()
    train_file = first.path / "train.npz"
    train_file.write_bytes(train_file.read_bytes()[:-30])  # cut short
    with caplog.at_level("WARNING", logger="nesfgen.data.builtin"):
        again = builtin_dataset()
    assert again.content_hash == first.content_hash and again.load("train").ids == first.load("train").ids
    assert [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage() and "again" in r.getMessage()]
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.path.name]  # no staging or backup left
