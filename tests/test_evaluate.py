import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import rock_salt, tiny_recipe

from nesfgen.checkpoint import read_checkpoint, save_checkpoint
from nesfgen.data.store import write_dataset
from nesfgen.errors import UserError
from nesfgen.evaluate import (
    EvaluateOptions,
    Evaluation,
    evaluate,
    evaluate_runs,
    expand_checkpoints,
    markdown_table,
    summarise_runs,
    write_reconstructions,
    write_report,
)
from nesfgen.metrics import PAPER_METRICS, pool_over_atoms
from nesfgen.train import train


@pytest.fixture
def trained_run(tiny_dataset, tmp_path):
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 1, "estimator.steps": 3}), tmp_path / "run")
    return tmp_path / "run"


def test_evaluate_writes_reports(trained_run, tiny_dataset, tmp_path):
    evaluation = evaluate(EvaluateOptions(checkpoint=str(trained_run), data=str(tiny_dataset.path), split="test"))
    assert evaluation.summary["num_structures"] == len(evaluation.rows) == 6
    assert evaluation.summary["trained_on_this_dataset"]
    files = write_report(evaluation, tmp_path / "report")
    assert {f.name for f in files} == {"evaluation.json", "evaluation.md", "structures.csv", "errors_vs_atoms.png"}
    written = json.loads((tmp_path / "report" / "evaluation.json").read_text())
    assert list(written["reference"]) == list(PAPER_METRICS)  # exactly the seven, in table order
    assert written["reference"] == pytest.approx(pool_over_atoms(evaluation.rows), nan_ok=True)
    assert "pooled over atoms (reference)" in (tmp_path / "report" / "evaluation.md").read_text()


def test_several_runs_give_mean_and_std(trained_run, tiny_dataset, tmp_path):
    state = read_checkpoint(trained_run)
    state["model"]["lattice_head.lengths.2.bias"] += 0.5  # a second model whose cells are 0.5 Å longer
    other = tmp_path / "other.pt"
    save_checkpoint(other, {key: value for key, value in state.items() if key != "path"})
    evaluations = [
        evaluate(EvaluateOptions(checkpoint=str(run), data=str(tiny_dataset.path), split="test", limit=2))
        for run in (trained_run, other)
    ]
    summary = summarise_runs([e.summary for e in evaluations])
    first, second = (e.summary["length_error"] for e in evaluations)
    assert summary["runs"] == 2 and first != second
    assert summary["mean"]["length_error"] == pytest.approx((first + second) / 2)
    assert summary["std"]["length_error"] == pytest.approx(abs(first - second) / 2)  # over runs, as numpy's std
    assert summary["mean"]["reference"].keys() == summary["std"]["reference"].keys() == set(PAPER_METRICS)
    first, second = (e.summary["reference"]["length_error"] for e in evaluations)
    assert summary["std"]["reference"]["length_error"] == pytest.approx(abs(first - second) / 2)
    assert expand_checkpoints(f"{trained_run}/*.pt") == sorted(str(p) for p in trained_run.glob("*.pt"))
    with pytest.raises(UserError, match="matched nothing"):
        expand_checkpoints(f"{trained_run}/nothing*")
    # best.pt and last.pt of one run: each report in its own sub-folder; a missing run refused before any decoding
    both = EvaluateOptions(
        checkpoint=f"{trained_run}/best.pt,{trained_run}/last.pt", data=str(tiny_dataset.path), split="test", limit=2
    )
    evaluate_runs(replace(both, out=str(tmp_path / "cmp")))
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == [
        f"{trained_run.name}-best",
        f"{trained_run.name}-last",
    ]
    with pytest.raises(UserError, match="absent-run not found"):
        evaluate_runs(replace(both, checkpoint=f"{trained_run},{tmp_path / 'absent-run'}", out=str(tmp_path / "bad")))
    assert not (tmp_path / "bad").exists()


def test_dataset_with_foreign_species_is_refused(trained_run, tmp_path):
    foreign = rock_salt(6.6, cation=19, anion=35)  # KBr: neither element is in the tiny table
    assert not {19, 35} & set(read_checkpoint(trained_run)["species_table"])
    other = write_dataset(tmp_path / "other", {"test": [foreign.with_id("x")]}, name="other")
    with pytest.raises(UserError, match="missing from the species table"):
        evaluate(EvaluateOptions(checkpoint=str(trained_run), data=str(other.path), split="test"))


def test_bad_checkpoint_is_a_clear_error(tiny_dataset, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="is not a PyTorch checkpoint file"):
        evaluate(EvaluateOptions(checkpoint=str(garbage), data=str(tiny_dataset.path), split="test"))
    with pytest.raises(UserError, match="estimator.steps=32"):
        evaluate(
            EvaluateOptions(
                checkpoint=None, data=str(tiny_dataset.path), split="test", field="exact", estimator={"steps": "3"}
            )
        )


def test_defaults_are_the_shipped_model_and_its_dataset(trained_run, tiny_dataset, tmp_path, monkeypatch):
    evaluation = evaluate(EvaluateOptions(checkpoint=str(trained_run), data=None, split="test", limit=1))
    assert evaluation.summary["dataset_hash"] == tiny_dataset.content_hash
    monkeypatch.setattr("nesfgen.checkpoint.PACKAGED_MODELS", tmp_path / "no-models")
    with pytest.raises(UserError, match="checkpoint nesf-lcs6 not found"):
        evaluate(EvaluateOptions(checkpoint=None, data=str(tiny_dataset.path), split="test"))


