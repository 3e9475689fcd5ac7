"""Checkpoints: the round trip, the format refusal, atomic writes, and what a broken file says (exit 2)."""

import errno
import os

import numpy as np
import pytest
import torch
from conftest import tiny_recipe

from nesfgen import __version__
from nesfgen.checkpoint import FORMAT_VERSION, build_model, load_model, read_checkpoint, save_checkpoint
from nesfgen.config import to_dict
from nesfgen.errors import UserError


@pytest.fixture
def state(tiny_dataset):
    """What training saves, for a tiny model with seeded weights."""
    recipe = tiny_recipe(tiny_dataset)
    torch.manual_seed(0)
    model = build_model(recipe.model, 5)
    return {
        "model": model.state_dict(),
        "recipe": to_dict(recipe),
        "species_table": [8, 11, 17, 30, 38],
        "box": [[0.0, 0.0, 0.0], [5.0, 5.0, 5.0]],
        "dataset_hash": "abc",
        "step": 7,
    }


def test_round_trip_loads_with_weights_only(state, tmp_path):
    path = tmp_path / "run" / "best.pt"
    save_checkpoint(path, state)
    raw = torch.load(path, weights_only=True)  # no pickled code: plain values and tensors only
    assert raw["format_version"] == FORMAT_VERSION and raw["nesfgen_version"] == __version__ and raw["step"] == 7
    loaded = load_model(path.parent)  # a run folder resolves to its best.pt
    assert loaded.species_table == state["species_table"] and loaded.dataset_hash == "abc"
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, state["model"][name]), name
    assert not loaded.model.training


def test_a_newer_format_is_refused_with_a_message(state, tmp_path):
    path = tmp_path / "future.pt"
    torch.save({**state, "format_version": FORMAT_VERSION + 1}, path)
    with pytest.raises(UserError, match=rf"newer nesfgen \(format {FORMAT_VERSION + 1}\); upgrade nesfgen"):
        read_checkpoint(path)


def test_a_foreign_file_is_refused_with_a_message(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)  # some other project's checkpoint
    with pytest.raises(UserError, match="not a nesfgen checkpoint"):
        read_checkpoint(path)


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_checkpoint_gets_the_mode_the_umask_gives_any_new_file(state, tmp_path):
    previous = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "best.pt", state)
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    assert (tmp_path / "best.pt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "best.pt").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777


def test_a_failed_write_keeps_the_previous_checkpoint_and_no_temporary(state, tmp_path, monkeypatch):
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, state)
    before = path.read_bytes()
    real_fdopen = os.fdopen

    def half_then_full(handle, mode):
        file = real_fdopen(handle, mode)

        def write(data):
            file.raw.write(bytes(data[:100]))  # the bytes reach the disk partly ...
            raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

        file.write = write
        return file

    monkeypatch.setattr(os, "fdopen", half_then_full)
    with pytest.raises(UserError, match="no space left on the device; the previous one is kept"):
        save_checkpoint(path, {**state, "step": 8})
    monkeypatch.undo()

    def interrupted(*args):
        raise KeyboardInterrupt  # Ctrl-C between the write and the rename

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {**state, "step": 9})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    assert read_checkpoint(path)["step"] == 7


@pytest.fixture
def good_state(tiny_dataset):
    recipe = tiny_recipe(tiny_dataset)
    table = tiny_dataset.species_table
    return {
        "recipe": to_dict(recipe),
        "model": build_model(recipe.model, len(table)).state_dict(),
        "species_table": table,
        "box": [[0.0, 0.0, 0.0], [5.0, 5.0, 5.0]],
        "atoms_per_cell": [2, 8],
        "dataset_hash": tiny_dataset.content_hash,
        "dataset_name": "tiny",
    }


def broken(good_state, tmp_path, case):
    """Write checkpoint ``case`` into tmp_path and return its path and the message reading it must give."""
    path = tmp_path / f"{case}.pt"
    if case == "empty":
        path.write_bytes(b"")
        return path, "is empty (0 bytes)"
    if case == "random-bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
        return path, "is not a PyTorch checkpoint file"
    if case == "code-in-it":
        torch.save({"model": {}, "recipe": {}, "surprise": np.random.default_rng(0)}, path)
        return path, "holds objects other than tensors and plain values"
    state = dict(good_state)
    if case == "no-species-table":
        del state["species_table"]
        message = "has no valid species_table"
    elif case == "bad-box":
        state["box"] = [[0.0, 0.0, 0.0], [5.0, float("nan"), 5.0]]
        message = "has no valid box"
    elif case == "flat-box":
        state["box"] = [0.0, 5.0]
        message = "has no valid box"
    elif case == "wrong-shapes":
        state["model"] = {**state["model"], "lattice_head.lengths.0.weight": torch.zeros(7, 3)}
        message = "does not fit the model its recipe describes: weight lattice_head.lengths.0.weight has shape [7, 3]"
    elif case == "missing-weight":
        state["model"] = dict(list(state["model"].items())[1:])
        message = "is missing"
    elif case == "bad-recipe":
        state["recipe"] = {**state["recipe"], "train": {**state["recipe"]["train"], "lr": -1.0}}
        message = "train.lr = -1.0 is not allowed"
    else:
        raise AssertionError(case)
    save_checkpoint(path, state)
    return path, message


CASES = [
    "empty",
    "random-bytes",
    "code-in-it",
    "no-species-table",
    "bad-box",
    "flat-box",
    "wrong-shapes",
    "missing-weight",
    "bad-recipe",
]


def test_a_good_checkpoint_loads_with_its_atom_range(good_state, tmp_path):
    save_checkpoint(tmp_path / "good.pt", good_state)
    trained = load_model(tmp_path / "good.pt")
    assert trained.atoms_per_cell == (2, 8) and trained.box.shape == (2, 3)


@pytest.mark.parametrize("case", CASES)
def test_a_broken_checkpoint_names_the_file_and_the_fault(good_state, tmp_path, case):
    path, message = broken(good_state, tmp_path, case)
    with pytest.raises(UserError, match=str(path)) as error:
        load_model(path)
    assert message in str(error.value)
    assert "weights_only" not in str(error.value)


@pytest.mark.parametrize("case", ["empty", "random-bytes", "no-species-table", "bad-box", "wrong-shapes"])
def test_broken_checkpoints_exit_2_on_the_command_line(cli, good_state, tmp_path, case, monkeypatch):
    path, message = broken(good_state, tmp_path, case)
    monkeypatch.setenv("COLUMNS", "400")
    result = cli("evaluate", f"checkpoint={path}", "limit=2", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr and "weights_only" not in result.stderr


def test_read_checkpoint_reports_a_missing_dataset_hash(good_state, tmp_path):
    del good_state["dataset_hash"]
    save_checkpoint(tmp_path / "x.pt", good_state)
    with pytest.raises(UserError, match="has no dataset_hash"):
        read_checkpoint(tmp_path / "x.pt")


@pytest.mark.parametrize(
    ("device", "message"),
    [("banana", "device 'banana' is not a device"), ("meta", "nesfgen runs on cpu, cuda or mps")]
    + ([] if torch.cuda.is_available() else [("cuda", "asks for CUDA but no CUDA device is available")]),
)
def test_a_device_that_is_not_here_is_refused_by_name(device, message, cli):
    from nesfgen.machine import resolve_device

    with pytest.raises(UserError, match=message):
        resolve_device(device)
    result = cli("evaluate", "limit=1", f"device={device}")  # every decoding command loads its model this way
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
