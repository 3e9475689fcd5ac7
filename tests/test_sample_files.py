"""The files a sampling leaves: CIFs, extxyz, CSV, summary and the baselines' CIFs, without stale ones."""

import csv
import json
from dataclasses import replace

from conftest import perovskite, rock_salt, zinc_blende

from nesfgen.data.store import CrystalSet
from nesfgen.generative_metrics import build_reference
from nesfgen.sample_files import Generation, plot_distributions, write_samples


def _row(crystal, decoded=True):
    return {"id": crystal.id, "decoded": decoded, "density": 2.0, "num_atoms": 8, "num_elements": 2,
            "space_group_number": 225 if decoded else 0}  # fmt: skip


def test_each_decoded_sample_is_written_once_and_stale_ones_go(tmp_path):
    first = rock_salt(id="sample-0000")
    second = zinc_blende(id="sample-0001")
    generation = Generation(
        summary={"n": 3, "decoded": 2},
        rows=[_row(first), _row(second), {**_row(first, decoded=False), "id": "sample-0002"}],
        crystals=[first, second, None],
        baselines={"test_split": [rock_salt(id="NaCl/1"), None]},
    )
    out = tmp_path / "samples"
    out.mkdir()
    (out / "sample-0009.cif").write_text("an earlier sampling's")
    (out / "notes.cif").write_text("the user's own")
    write_samples(generation, out)

    assert sorted(p.name for p in out.glob("*.cif")) == ["notes.cif", "sample-0000.cif", "sample-0001.cif"]
    assert (out / "samples.extxyz").read_text().count("Lattice=") == 2
    with open(out / "samples.csv") as handle:
        assert [row["id"] for row in csv.DictReader(handle)] == ["sample-0000", "sample-0001", "sample-0002"]
    assert json.loads((out / "summary.json").read_text()) == {"n": 3, "decoded": 2}
    assert not (out / "distributions.png").exists()  # no reference to draw against
    baseline = list((out / "baselines" / "test_split").glob("*.cif"))
    assert len(baseline) == 1 and "/" not in baseline[0].stem  # ids made safe as file names

    fewer = replace(generation, rows=generation.rows[:1], crystals=[first], baselines={})
    write_samples(fewer, out)
    assert sorted(p.name for p in out.glob("sample-*.cif")) == ["sample-0000.cif"]


def test_distributions_figure_draws_even_with_no_decoded_sample(tmp_path):
    reference = build_reference(CrystalSet.from_crystals([rock_salt(), zinc_blende(), perovskite()]), None)
    crystal = rock_salt(id="sample-0000")
    for rows in ([_row(crystal)], [_row(crystal, decoded=False)]):
        path = plot_distributions(rows, reference, tmp_path / "distributions.png")
        assert path.is_file() and path.stat().st_size > 1000
