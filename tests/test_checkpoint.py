"""Checkpoints: what a broken file says when it is read (one line naming the file and the fault, exit 2)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_recipe

from nesfgen.checkpoint import build_model, load_model, read_checkpoint, save_checkpoint
from nesfgen.config import to_dict
from nesfgen.errors import UserError


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
def test_broken_checkpoints_exit_2_on_the_command_line(good_state, tmp_path, case):
    path, message = broken(good_state, tmp_path, case)
    result = subprocess.run(
        [sys.executable, "-m", "nesfgen", "evaluate", f"checkpoint={path}", "limit=2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr and "weights_only" not in result.stderr


def test_read_checkpoint_reports_a_missing_dataset_hash(good_state, tmp_path):
    del good_state["dataset_hash"]
    save_checkpoint(tmp_path / "x.pt", good_state)
    with pytest.raises(UserError, match="has no dataset_hash"):
        read_checkpoint(tmp_path / "x.pt")
