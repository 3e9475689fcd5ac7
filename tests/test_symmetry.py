"""Space groups of known structures, symmetrize on perturbed cells, the symmetry CLI, data info and evaluate."""

import json

import numpy as np
import pytest
from conftest import monoclinic, perovskite, rock_salt, zinc_blende

from nesfgen.crystal import Crystal
from nesfgen.data.store import write_dataset
from nesfgen.errors import UserError
from nesfgen.evaluate import EvaluateOptions, evaluate, recovery_key, write_report
from nesfgen.metrics import PAPER_METRICS
from nesfgen.symmetry import analyse, crystal_system, space_group_histogram, symmetrize, symmetrize_decoded


def tetragonal_batio3(id: str = "BaTiO3") -> Crystal:
    """Room-temperature BaTiO3, P4mm: Ti and O shifted along c."""
    frac = [[0, 0, 0], [0.5, 0.5, 0.515], [0.5, 0.5, 0.975], [0.5, 0, 0.485], [0, 0.5, 0.485]]
    return Crystal.create([3.992, 3.992, 4.036], [90] * 3, atomic_numbers=[56, 22, 8, 8, 8], frac_coords=frac, id=id)


def perturbed(crystal: Crystal, rng: np.random.Generator, sigma: float = 0.02) -> Crystal:
    noise = rng.normal(0.0, sigma, crystal.cart_coords.shape)
    return Crystal.create(
        crystal.lengths, crystal.angles, crystal.cart_coords + noise, crystal.atomic_numbers, crystal.id
    )


def periodic_displacement(a: Crystal, b: Crystal) -> np.ndarray:
    delta = a.frac_coords - b.frac_coords
    delta -= np.round(delta)
    return np.linalg.norm(delta @ a.lattice, axis=1)


@pytest.mark.parametrize(
    "make, number, symbol, system, sites",
    [
        (rock_salt, 225, "Fm-3m", "cubic", "Na 4a, Cl 4b"),
        (zinc_blende, 216, "F-43m", "cubic", "Zn 4a, S 4c"),
        (perovskite, 221, "Pm-3m", "cubic", "Sr 1a, Ti 1b, O 3c"),
        (tetragonal_batio3, 99, "P4mm", "tetragonal", "Ba 1a, Ti 1b, O 1b, O 2c"),
    ],
)
def test_known_structures_give_their_space_groups(make, number, symbol, system, sites):
    report = analyse(make())
    assert [level.symprec for level in report.levels] == [0.01, 0.05, 0.1, 0.2]
    for level in report.levels:
        assert (level.number, level.symbol, level.crystal_system, level.sites) == (number, symbol, system, sites)
    assert len(report.at(0.1).wyckoffs) == report.num_atoms


def test_crystal_systems_at_their_boundaries():
    assert [crystal_system(n) for n in (1, 3, 16, 75, 143, 168, 195, 230)] == [
        "triclinic",
        "monoclinic",
        "orthorhombic",
        "tetragonal",
        "trigonal",
        "hexagonal",
        "cubic",
        "cubic",
    ]
    assert analyse(monoclinic()).at(0.1).crystal_system == "triclinic"  # three general positions: P1


@pytest.mark.parametrize("make, number", [(rock_salt, 225), (zinc_blende, 216), (tetragonal_batio3, 99)])
def test_perturbed_cell_is_recovered_by_symmetrize(make, number, rng):
    original = make()
    noisy = perturbed(original, rng)
    assert analyse(noisy, (0.001,)).levels[0].number == 1  # the noise breaks every symmetry
    snapped = symmetrize(noisy, symprec=0.1)
    assert analyse(snapped, (1e-4,)).levels[0].number == number
    assert snapped.num_atoms == original.num_atoms and snapped.id == original.id
    assert np.array_equal(snapped.atomic_numbers, noisy.atomic_numbers)  # atoms keep their order
    assert np.allclose(snapped.angles, original.angles)
    # each atom moves back to (about) its ideal site, not just somewhere symmetric
    assert periodic_displacement(snapped, original).max() < 0.05
    assert periodic_displacement(snapped, noisy).max() < 0.1


