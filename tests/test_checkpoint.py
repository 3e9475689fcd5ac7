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


def test_a_failed_write_keeps_the_previous_checkpoint_and_no_temporary(state, tmp_path, monkeypatch):
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, state)
    before = path.read_bytes()
    real_save = torch.save

    def save_half_then_fail(payload, target):
        real_save(payload, target)  # the bytes reach the disk ...
        with open(target, "r+b") as handle:
            handle.truncate(100)  # ... partly, and then the process is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {**state, "step": 8})
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    assert read_checkpoint(path)["step"] == 7
