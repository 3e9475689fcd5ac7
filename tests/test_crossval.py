import json

import pytest
from conftest import tiny_recipe

from nesfgen.crossval import cross_validate, parse_folds
from nesfgen.data.store import write_dataset
from nesfgen.errors import UserError


def test_parse_folds():
    assert parse_folds("0-3,7") == [0, 1, 2, 3, 7]
    with pytest.raises(UserError):
        parse_folds("a-b")


def test_cross_validation_trains_evaluates_and_pools(tiny_dataset, tmp_path, monkeypatch):
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
    result = cross_validate(recipe, [0, 1], tmp_path / "cv")
    assert result["pooled"]["num_structures"] == 6
    assert result["runs"] == 2
    assert (tmp_path / "cv" / "fold-1" / "eval-test" / "evaluation.json").is_file()
    folds = [json.loads((tmp_path / "cv" / f"fold-{k}" / "eval-test" / "evaluation.json").read_text()) for k in (0, 1)]
    assert [(f["dataset"], f["num_structures"]) for f in folds] == [("tinycv-fold0", 3), ("tinycv-fold1", 3)]
    # pooled over the 6 structures: with 3 a fold, the mean of the two folds' means
    assert result["pooled"]["length_error"] == pytest.approx((folds[0]["length_error"] + folds[1]["length_error"]) / 2)
    # running again resumes the finished folds instead of training anew
    again = cross_validate(recipe, [0, 1], tmp_path / "cv")
    assert again["pooled"] == result["pooled"]
