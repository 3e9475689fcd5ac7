"""CHGNet relaxation at tiny size: one small crystal relaxed, bad inputs reported, an interrupted run resumed."""

import csv
import json

import pytest
from conftest import perovskite, rock_salt, zinc_blende

from nesfgen import relax
from nesfgen.errors import UserError
from nesfgen.relax import RelaxInput, RelaxOptions, gather_inputs, relax_all


@pytest.fixture(scope="module")
def potential():
    """One CHGNet for the module: loading it takes seconds."""
    return relax.load_potential()


def strained_nacl():
    return rock_salt(a=5.9).to_structure().get_primitive_structure()


def test_relaxing_strained_nacl_lowers_its_energy_and_keeps_its_group(potential):
    record, relaxed = relax.relax_structure(strained_nacl(), RelaxOptions(fmax=0.1, steps=60), potential)
    assert record["status"] == "relaxed", record["reason"]
    assert record["energy_after"] < record["energy_before"]
    assert record["volume_change_pct"] < 0  # 5.9 Å is stretched; CHGNet's NaCl is near 5.7 Å
    assert record["space_group_before"] == record["space_group_after"] == "Fm-3m (225)"
    assert 0 <= record["rmsd"] < 0.05  # only the cell shrinks: after StructureMatcher's scaling the sites agree
    assert relaxed is not None and len(relaxed) == 2


def test_too_few_steps_is_unconverged_not_failed(potential):
    record, _ = relax.relax_structure(strained_nacl(), RelaxOptions(fmax=1e-4, steps=2), potential)
    assert record["status"] == "relaxed" and record["converged"] is False and record["steps"] == 2


@pytest.mark.parametrize(
    "species, coords, reason",
    [
        (["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]], "overlapping atoms"),
        (["Am", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]], "outside CHGNet's table"),
    ],
)
def test_bad_structures_are_reported(species, coords, reason):
    from pymatgen.core import Lattice, Structure

    record, relaxed = relax.relax_structure(Structure(Lattice.cubic(4.0), species, coords), RelaxOptions())
    assert record["status"] == "failed" and reason in record["reason"] and relaxed is None


def test_a_potential_error_is_a_failure_not_a_crash(monkeypatch):
    def exploding(model, structures):
        raise RuntimeError("graph too large")

    monkeypatch.setattr(relax, "energies_forces_stresses", exploding)
    record, relaxed = relax.relax_structure(strained_nacl(), RelaxOptions(), model=object())
    assert record["status"] == "failed" and "graph too large" in record["reason"]


def test_one_backward_pass_gives_chgnets_own_energies_forces_and_stresses(potential):
    structures = [strained_nacl(), zinc_blende().to_structure(), perovskite().to_structure()]
    ours = relax.energies_forces_stresses(potential, structures)
    theirs = potential.predict_structure(structures, task="efs", batch_size=3)
    for (energy, forces, stress), reference in zip(ours, theirs):
        assert energy == pytest.approx(float(reference["e"]), abs=1e-6)
        assert forces == pytest.approx(reference["f"], abs=1e-5) and stress == pytest.approx(reference["s"], abs=1e-4)


def test_the_cell_filter_gives_ases_positions_and_forces_along_a_path():
    """One exponential and one Fréchet derivative a step give what ASE's filter gets from its logarithms."""
    import numpy as np
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.filters import FrechetCellFilter
    from scipy.linalg import expm, expm_frechet

    rng = np.random.default_rng(0)
    for repeats in (1, 2, 3):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1, 1, repeats))
        atoms.rattle(0.05, seed=repeats)
        atoms.set_cell(atoms.cell @ (np.eye(3) + 0.05 * rng.normal(size=(3, 3))), scale_atoms=True)
        theirs_atoms, ours_atoms = atoms.copy(), atoms.copy()
        theirs_atoms.calc, ours_atoms.calc = EMT(), EMT()
        theirs, ours = FrechetCellFilter(theirs_atoms), relax._RememberingCellFilter(ours_atoms)
        for _ in range(4):
            step = 0.03 * rng.normal(size=theirs.get_positions().shape)
            theirs.set_positions(theirs.get_positions() + step)
            ours.set_positions(ours.get_positions() + step)
            assert np.abs(ours.get_positions() - theirs.get_positions()).max() < 1e-9
            assert np.abs(ours.get_forces() - theirs.get_forces()).max() < 1e-9
    matrix, direction = 0.3 * rng.normal(size=(3, 3)), 5 * rng.normal(size=(3, 3))
    assert relax._expm(matrix) == pytest.approx(expm(matrix), abs=1e-12)
    assert relax._expm_derivative(matrix, direction) == pytest.approx(
        expm_frechet(matrix, direction, compute_expm=False), abs=1e-11
    )