def test_markdown_puts_the_paper_beside_both_aggregations():
    summary = dict.fromkeys(PAPER_METRICS, 0.5) | {"reference": dict.fromkeys(PAPER_METRICS, 0.25)}
    summary["reference"]["position_error_actual"] = float("inf")  # an empty decode, as the reference has it
    table = markdown_table({**summary, "dataset": "lcs6"})
    assert "pooled over atoms" in table and "per-structure mean" in table
    assert "| error in number of atoms [%] | 0.2500 | 0.5000 | 6.35 |" in table  # pooled first, then per structure
    assert "| position error, actual [Å] | inf | 0.5000 | 0.1161 |" in table
    assert "Table 1" not in markdown_table({**summary, "dataset": "mine"})
    # the paper reports its test splits: validation figures stand alone, test ones beside the paper
    assert "Table 1" not in markdown_table({**summary, "dataset": "lcs6", "split": "val"})
    assert markdown_table({**summary, "dataset": "lcs6", "split": "test"}) == table


def test_trajectory_of_snapshots(tiny_dataset, tmp_path):
    from nesfgen.evaluate import TrajectoryOptions, evaluate_trajectory, write_trajectory

    recipe = tiny_recipe(
        tiny_dataset, **{"train.epochs": 2, "train.snapshot_every_minutes": 1e-6, "estimator.steps": 2}
    )
    train(recipe, tmp_path / "run")
    options = TrajectoryOptions(run=str(tmp_path / "run"), data=str(tiny_dataset.path), split="test", limit=2)
    result = evaluate_trajectory(options)
    rows = result["rows"]
    assert result["files"][0].endswith("trajectory.md") and "| epoch | minutes |" in result["table"]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[1]["training_minutes"] > rows[0]["training_minutes"]
    files = write_trajectory(rows, tmp_path / "trajectory", "lcs6")
    assert {f.name for f in files} == {"trajectory.md", "trajectory.csv", "trajectory.png"}
    with pytest.raises(UserError, match="no snapshots"):
        evaluate_trajectory(TrajectoryOptions(run=str(tmp_path), data=str(tiny_dataset.path)))


def test_reconstructions_of_colliding_ids_keep_both(tmp_path):
    ids = ["a/b", "a_b", "../../escaped"]
    crystals = [rock_salt(5.6 + 0.1 * k, id=id) for k, id in enumerate(ids)]
    evaluation = Evaluation({}, [{"id": c.id, "num_atoms": c.num_atoms} for c in crystals], crystals, crystals)
    out = tmp_path / "pairs"
    assert write_reconstructions(evaluation, out) == 3
    inputs = sorted(out.glob("*.input.cif"))
    assert len(inputs) == 3 and not list(tmp_path.glob("escaped*"))
    rows = (out / "structures.csv").read_text().splitlines()
    assert rows[0].endswith(",file") and {f"{row.split(',')[-1]}.input.cif" for row in rows[1:]} == {
        p.name for p in inputs
    }
    # a smaller reconstruction into the same folder, its one structure undecoded: only its input is left
    fewer = Evaluation({}, evaluation.rows[:1], crystals[:1], [None])
    assert write_reconstructions(fewer, out) == 1
    assert len(list(out.glob("*.input.cif"))) == 1
    assert not list(out.glob("*.decoded.cif")) and len((out / "structures.csv").read_text().splitlines()) == 2


def test_inputs_unlike_the_training_data_are_warned_about_once(trained_run, tiny_dataset, tmp_path, caplog):
    from conftest import zinc_blende

    from nesfgen.checkpoint import load_model, save_checkpoint
    from nesfgen.data.store import CrystalSet
    from nesfgen.decoder import training_atom_range, warn_outside_training

    trained = load_model(trained_run)
    assert trained.atoms_per_cell == training_atom_range(trained) == (2, 8)  # stored by training
    big = rock_salt(20.0, id="big-cell")  # a 20 Å cell: atoms far beyond the box the particles span
    supercell = CrystalSet.from_crystals([zinc_blende()]).subset([0])[0]
    many = type(supercell).create(
        supercell.lengths * [2, 2, 1],
        supercell.angles,
        atomic_numbers=list(supercell.atomic_numbers) * 4,
        frac_coords=[(f + [i, j, 0]) / [2, 2, 1] for i in (0, 1) for j in (0, 1) for f in supercell.frac_coords],
        id="32-atoms",
    )
    inputs = CrystalSet.from_crystals([zinc_blende(), big, many])
    with caplog.at_level("WARNING", logger="nesfgen.decoder"):
        assert warn_outside_training(trained, inputs) == ["big-cell", "32-atoms"]
        assert warn_outside_training(trained, CrystalSet.from_crystals([zinc_blende()])) == []
    (record,) = caplog.records
    message = record.getMessage()
    assert "2 of 3 inputs" in message and "2-8 atoms per cell" in message and "big-cell has 8 atoms" in message
    assert str(np.round(trained.box, 1).tolist()) in message

    # a checkpoint from before the range was stored: counted from its training split, found by name and hash
    state = read_checkpoint(trained_run / "best.pt")
    del state["atoms_per_cell"]
    save_checkpoint(tmp_path / "old.pt", state)
    assert training_atom_range(load_model(tmp_path / "old.pt")) == (2, 8)


def test_evaluate_warns_on_a_dataset_unlike_the_training_data(trained_run, tmp_path, caplog):
    other = write_dataset(tmp_path / "big", {"test": [rock_salt(20.0, id="huge")]}, name="big")
    with caplog.at_level("WARNING", logger="nesfgen.decoder"):
        evaluate(EvaluateOptions(checkpoint=str(trained_run), data=str(other.path), split="test"))
    assert any("1 of 1 inputs lie outside the training data" in r.getMessage() for r in caplog.records)


def test_a_negative_limit_is_refused_not_read_as_every_structure():
    with pytest.raises(UserError, match="limit must be 0"):
        EvaluateOptions(limit=-3)