def test_symmetrize_takes_the_highest_group_within_tolerance_and_keeps_the_setting(rng):
    noisy = perturbed(perovskite(), rng, sigma=0.03)
    assert [level.number for level in analyse(noisy).levels] == [1, 1, 6, 221]
    assert analyse(symmetrize(noisy, symprec=0.1), (1e-4,)).levels[0].number == 6
    assert analyse(symmetrize(noisy, symprec=0.2), (1e-4,)).levels[0].number == 221
    primitive = Crystal.from_structure(rock_salt().to_structure().get_primitive_structure(), id="prim")
    snapped = symmetrize(primitive)  # a primitive fcc cell stays primitive: 2 atoms, 60° angles
    assert snapped.num_atoms == 2 and np.allclose(snapped.angles, 60.0)
    assert analyse(snapped, (1e-4,)).levels[0].number == 225


def test_disordered_or_invalid_input_is_a_clear_error():
    from pymatgen.core import Lattice, Structure

    disordered = Structure(Lattice.cubic(5.6), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(UserError, match="partial occupancy"):
        analyse(disordered)
    with pytest.raises(UserError, match="partial occupancy"):
        symmetrize(disordered)
    with pytest.raises(UserError, match="expected a crystal structure"):
        analyse("NaCl")
    with pytest.raises(UserError, match="positive length"):
        symmetrize(rock_salt(), symprec=0)
    with pytest.raises(UserError, match="positive length"):
        analyse(rock_salt(), tolerances=(0.1, -1))


def test_symmetrize_decoded_keeps_failures_as_decoded(monkeypatch):
    def fail(crystal, symprec):
        raise UserError("no symmetry")

    monkeypatch.setattr("nesfgen.symmetry.symmetrize", fail)
    crystal = rock_salt()
    assert symmetrize_decoded([None, crystal]) == ([None, crystal], [False, True])


def test_symmetry_cli_on_cif_files_compares_decoded_with_input(cli, tmp_path, rng):
    folder = tmp_path / "recon"
    folder.mkdir()
    (folder / "NaCl.input.cif").write_text(rock_salt().to_cif())
    (folder / "NaCl.decoded.cif").write_text(perturbed(rock_salt(), rng).to_cif())
    (folder / "ZnS.cif").write_text(zinc_blende().to_cif())
    result = cli("symmetry", str(folder), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    entries = {entry["name"]: entry for entry in report["structures"]}
    assert entries.keys() == {"NaCl.input.cif", "NaCl.decoded.cif", "ZnS.cif"}
    decoded = entries["NaCl.decoded.cif"]
    assert decoded["input"] == str(folder / "NaCl.input.cif")
    assert decoded["same_as_input"] == {"0.01": False, "0.05": False, "0.1": True, "0.2": True}
    assert [level["number"] for level in entries["ZnS.cif"]["levels"]] == [216] * 4
    assert entries["ZnS.cif"]["same_as_input"] is None
    assert report["agreement"] == {"decoded": 1, "same_space_group": {"0.01": 0, "0.05": 0, "0.1": 1, "0.2": 1}}
    table = cli("symmetry", str(folder / "NaCl.decoded.cif"), cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "Fm-3m" in table.stdout and "input's space group: 0.01 Å 0/1" in table.stdout


def test_symmetry_cli_refuses_bad_files(cli, tmp_path):
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    disordered = Structure(Lattice.cubic(5.6), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    (tmp_path / "mixed.cif").write_text(str(CifWriter(disordered)))
    (tmp_path / "garbage.cif").write_text("this is not a CIF\n")
    for args, message in [
        ([str(tmp_path / "mixed.cif")], "mixed.cif: structure 'mixed': has partial occupancy"),
        ([str(tmp_path / "garbage.cif")], "garbage.cif"),
        ([str(tmp_path / "missing.cif")], "does not exist"),
        ([], "nothing to analyse"),
        (["data=builtin", "split=nope"], "has no split 'nope'"),
        (["data=builtin", "tolerances=0.1,0"], "positive length"),
    ]:
        result = cli("symmetry", *args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in " ".join(result.stderr.split()) and "Traceback" not in result.stderr


def test_space_group_histogram_of_the_training_split(tiny_dataset):
    histogram = space_group_histogram(tiny_dataset)
    assert histogram["split"] == "train" and histogram["symprec"] == 0.1
    counts = {group["number"]: group["count"] for group in histogram["groups"]}
    # the 48 training structures: 10 each of NaCl, ZnS and CsCl, 9 each of SrTiO3 and the P1 "mono" cell
    assert counts == {221: 19, 225: 10, 216: 10, 1: 9}
    assert histogram["groups"][0] == {"number": 221, "symbol": "Pm-3m", "count": 19}


def test_evaluate_with_symmetrize_on_the_exact_field(tmp_path, rng):
    truth = [perturbed(rock_salt(id=f"NaCl-{k}"), rng) for k in range(2)] + [zinc_blende()]
    assert [analyse(c).at(0.1).number for c in truth] == [225, 225, 216]
    dataset = write_dataset(tmp_path / "noisy", {"train": truth, "test": truth}, name="noisy")
    overrides = {"estimator.steps": "4"}
    plain = evaluate(
        EvaluateOptions(checkpoint=None, data=str(dataset.path), split="test", field="exact", estimator=overrides)
    )
    assert plain.summary["symmetrize"] is False and "before_symmetrize" not in plain.summary
    assert plain.summary[recovery_key(0.01)] == 100.0  # the exact field decodes the noisy cells as they are
    assert plain.summary[recovery_key(0.1)] == plain.summary["cdvae_spacegroup_match_pct"] == 100.0

    snapped = evaluate(
        EvaluateOptions(
            checkpoint=None,
            data=str(dataset.path),
            split="test",
            field="exact",
            estimator=overrides,
            symmetrize=True,
            symprec=0.1,
        )
    )
    s = snapped.summary
    assert (s["symmetrize"], s["symmetrize_symprec"], s["symmetrize_failed"]) == (True, 0.1, 0)
    # snapped to Fm-3m, the noisy NaCl cells (P1 at 0.01 Å) no longer match their inputs at 0.01 Å
    assert s[recovery_key(0.01)] == pytest.approx(100 / 3) and s[recovery_key(0.1)] == 100.0
    assert [row["decoded_spacegroup"] for row in snapped.rows] == [225, 225, 216]
    assert s["before_symmetrize"]["position_error_actual"] < 1e-4 < s["position_error_actual"] < 0.05
    assert s["before_symmetrize"].keys() == set(PAPER_METRICS)
    write_report(snapped, tmp_path / "report")
    text = (tmp_path / "report" / "evaluation.md").read_text()
    assert "snapped to the highest-symmetry space group" in text and "| as decoded | symmetrised |" in text
    with pytest.raises(UserError, match="positive length"):
        evaluate(
            EvaluateOptions(
                checkpoint=None, data=str(dataset.path), split="test", field="exact", symmetrize=True, symprec=-0.1
            )
        )


def test_reconstruct_cli_writes_symmetrized_decodes(cli, tmp_path, rng):
    truth = [perturbed(rock_salt(id="NaCl"), rng), zinc_blende()]
    dataset = write_dataset(tmp_path / "noisy", {"train": truth, "test": truth}, name="noisy")
    out = tmp_path / "recon"
    args = ["reconstruct", f"data={dataset.path}", "field=exact", "estimator.steps=4", f"out={out}"]
    result = cli(*args, "symmetrize=true", "symprec=0.1", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["pairs"], summary["symmetrize"], summary["symmetrize_symprec"]) == (2, True, 0.1)
    check = json.loads(cli("symmetry", str(out / "NaCl.decoded.cif"), "--json").stdout)
    assert check["structures"][0]["levels"][0]["number"] == 225  # symmetric even at 0.01 Å
    refused = cli(*args, "symprec=0.1")
    assert refused.returncode == 2 and "add symmetrize=true" in refused.stderr