def strained(structure, factor):
    structure = structure.copy()
    structure.scale_lattice(structure.volume * factor)
    return structure


def test_lockstep_relaxation_matches_chgnets_own_relaxer_and_one_at_a_time(potential):
    """Batched steps are the same FIRE under the same cell filter: same steps, same energies."""
    import contextlib
    import io
    import warnings

    from chgnet.model import StructOptimizer

    from nesfgen.generate import find_structure

    structures = [
        strained_nacl(),
        strained(zinc_blende().to_structure().get_primitive_structure(), 1.08),
        strained(perovskite().to_structure(), 0.95),
        strained(find_structure("Si", None).to_structure(), 1.05),  # the built-in table's diamond
    ]
    options = RelaxOptions(fmax=0.05, steps=100, rattle=0.0)  # chgnet's relaxer starts from the input as given
    together = {k: (record, s) for k, record, s in relax.relax_many(structures, options, potential, batch_size=4)}
    for k, structure in enumerate(structures):
        alone, _ = relax.relax_structure(structure, options, potential)
        record, relaxed = together[k]
        assert record["status"] == alone["status"] == "relaxed" and record["converged"]
        assert record["steps"] == alone["steps"] and record["energy_after"] == pytest.approx(
            alone["energy_after"], abs=1e-4
        )
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = StructOptimizer(model=potential, optimizer_class="FIRE").relax(
                structure, fmax=options.fmax, steps=options.steps, relax_cell=True, verbose=False
            )
        potential.graph_converter.set_isolated_atom_response("error")  # chgnet's relaxer set "warn" on it
        assert len(reference["trajectory"].energies) - 2 == record["steps"]  # chgnet logs the start and end twice
        assert reference["trajectory"].energies[-1] / len(structure) == pytest.approx(record["energy_after"], abs=1e-4)
        assert relaxed.volume == pytest.approx(reference["final_structure"].volume, rel=1e-3)


def test_one_structure_the_potential_refuses_does_not_stop_the_batch(potential, monkeypatch):
    evaluate = relax.energies_forces_stresses

    def refuses_sodium(model, structures):
        if any("Na" in s.composition for s in structures):
            raise RuntimeError("no graph for Na")
        return evaluate(model, structures)

    monkeypatch.setattr(relax, "energies_forces_stresses", refuses_sodium)
    zns = zinc_blende().to_structure().get_primitive_structure()
    results = {k: r for k, r, _ in relax.relax_many([strained_nacl(), zns], RelaxOptions(steps=20), potential)}
    assert results[0]["status"] == "failed" and "no graph for Na" in results[0]["reason"]
    assert results[1]["status"] == "relaxed"


def test_a_failed_bond_graph_leaves_no_file_in_the_working_folder(potential, monkeypatch, tmp_path):
    def builds_no_bond_graph(structure, graph_id=None, **kwargs):
        structure.to(filename="bond_graph_error.cif")  # what chgnet's graph builder does, into the working folder
        raise RuntimeError(f"Failed creating bond graph for {graph_id}, check bond_graph_error.cif")

    monkeypatch.setattr(potential.graph_converter, "forward", builds_no_bond_graph)
    monkeypatch.chdir(tmp_path)
    [(_, record, _)] = relax.relax_many([strained_nacl()], RelaxOptions(steps=5), potential)
    assert record["status"] == "failed" and "Failed creating bond graph" in record["reason"]
    assert "bond_graph_error.cif" not in record["reason"]
    assert list(tmp_path.iterdir()) == []


