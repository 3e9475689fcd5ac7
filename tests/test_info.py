"""CIF export: file names from hostile ids stay inside --out, never collide, and a failed export leaves nothing."""

import csv

import pytest
from conftest import rock_salt
from pymatgen.core import Structure

from nesfgen.crystal import Crystal
from nesfgen.data.info import export_cif
from nesfgen.data.store import write_dataset
from nesfgen.errors import UserError

HOSTILE_IDS = ["a/b", "a_b", "../../escaped", "/abs/path/victim", "..", "A_B"]


@pytest.fixture
def hostile(tmp_path):
    crystals = [rock_salt(5.6 + 0.02 * k, id=id) for k, id in enumerate(HOSTILE_IDS)]
    return write_dataset(tmp_path / "data" / "hostile", {"train": crystals[:4], "test": crystals[4:]}, "hostile")


def test_export_stays_inside_out_and_keeps_every_structure(hostile, tmp_path):
    out = tmp_path / "deep" / "export"
    assert export_cif(hostile, out) == len(HOSTILE_IDS)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.cif"))
    assert len(written) == len(HOSTILE_IDS) and all(p.parts[:2] == ("deep", "export") for p in written)
    with open(out / "index.csv", newline="") as file:
        index = list(csv.DictReader(file))
    assert [row["id"] for row in index] == HOSTILE_IDS
    for row in index:  # each file holds its own structure
        crystal = Crystal.from_structure(Structure.from_file(out / row["file"]))
        expected = 5.6 + 0.02 * HOSTILE_IDS.index(row["id"])
        assert abs(crystal.lengths[0] - expected) < 1e-4
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["export"]  # no staging left beside it


def test_export_refuses_a_folder_with_files_and_accepts_an_empty_one(hostile, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.cif").write_text("precious")
    with pytest.raises(UserError, match="not an empty folder"):
        export_cif(hostile, tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["mine.cif"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="afile is a file, not a folder"):
        export_cif(hostile, tmp_path / "afile")
    (tmp_path / "empty").mkdir()
    assert export_cif(hostile, tmp_path / "empty", ["test"]) == 2
    with pytest.raises(UserError, match="no split 'nope'"):
        export_cif(hostile, tmp_path / "other", ["nope"])
    assert not (tmp_path / "other").exists()


def test_failed_export_leaves_nothing(hostile, tmp_path, monkeypatch):
    calls = []

    def fail_on_the_third(self):
        calls.append(self.id)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return "data_x\n"

    monkeypatch.setattr(Crystal, "to_cif", fail_on_the_third)
    with pytest.raises(UserError, match="cannot write the export folder .*no space left"):
        export_cif(hostile, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
