import numpy as np
import pytest
from conftest import rock_salt

from nesfgen.crystal import Crystal, formula_unit, lattice_matrix, standardize
from nesfgen.errors import UserError


def test_lattice_matrix_matches_pymatgen():
    from pymatgen.core import Lattice

    for params in [(3, 4, 5, 90, 90, 90), (4.1, 5.3, 4.7, 80, 103.5, 95), (3, 3, 7, 90, 90, 120)]:
        assert np.allclose(lattice_matrix(params[:3], params[3:]), Lattice.from_parameters(*params).matrix)


def test_round_trip_structure_and_cif(tiny_crystals):
    from pymatgen.core import Structure

    for crystal in tiny_crystals.values():
        back = Crystal.from_structure(crystal.to_structure(), id=crystal.id)
        assert back == crystal
        parsed = Structure.from_str(crystal.to_cif(), fmt="cif")
        again = Crystal.from_structure(parsed, id=crystal.id)
        assert np.allclose(again.lengths, crystal.lengths, atol=1e-5)
        assert sorted(again.atomic_numbers) == sorted(crystal.atomic_numbers)


def test_positions_wrapped_into_cell():
    crystal = Crystal.create(
        [4, 4, 4], [90] * 3, atomic_numbers=[11, 17], frac_coords=[[1.0, -0.25, 0.5], [0.5, 0.5, 1.2]]
    )
    assert np.all(crystal.frac_coords >= 0) and np.all(crystal.frac_coords < 1)
    assert np.allclose(crystal.frac_coords[0], [0, 0.75, 0.5])


def test_record_is_immutable(tiny_crystals):
    crystal = tiny_crystals["NaCl"]
    with pytest.raises(ValueError):
        crystal.cart_coords[0, 0] = 1.0
    with pytest.raises(AttributeError):
        crystal.id = "x"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lengths": [float("nan"), 4, 4]}, "NaN"),
        ({"lengths": [0, 4, 4]}, "positive"),
        ({"atomic_numbers": [], "frac_coords": np.zeros((0, 3))}, "no atoms"),
        ({"atomic_numbers": [200, 17]}, "unknown element"),
        ({"frac_coords": [[0, 0, 0], [3.0, 0, 0]]}, "outside the cell"),
        ({"frac_coords": [[0, 0, 0], [0.001, 0, 0]]}, "apart"),
    ],
)
def test_bad_records_are_refused(kwargs, message):
    args = {
        "lengths": [4, 4, 4],
        "angles": [90] * 3,
        "atomic_numbers": [11, 17],
        "frac_coords": [[0, 0, 0], [0.5, 0.5, 0.5]],
        "id": "bad-1",
    }
    args.update(kwargs)
    with pytest.raises(UserError, match=message) as error:
        Crystal.create(**args)
    assert "bad-1" in str(error.value)


def test_standardize_primitive_rock_salt_gives_conventional():
    from pymatgen.core import Structure

    primitive = rock_salt().to_structure().get_primitive_structure()
    assert len(primitive) == 2
    conventional = Crystal.from_structure(primitive, conventional=True)
    assert conventional.num_atoms == 8
    assert np.allclose(conventional.lengths, 5.64, atol=1e-3)
    # spglib's standard cell of the primitive cell, shifted off the origin: the 8-atom cube of 5.64 Å again
    shifted = Crystal.from_structure(primitive)
    shifted = Crystal.create(
        shifted.lengths, shifted.angles, atomic_numbers=shifted.atomic_numbers, frac_coords=shifted.frac_coords + 0.13
    )
    standard = standardize(shifted)
    assert standard.num_atoms == 8 and np.allclose(standard.lengths, 5.64, atol=1e-3)
    assert np.allclose(standard.angles, 90.0) and sorted(standard.atomic_numbers.tolist()) == [11] * 4 + [17] * 4
    assert isinstance(primitive, Structure)


def test_formulas_parse_to_amounts_of_real_elements_only():
    from nesfgen.crystal import parse_formula

    assert parse_formula("SrTiO3") == {38: 1.0, 22: 1.0, 8: 3.0}
    assert parse_formula("S Zn") == parse_formula("ZnS") == {30: 1.0, 16: 1.0}
    for text in ("Xx2O", "ZnS2Q", "", "not a formula", "2"):  # pymatgen reads Xx and Q as dummy species
        assert parse_formula(text) is None


def test_formula_units_are_the_smallest_whole_ones():
    assert formula_unit({30: 2.0, 16: 2.0}) == {30: 1, 16: 1}
    assert formula_unit({3: 0.5, 27: 1.0, 8: 2.0}) == {3: 1, 27: 2, 8: 4}  # Li0.5CoO2 is LiCo2O4
    assert formula_unit({26: 2 / 3, 8: 1.0}) == {26: 2, 8: 3}  # amounts read as fractions, not floats
    assert formula_unit({30: 1.5}) == {30: 1}
    assert formula_unit({}) is None and formula_unit({30: 1.0, 16: 0.0}) is None
