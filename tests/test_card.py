import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe

from nesfgen.card import PackageOptions, package_model, train_command
from nesfgen.checkpoint import checkpoint_digest, load_model, read_checkpoint, save_checkpoint
from nesfgen.config import load_recipe
from nesfgen.errors import UserError
from nesfgen.evaluate import EvaluateOptions, evaluate, markdown_table
from nesfgen.train import refit_best, train


def test_package_writes_a_slim_checkpoint_and_a_card_that_evaluate_reproduces(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 1, "estimator.steps": 3, "train.lattice_refit_epochs": 2}), run)
    assert json.loads((run / "machine.json").read_text())["cores"] >= 1
    (run / "machine.json").unlink()  # a run from before machine.json: the packaging machine is described
    packaged = package_model(
        PackageOptions(run=str(run), name="tiny-model", split="test", out=str(tmp_path / "models"))
    )
    state = read_checkpoint(packaged.checkpoint)
    assert "optimizer" not in state and "history" not in state
    assert state["training"]["epochs_run"] == 1 and state["machine"]["torch"]
    assert packaged.checkpoint.stat().st_size < (run / "best.pt").stat().st_size
    matrices = {name: w.dtype for name, w in state["model"].items() if w.ndim >= 2}
    assert {dtype for name, dtype in matrices.items() if not name.startswith("lattice_head.")} == {torch.float16}
    assert {dtype for name, dtype in matrices.items() if name.startswith("lattice_head.")} == {torch.float32}
    rebuilt = load_model(packaged.checkpoint).model  # rebuilds from the slim file alone, in float32
    assert {p.dtype for p in rebuilt.parameters()} == {torch.float32}
    card = packaged.card.read_text()
    assert "nesfgen package run=" in card and "| error in number of atoms [%] |" in card
    assert "Lattice heads refit (freshly initialised) on the frozen encoder's eval-mode latents: 2 epochs" in card
    again = evaluate(EvaluateOptions(checkpoint=str(packaged.checkpoint), data=str(tiny_dataset.path), split="test"))
    assert markdown_table(again.summary) in card  # every metric as evaluated from the written file ("n/a" for NaN)
    assert f"StructureMatcher match rate {again.summary['cdvae_match_rate_pct']:.2f} %" in card
    pooled = again.summary["reference"]["species_error_actual_pct"]
    assert "pooled over atoms (reference)" in card and f"| {pooled:.4f} |" in card
    assert (run / "eval-tiny-model" / "evaluation.md").is_file()


def test_a_shipped_model_refit_again_is_repackaged_with_its_training_kept(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    recipe = tiny_recipe(tiny_dataset, **{"train.epochs": 1, "estimator.steps": 3, "train.lattice_refit_epochs": 2})
    train(recipe, run)
    first = read_checkpoint(
        package_model(PackageOptions(run=str(run), name="tiny", split="test", out=str(tmp_path / "models"))).checkpoint
    )
    again_dir = tmp_path / "again"
    again_dir.mkdir()
    shutil.copy(tmp_path / "models" / "tiny.pt", again_dir / "best.pt")
    refit_best(again_dir, 5, 1e-3, init="fresh")
    packaged = package_model(
        PackageOptions(run=str(again_dir), name="tiny", split="test", out=str(tmp_path / "models2"))
    )
    state = read_checkpoint(packaged.checkpoint)
    assert state["training"]["epochs_run"] == first["training"]["epochs_run"] == 1
    assert state["training"]["training_minutes"] == first["training"]["training_minutes"]
    assert state["machine"] == first["machine"]  # where it was trained, not where it was repackaged
    assert state["training"]["lattice_refit"]["epochs"] == 5 and state["recipe"]["train"]["lattice_refit_epochs"] == 5
    assert (
        "refit (freshly initialised) on the frozen encoder's eval-mode latents: 5 epochs" in packaged.card.read_text()
    )


def test_the_card_gives_the_whole_run_not_only_the_kept_epoch(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 2, "estimator.steps": 3}), run)
    kept = read_checkpoint(run / "best.pt")
    kept.pop("path")
    save_checkpoint(run / "best.pt", {**kept, "epoch": 1, "seconds": 0.0})  # as if epoch 1 had been kept
    packaged = package_model(PackageOptions(run=str(run), name="tiny", split="test", out=str(tmp_path / "models")))
    assert read_checkpoint(packaged.checkpoint)["training"]["epochs_run"] == 2
    assert " for 2 epochs (" in packaged.card.read_text()


def test_the_cards_command_names_every_setting_the_run_changed_but_how_it_ran():
    recipe = load_recipe("fast-lcs6")
    assert train_command(recipe, Path("runs/a")) == "nesfgen train recipe=fast-lcs6 out=runs/a"
    seeded = replace(recipe, train=replace(recipe.train, seed=1))
    assert train_command(seeded, Path("runs/b")) == "nesfgen train recipe=fast-lcs6 train.seed=1 out=runs/b"
    elsewhere = replace(
        seeded,
        data=replace(recipe.data, name="lcs6-minus-icsg3d"),
        model=replace(recipe.model, position_widths=(64, 64)),
    )
    limited = replace(elsewhere, train=replace(elsewhere.train, threads=1, time_limit_minutes=240.0, compile=False))
    assert train_command(limited, Path("runs/c")) == (
        "nesfgen train recipe=fast-lcs6 data.name=lcs6-minus-icsg3d model.position_widths=64,64 train.seed=1 "
        "train.compile=false out=runs/c"  # how it ran (threads, time limit) left out
    )


def test_repackaging_the_same_weights_keeps_the_shipped_file_and_its_digest(tiny_dataset, tmp_path):
    run, models = tmp_path / "run", tmp_path / "models"
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 1, "estimator.steps": 3}), run)
    with pytest.raises(UserError, match="has no split 'nosuch'"):  # before the file is written, not after
        package_model(PackageOptions(run=str(run), name="tiny", split="nosuch", out=str(models)))
    assert not models.exists()
    first = package_model(PackageOptions(run=str(run), name="tiny", split="test", out=str(models)))
    digest, card = checkpoint_digest(first.checkpoint), first.card.read_text()
    last = read_checkpoint(run / "last.pt")
    last.pop("path")
    save_checkpoint(run / "last.pt", {**last, "seconds": last["seconds"] + 600.0})  # retrained: same weights, new clock
    again = package_model(PackageOptions(run=str(run), name="tiny", split="test", out=str(models)))
    assert checkpoint_digest(again.checkpoint) == digest  # runs fine-tuned from it still start from this file
    assert again.card.read_text() == card  # the card tells the kept file's story
    best = read_checkpoint(run / "best.pt")
    best.pop("path")
    name = next(key for key, weight in best["model"].items() if weight.ndim >= 2)
    best["model"][name] = best["model"][name] + 1.0
    save_checkpoint(run / "best.pt", best)
    with pytest.raises(UserError, match="holds another model .*force=true"):  # a shipped model is not replaced unasked
        package_model(PackageOptions(run=str(run), name="tiny", split="test", out=str(models)))
    assert checkpoint_digest(first.checkpoint) == digest
    assert (
        checkpoint_digest(
            package_model(
                PackageOptions(run=str(run), name="tiny", split="test", out=str(models), force=True)
            ).checkpoint
        )
        != digest
    )


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "model.pt"])
def test_a_package_name_that_is_not_a_file_name_is_refused(name):
    with pytest.raises(UserError, match="expected a model name"):
        PackageOptions(run="runs/x", name=name)
