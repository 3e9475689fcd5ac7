import json

from conftest import tiny_recipe

from nesfgen.card import package_model
from nesfgen.checkpoint import load_model, read_checkpoint
from nesfgen.evaluate import EvaluateOptions, evaluate, markdown_table
from nesfgen.train import train


def test_package_writes_a_slim_checkpoint_and_a_card_that_evaluate_reproduces(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 1, "estimator.steps": 3, "train.lattice_refit_epochs": 2}), run)
    assert json.loads((run / "machine.json").read_text())["cores"] >= 1
    (run / "machine.json").unlink()  # a run from before machine.json: the packaging machine is described
    packaged = package_model(run, "tiny-model", split="test", out_dir=tmp_path / "models")
    state = read_checkpoint(packaged.checkpoint)
    assert "optimizer" not in state and "history" not in state
    assert state["training"]["epochs_run"] == 1 and state["machine"]["torch"]
    assert packaged.checkpoint.stat().st_size < (run / "best.pt").stat().st_size
    load_model(packaged.checkpoint)  # rebuilds from the slim file alone
    card = packaged.card.read_text()
    assert "nesfgen package run=" in card and "| error in number of atoms [%] |" in card
    assert "Lattice heads refit on the frozen encoder's eval-mode latents: 2 epochs" in card
    again = evaluate(EvaluateOptions(checkpoint=str(packaged.checkpoint), data=str(tiny_dataset.path), split="test"))
    assert markdown_table(again.summary) in card  # every metric as evaluated from the written file ("n/a" for NaN)
    assert f"StructureMatcher match rate {again.summary['cdvae_match_rate_pct']:.2f} %" in card
    pooled = again.summary["reference"]["species_error_actual_pct"]
    assert "pooled over atoms (reference)" in card and f"| {pooled:.4f} |" in card
    assert (run / "eval-tiny-model" / "evaluation.md").is_file()
