import numpy as np
import pytest
from conftest import cesium_chloride, perovskite, rock_salt, zinc_blende

from nesfgen.data.names import DERIVED_NAMES, resolve_dataset
from nesfgen.data.standin import DERIVED, build_pretraining, build_standin, pretraining_dataset, standin_dataset
from nesfgen.data.store import data_dir, write_dataset
from nesfgen.errors import UserError


def _released(folder):
    """An ICSG3D-like dataset with only val and test splits, as the paper released it."""
    val = [rock_salt(5.0 + 0.05 * k, id=f"val-{k}") for k in range(10)]
    test = [perovskite(id="test-0"), cesium_chloride(id="test-1")]
    return write_dataset(folder / "icsg3d", {"val": val, "test": test}, name="icsg3d")


def test_the_standin_holds_out_part_of_val_and_no_test_formula(tmp_path):
    generated = write_dataset(
        tmp_path / "gen",
        {"train": [zinc_blende(), perovskite(4.0, id="gen-SrTiO3")], "val": [cesium_chloride(4.2, id="gen-CsCl")]},
        name="gen",
    )
    splits = build_standin(_released(tmp_path), generated)
    train_ids, val_ids = [c.id for c in splits["train"]], [c.id for c in splits["val"]]
    assert "ZnS" in train_ids and "gen-SrTiO3" not in train_ids and "gen-CsCl" not in train_ids
    assert len(val_ids) == 1 and sorted(train_ids[1:] + val_ids) == sorted(f"val-{k}" for k in range(10))
    assert [c.id for c in splits["test"]] == ["test-0", "test-1"]  # the released test split, untouched


def test_the_standin_is_built_once_from_the_imported_icsg3d():
    _released(data_dir())
    dataset = resolve_dataset("icsg3d-standin")
    assert set(dataset.split_names) == {"train", "val", "test"} and len(dataset.load("test")) == 2
    written = (dataset.path / "manifest.json").stat().st_mtime_ns
    assert (standin_dataset().path / "manifest.json").stat().st_mtime_ns == written
    assert "was not released" in dataset.manifest["provenance"]["description"]
    assert np.isin(dataset.load("test").atomic_numbers, dataset.species_table).all()


def test_the_standin_needs_icsg3d_imported():
    with pytest.raises(
        UserError, match="built from the paper's icsg3d, which is not in the data directory.*nesfgen data import"
    ):
        resolve_dataset("icsg3d-standin")


def test_a_folder_named_like_a_dataset_does_not_hide_it(tmp_path, monkeypatch):
    _released(data_dir())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "icsg3d" / "seed-0").mkdir(parents=True)  # a runs folder, as `nesfgen results` makes
    assert resolve_dataset("icsg3d").path == data_dir() / "icsg3d"
    with pytest.raises(UserError, match="not a nesfgen dataset folder"):
        resolve_dataset("./icsg3d")  # a path is taken as a path


def test_the_pretraining_set_drops_every_formula_the_standin_validates_or_tests_on(tmp_path):
    _released(data_dir())
    standin = standin_dataset()
    held = standin.load("val")[0]  # a rock salt of the released val split
    lcs6 = write_dataset(
        data_dir() / "lcs6",
        {
            "train": [held, zinc_blende(), perovskite(4.0, id="mp-SrTiO3"), rock_salt(4.6, id="mp-other-NaCl")],
            "val": [cesium_chloride(4.2, id="mp-CsCl"), zinc_blende(5.6, id="mp-ZnS-2")],
            "test": [zinc_blende(5.5, id="mp-ZnS-3")],
        },
        name="lcs6",
    )
    splits = build_pretraining(lcs6, standin)
    assert {split: [c.id for c in crystals] for split, crystals in splits.items()} == {
        "train": ["ZnS"],  # the val split's NaCl by formula, in any cell; the test split's SrTiO3 and CsCl
        "val": ["mp-ZnS-2"],
        "test": ["mp-ZnS-3"],
    }
    dataset = resolve_dataset("lcs6-minus-icsg3d")
    assert [c.id for c in dataset.load("train")] == ["ZnS"] and dataset.manifest["provenance"]["lcs6_hash"]
    assert (pretraining_dataset().path / "manifest.json").stat().st_mtime_ns == (
        dataset.path / "manifest.json"
    ).stat().st_mtime_ns  # built once


def test_the_pretraining_set_needs_lcs6_imported():
    _released(data_dir())
    with pytest.raises(UserError, match="lcs6-minus-icsg3d is built from the paper's lcs6, which is not in"):
        resolve_dataset("lcs6-minus-icsg3d")


def test_every_derived_name_has_its_builder():
    assert set(DERIVED) == set(DERIVED_NAMES)
