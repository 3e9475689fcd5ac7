"""Dataset folders: split names that stay file names, and split files checked against their manifest."""

import json
import shutil

import numpy as np
import pytest
from conftest import TINY

from nesfgen.data.store import open_dataset, write_dataset
from nesfgen.errors import UserError


@pytest.fixture
def dataset(tmp_path):
    crystals = [make(id=f"{name}") for name, make in TINY.items()]
    return write_dataset(tmp_path / "ds", {"train": crystals[:3], "val": crystals[3:4], "test": crystals[4:]}, "ds")


def edit_manifest(folder, change):
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def rewrite_split(folder, split, change):
    with np.load(folder / f"{split}.npz") as arrays:
        loaded = {name: arrays[name] for name in arrays.files}
    change(loaded)
    np.savez_compressed(folder / f"{split}.npz", **loaded)


@pytest.mark.parametrize("split", ["../../somewhere", "/abs/train", "a/b", "..", ".hidden", "", "x" * 65])
def test_split_names_that_are_paths_are_refused(dataset, split):
    edit_manifest(dataset.path, lambda m: m["splits"].update({split: m["splits"].pop("train")}))
    with pytest.raises(UserError, match=r"manifest.json: field 'splits': split name .* is not allowed"):
        open_dataset(dataset.path)
    with pytest.raises(UserError, match="not allowed"):
        write_dataset(dataset.path.parent / "new", {split: list(dataset.load("val"))}, "new")


def test_a_sound_dataset_verifies_and_load_hands_out_copies(dataset):
    again = open_dataset(dataset.path)
    assert again.verify() is again and again.content_hash == dataset.content_hash
    first = again.load("train")
    first.lengths[:] = 0  # a caller scribbling on its arrays
    assert again.load("train").lengths.min() > 1


def test_rescaled_split_is_found(dataset):
    rewrite_split(dataset.path, "train", lambda a: a.update(lengths=a["lengths"] * 1.1))
    reopened = open_dataset(dataset.path)
    with pytest.raises(UserError, match=r"dataset 'ds' .* does not match its manifest.json.*delete .* import"):
        reopened.load("test")  # any split: the whole dataset is checked
    with pytest.raises(UserError, match="does not match"):
        assert reopened.content_hash  # what "trained on this dataset" compares


def test_swapped_split_files_are_found(tmp_path):
    salt, blende = TINY["NaCl"](), TINY["ZnS"]()  # 8 atoms each: swapped files still fit the manifest's counts
    dataset = write_dataset(tmp_path / "ds", {"train": [salt, blende], "val": [salt], "test": [blende]}, "ds")
    shutil.move(dataset.path / "val.npz", tmp_path / "val.npz")
    shutil.move(dataset.path / "test.npz", dataset.path / "val.npz")
    shutil.move(tmp_path / "val.npz", dataset.path / "test.npz")
    with pytest.raises(UserError, match="does not match its manifest.json"):
        open_dataset(dataset.path).verify()


def test_ids_trimmed_from_the_manifest_are_found(dataset):
    edit_manifest(dataset.path, lambda m: m["splits"]["train"].update(ids=m["splits"]["train"]["ids"][:-1]))
    with pytest.raises(UserError, match=r"'splits.train.ids' lists 2 ids but 'splits.train.count' is 3"):
        open_dataset(dataset.path)
    edit_manifest(dataset.path, lambda m: m["splits"]["train"].update(count=2))
    with pytest.raises(UserError, match=r"train.npz holds 3 structures but manifest.json lists 2 ids"):
        open_dataset(dataset.path).load("val")


def test_damaged_or_missing_split_files(dataset):
    raw = bytearray((dataset.path / "train.npz").read_bytes())
    for index in range(40, len(raw) - 40, 97):
        raw[index] ^= 0xFF
    (dataset.path / "train.npz").write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"train.npz is damaged \(.*delete .* and import or fetch it again"):
        open_dataset(dataset.path).verify()
    (dataset.path / "train.npz").unlink()
    with pytest.raises(UserError, match="train.npz is missing"):
        open_dataset(dataset.path).verify()


def test_arrays_that_do_not_fit_together(dataset):
    rewrite_split(dataset.path, "val", lambda a: a.update(offsets=a["offsets"][:-1]))
    with pytest.raises(UserError, match=r"val.npz: arrays do not fit together \(offsets"):
        open_dataset(dataset.path).verify()


def test_malformed_manifest_fields(dataset):
    edit_manifest(dataset.path, lambda m: m.update(species_table="Na Cl"))
    with pytest.raises(UserError, match="field 'species_table' must be a list of integers"):
        open_dataset(dataset.path)
    edit_manifest(dataset.path, lambda m: m.update(species_table=[11], name="../../x"))
    with pytest.raises(UserError, match="field 'name' must be a plain name"):
        open_dataset(dataset.path)