def test_inputs_files_folders_formulas_and_unreadable(tmp_path):
    folder = tmp_path / "samples"
    folder.mkdir()
    (folder / "sample-0000.cif").write_text(rock_salt().to_cif())
    (folder / "broken.cif").write_text("data_x\n_cell_length_a oops\n")
    (folder / "samples.csv").write_text("not a structure")
    items = gather_inputs([str(folder), "ZnS"])
    assert [i.id for i in items] == ["broken", "sample-0000", "ZnS-zincblende"]
    assert items[0].structure is None and "unreadable" in items[0].problem
    assert items[2].source == "builtin"
    with pytest.raises(UserError, match="no input could be read as a structure: .*broken.cif: unreadable"):
        gather_inputs([str(folder / "broken.cif")])  # nothing to relax is a mistake, not "0 relaxed"


def test_interrupted_run_resumes(tmp_path, potential, monkeypatch):
    items = [RelaxInput("a", "test", strained_nacl()), RelaxInput("bad", "test", None, "unreadable: x")]
    options = RelaxOptions(fmax=0.2, steps=20)
    first = relax_all(items, tmp_path, options)
    assert (tmp_path / "a.relaxed.cif").is_file() and (tmp_path / "a.relax.json").is_file()
    assert [r["status"] for r in first] == ["relaxed", "failed"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished structure was relaxed again")

    monkeypatch.setattr(relax, "relax_many", must_not_run)
    again = relax_all(items, tmp_path, options)
    assert again == first
    with pytest.raises(AssertionError, match="relaxed again"):  # other options: computed again
        relax_all(items, tmp_path, RelaxOptions(fmax=0.1, steps=20))
    with pytest.raises(AssertionError, match="relaxed again"):
        relax_all(items, tmp_path, RelaxOptions(fmax=0.2, steps=20, rattle=0.05))
    with pytest.raises(AssertionError, match="relaxed again"):  # other weights
        relax_all(items, tmp_path, RelaxOptions(fmax=0.2, steps=20, potential="0.2.0"))
    # a record written before the weights could be chosen was relaxed with the default's, and is reused for them only
    record_file = tmp_path / "a.relax.json"
    record_file.write_text(
        json.dumps({k: v for k, v in json.loads(record_file.read_text()).items() if k != "potential"})
    )
    assert relax_all(items[:1], tmp_path, options)[0]["id"] == "a"
    with pytest.raises(AssertionError, match="relaxed again"):
        relax_all(items[:1], tmp_path, RelaxOptions(fmax=0.2, steps=20, potential="0.2.0"))


def test_rattle_is_seeded_by_the_structure_and_zero_leaves_it():
    from pymatgen.io.ase import AseAtomsAdaptor

    original = AseAtomsAdaptor.get_atoms(rock_salt(a=5.7).to_structure())
    first, second, still = original.copy(), original.copy(), original.copy()
    relax.rattle_atoms(first, 0.05)
    relax.rattle_atoms(second, 0.05)
    relax.rattle_atoms(still, 0.0)
    moved = first.positions - original.positions
    assert (first.positions == second.positions).all() and (still.positions == original.positions).all()
    assert 0.01 < moved.std() < 0.1


def test_rattled_rock_salt_relaxes_back_to_its_minimum(potential):
    plain, _ = relax.relax_structure(strained_nacl(), RelaxOptions(fmax=0.02, steps=200, rattle=0.0), potential)
    shaken, _ = relax.relax_structure(strained_nacl(), RelaxOptions(fmax=0.02, steps=200, rattle=0.05), potential)
    assert shaken["converged"] and shaken["rattle"] == 0.05
    assert abs(shaken["energy_after"] - plain["energy_after"]) < 2e-3
    assert shaken["space_group_after"] == plain["space_group_after"] == "Fm-3m (225)"


def test_run_writes_csv_and_summary_keys(tmp_path, potential, monkeypatch):
    import nesfgen.stability as stability

    source = tmp_path / "in"
    source.mkdir()
    (source / "nacl.cif").write_text(rock_salt(a=5.7).to_cif())
    entries = [stability.HullEntry("na", {"Na": 1}, -1.3), stability.HullEntry("cl", {"Cl": 1}, -1.8)]
    monkeypatch.setattr(stability, "open_hull", lambda spec, potential: stability.hull_from_entries("mp", entries))
    options = stability.ScreenOptions(inputs=(str(source),), out=str(tmp_path / "out"), fmax=0.2, steps=10, hull="mp")
    summary = stability.relax_and_screen(options)
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    for key in (
        "relaxed",
        "failed",
        "converged_pct",
        "mean_rmsd",
        "stable_pct",
        "metastable_pct",
        "sun_pct",
        "msun_pct",
        "hull_source",
        "seconds",
    ):
        assert key in written
    assert summary["relaxed"] == 1 and summary["hull_source"] == "mp" and summary["stable_pct"] == 100.0
    assert summary["sun_pct"] is None  # no training set given: novelty unknown
    rows = list(csv.DictReader((tmp_path / "out" / "relax.csv").open()))
    assert tuple(rows[0]) == stability.CSV_COLUMNS and float(rows[0]["e_above_hull"]) < 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["relax", "NaCl"], "out=DIR is required"),
        (["relax", "missing.cif", "out=x"], "does not exist"),
        (["relax", "NaCl", "out=x", "fmax=-1"], "fmax=-1.0 must be a positive force"),
        (["relax", "NaCl", "out=x", "rattle=-1"], "rattle=-1.0 must be a displacement"),
        (["relax", "NaCl", "out=x", "temperature=3"], "unknown option temperature"),
        (["relax", "NaCl", "out=x", "potential=0.4.0"], "potential=0.4.0 is not a CHGNet version"),
        (["data", "hull", "builtin", "elements=Xx"], "elements="),
    ],
)
def test_cli_mistakes_exit_2(cli, tmp_path, args, message):
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_cli_json_stdout_is_pure_json(cli, tmp_path):
    """chgnet prints its device and version; --json must still be one JSON document on stdout."""
    result = cli("relax", "NaCl", f"out={tmp_path / 'out'}", "steps=2", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["relaxed"] == 1 and summary["hull_source"] is None


def test_worker_processes_give_the_same_relaxations(tmp_path):
    """Two single-threaded worker processes relax each structure as one process does: same steps, same energy."""
    items = [
        RelaxInput("nacl", "test", strained_nacl()),
        RelaxInput("zns", "test", strained(zinc_blende().to_structure().get_primitive_structure(), 1.08)),
        RelaxInput("bad", "test", None, "unreadable: x"),
        RelaxInput("perovskite", "test", strained(perovskite().to_structure(), 0.95)),
    ]
    alone = relax_all(items, tmp_path / "one", RelaxOptions(fmax=0.1, steps=40, batch=2, workers=1))
    spread = relax_all(items, tmp_path / "two", RelaxOptions(fmax=0.1, steps=40, batch=2, workers=2))
    assert [r["id"] for r in spread] == ["nacl", "zns", "bad", "perovskite"]
    for one, two in zip(alone, spread):
        assert one["status"] == two["status"] and one.get("steps") == two.get("steps")
        assert one.get("energy_after", 0) == pytest.approx(two.get("energy_after", 0), abs=1e-5)
    assert (tmp_path / "two" / "zns.relaxed.cif").is_file()


@pytest.mark.parametrize(
    "workers, structures, cores, expected",
    [(0, 1000, 2, 2), (0, 20, 2, 1), (0, 1000, 64, relax.MAX_AUTO_WORKERS), (3, 1000, 2, 3), (3, 2, 2, 2)],
)
def test_worker_count(monkeypatch, workers, structures, cores, expected):
    monkeypatch.setattr(relax.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(relax.torch.cuda, "is_available", lambda: False)
    assert relax.worker_count(RelaxOptions(workers=workers), structures) == expected


def _mp2020_energy_per_atom(composition, uncorrected_energy_per_atom):
    """The Materials Project's corrected energy of a GGA(+U) entry: U for transition metals in oxides and
    fluorides as MP runs them, anion and U corrections as MP2020 applies them (what CHGNet is trained on)."""
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility
    from pymatgen.entries.computed_entries import ComputedEntry
    from pymatgen.io.vasp.sets import MPRelaxSet

    symbols = {element.symbol for element in composition.elements}
    anion = "O" if "O" in symbols else "F" if "F" in symbols else None
    u_values = MPRelaxSet.CONFIG["INCAR"]["LDAUU"].get(anion, {}) if anion else {}
    hubbards = {symbol: u_values.get(symbol, 0.0) for symbol in symbols}
    plus_u = any(hubbards.values())
    entry = ComputedEntry(
        composition,
        uncorrected_energy_per_atom * composition.num_atoms,
        parameters={"run_type": "GGA+U" if plus_u else "GGA", "hubbards": hubbards if plus_u else {}},
    )
    return MaterialsProject2020Compatibility(check_potcar=False).process_entry(entry).energy_per_atom


@pytest.mark.paper_data
@pytest.mark.parametrize("weights, mean_bound, within", [("0.2.0", 0.016, 100), ("0.3.0", 0.018, 99)])
def test_energies_match_the_materials_projects_on_the_ybco_like_structures(paper_data, weights, mean_bound, within):
    """CHGNet at the Materials Project's own relaxed structures (the 100 YBCO-like cells) against the energies MP
    publishes for them (the release's candidate list), MP2020-corrected: the scale every hull here is on.
    Measured 2026-12-06: mean absolute difference 0.015 eV/atom and all 100 within 0.1 with the 0.2.0 weights,
    0.017 and 99 with 0.3.0, the default (docs/relax.md: 0.2.0's holes away from MP's structures decided it)."""
    from nesfgen.data.importers import load_paper_folder

    published = {}
    with open(paper_data / "retrieved_neighbours_mp-20674_YBCO.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            published[row["mp_id"]] = float(row["energy_per_atom"])
    cells = [
        c for split in ("train", "val", "test") for c in load_paper_folder(paper_data / f"dataset_YBCO13_fold0_{split}")
    ]
    structures = [c.to_structure() for c in cells]
    energies = [
        e
        for k in range(0, 100, 25)
        for e, _, _ in relax.energies_forces_stresses(relax.load_potential(weights), structures[k : k + 25])
    ]
    differences = [
        abs(energy - _mp2020_energy_per_atom(structure.composition, published[cell.id]))
        for cell, structure, energy in zip(cells, structures, energies, strict=True)
    ]
    assert len(differences) == 100
    assert sum(differences) / len(differences) < mean_bound
    assert sum(d <= 0.1 for d in differences) >= within


@pytest.mark.parametrize(
    "formula, weights, mp_energy, measured",
    # the Materials Project's corrected energies per atom: Si mp-149 (GGA, no correction), NaCl mp-22862 (GGA,
    # MP2020's Cl correction), where they were found in docs/relax.md; measured: CHGNet minus MP, 2026-12-06
    [
        ("NaCl", "0.3.0", -3.6960, 0.029),
        ("Si", "0.3.0", -5.4253, 0.112),
        ("NaCl", "0.2.0", -3.6960, 0.010),
        ("Si", "0.2.0", -5.4253, 0.053),
    ],
)
def test_relaxed_builtin_structures_against_the_materials_projects_energies(
    tmp_path, formula, weights, mp_energy, measured
):
    """How far each set of weights puts NaCl and Si from MP's energies: the default's (0.3.0) Si is 0.112 eV/atom
    above MP's, the potential's own error at every lattice constant (docs/relax.md)."""
    import nesfgen.stability as stability

    options = stability.ScreenOptions(inputs=(formula,), out=str(tmp_path), potential=weights)
    summary = stability.relax_and_screen(options)
    [record] = list(csv.DictReader((tmp_path / "relax.csv").open()))
    assert summary["relaxed"] == 1 and float(record["energy_after"]) - mp_energy == pytest.approx(measured, abs=0.005)
