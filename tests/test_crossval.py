import csv
import json

import pytest
from conftest import recording, tiny_recipe

from nesfgen.crossval import cross_validate, crossval_markdown, parse_folds
from nesfgen.data.store import write_dataset
from nesfgen.errors import UserError
from nesfgen.metrics import PAPER_METRICS, pool_over_atoms


def read_rows(path):
    """structures.csv back into typed rows (the columns pooling needs)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["empty"] = row["empty"] == "True"
        row["atom_count_wrong"] = row["atom_count_wrong"] == "True"
        for name in ("num_atoms", "num_detected"):
            row[name] = int(row[name])
        for name in PAPER_METRICS[1:]:
            row[name] = float(row[name])
    return rows


def test_parse_folds():
    assert parse_folds("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_folds("3,0-1,1") == [0, 1, 3]
    with pytest.raises(UserError):
        parse_folds("a-b")


def test_cross_validation_trains_evaluates_and_pools(tiny_dataset, tmp_path, monkeypatch, cli):
    monkeypatch.setenv("NESFGEN_DATA_DIR", str(tmp_path / "data"))
    crystals = list(tiny_dataset.load("train"))
    for fold in range(2):
        test = crystals[fold * 3 : fold * 3 + 3]
        rest = [c for c in crystals if c not in test]
        write_dataset(
            tmp_path / "data" / f"tinycv-fold{fold}",
            {"train": rest[:-3], "val": rest[-3:], "test": test},
            name=f"tinycv-fold{fold}",
        )
    recipe = tiny_recipe(
        tiny_dataset, **{"data.name": "tinycv", "data.fold": 0, "train.epochs": 1, "estimator.steps": 2}
    )
    bars, decoding = recording()
    result = cross_validate(recipe, [0, 1], tmp_path / "cv", decoding=decoding)
    assert result["pooled"]["num_structures"] == 6
    # one labelled bar per fold's evaluation, counting its 3 decoded structures to the end
    assert [label for label, _ in bars] == ["fold-0 test", "fold-1 test"]
    assert all(counts and counts[-1] == (3, 3) for _, counts in bars)
    assert result["runs"] == 2
    # the paper's YBCO-like column pools every fold's atoms: sums over both folds' structures, not a mean of folds
    rows = [
        row for fold in (0, 1) for row in read_rows(tmp_path / "cv" / f"fold-{fold}" / "eval-test" / "structures.csv")
    ]
    actual_atoms = sum(row["num_atoms"] for row in rows)
    missed = sum(row["num_atoms"] * (100.0 if row["empty"] else row["species_error_actual_pct"]) for row in rows)
    assert result["pooled"]["reference"]["species_error_actual_pct"] == pytest.approx(missed / actual_atoms)
    assert result["pooled"]["reference"] == pytest.approx(pool_over_atoms(rows), nan_ok=True)
    assert result["std"]["reference"].keys() == set(PAPER_METRICS)  # the fold-to-fold spread
    report = crossval_markdown(result, "tinycv")
    assert "(6 test structures pooled)" in report and "Fold to fold" in report and "pooled over atoms" in report
    assert (tmp_path / "cv" / "fold-1" / "eval-test" / "evaluation.json").is_file()
    folds = [json.loads((tmp_path / "cv" / f"fold-{k}" / "eval-test" / "evaluation.json").read_text()) for k in (0, 1)]
    assert [(f["dataset"], f["num_structures"]) for f in folds] == [("tinycv-fold0", 3), ("tinycv-fold1", 3)]
    # pooled over the 6 structures: with 3 a fold, the mean of the two folds' means
    assert result["pooled"]["length_error"] == pytest.approx((folds[0]["length_error"] + folds[1]["length_error"]) / 2)
    # running again resumes the finished folds instead of training anew (training is deterministic, so equal
    # figures alone would not show it: the checkpoints must stay untouched)
    checkpoints = sorted((tmp_path / "cv").glob("fold-*/*.pt"))
    written = [p.stat().st_mtime_ns for p in checkpoints]
    again = cross_validate(recipe, [0, 1], tmp_path / "cv")
    assert again["pooled"] == result["pooled"]
    assert len(checkpoints) >= 2 and [p.stat().st_mtime_ns for p in checkpoints] == written
    with pytest.raises(UserError, match="tinycv-fold2"):  # refused before fold 0 is touched
        cross_validate(recipe, [0, 2], tmp_path / "more")
    assert not (tmp_path / "more").exists()
    one = cross_validate(recipe, [0], tmp_path / "cv")  # one finished fold: pooled figures only, no "± 0" spread
    assert one["std"] is None and "Fold to fold" not in crossval_markdown(one, "tinycv")
    # the validation splits with fitted latents: each bar counts the fit's 2 steps, then the 3 decoded structures
    bars, decoding = recording()
    cross_validate(recipe, [0, 1], tmp_path / "cv", train_folds=False, split="val", fit_steps=2, decoding=decoding)
    assert [label for label, _ in bars] == ["fold-0 val-fit2", "fold-1 val-fit2"]
    assert all(counts[:2] == [(1, 2), (2, 2)] and counts[-1] == (3, 3) for _, counts in bars)
    # the command line: the same recipe as key=value words, the finished folds resumed, cv.md and cv.json written
    from conftest import TINY_MODEL

    words = {**TINY_MODEL, "data.name": "tinycv", "train.batch_size": 8, "train.epochs": 1, "estimator.steps": 2}
    command = cli(
        "cv",
        "recipe=quickstart",
        *(f"{k}={v}" for k, v in words.items()),
        "--folds",
        "0,1",
        f"out={tmp_path / 'cv'}",
        "--json",
    )
    assert command.returncode == 0, command.stderr
    assert json.loads(command.stdout)["pooled"] == json.loads(json.dumps(result["pooled"], default=str))
    assert json.loads((tmp_path / "cv" / "cv.json").read_text())["pooled"]["num_structures"] == 6
    assert "pooled over atoms" in (tmp_path / "cv" / "cv.md").read_text()
    # the validation splits a recipe is chosen on: reported beside the test splits' report, not over it
    tested = (tmp_path / "cv" / "cv.md").read_text()
    command = cli("cv", "recipe=quickstart", *(f"{k}={v}" for k, v in words.items()), "--folds", "0,1",
                  f"out={tmp_path / 'cv'}", "split=val", "--json")  # fmt: skip
    assert command.returncode == 0, command.stderr
    assert json.loads(command.stdout)["split"] == "val"
    assert "6 val structures pooled" in (tmp_path / "cv" / "cv-val.md").read_text()
    assert (tmp_path / "cv" / "cv-val.json").is_file() and (tmp_path / "cv" / "cv.md").read_text() == tested
    wrong = cli("cv", "recipe=quickstart", *(f"{k}={v}" for k, v in words.items()), f"out={tmp_path / 'cv'}",
                "split=train")  # fmt: skip
    assert wrong.returncode == 2 and "split=train: expected val or test" in wrong.stderr
    # latents fitted to their structures: a report of their own beside the one-pass ones, left as they were
    command = cli("cv", "recipe=quickstart", *(f"{k}={v}" for k, v in words.items()), "--folds", "0,1",
                  f"out={tmp_path / 'cv'}", "split=val", "fit_steps=2", "--json")  # fmt: skip
    assert command.returncode == 0, command.stderr
    assert json.loads(command.stdout)["fit_steps"] == 2
    assert "6 val structures pooled, latents fitted for 2 steps" in (tmp_path / "cv" / "cv-val-fit2.md").read_text()
    assert (tmp_path / "cv" / "cv.md").read_text() == tested
    wrong = cli("cv", "recipe=quickstart", *(f"{k}={v}" for k, v in words.items()), f"out={tmp_path / 'cv'}",
                "fit_steps=-1")  # fmt: skip
    assert wrong.returncode == 2 and "fit_steps must be 0" in wrong.stderr
