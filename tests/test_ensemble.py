from dataclasses import replace

import pytest
import torch
from conftest import tiny_recipe

from nesfgen.checkpoint import _load_ensemble, checkpoint_digest, ensemble_members, load_model
from nesfgen.crossval import (
    CrossValidationOptions,
    check_member_seed,
    cross_validate,
    crossval_markdown,
    member_recipe,
)
from nesfgen.data.store import write_dataset
from nesfgen.ensemble import NeSFEnsemble
from nesfgen.errors import UserError
from nesfgen.evaluate import EvaluateOptions, evaluate, evaluate_runs
from nesfgen.generate import SampleOptions, sample_structures
from nesfgen.train import train


@pytest.fixture
def two_runs(tiny_dataset, tmp_path):
    """Two one-epoch runs of the tiny recipe with seeds 0 and 1."""
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"seed-{seed}"
        train(tiny_recipe(tiny_dataset, **{"train.epochs": 1, "train.seed": seed, "estimator.steps": 3}), run)
        runs.append(run)
    return runs


def test_the_ensemble_averages_its_members_each_on_its_own_latent(two_runs):
    a, b = (load_model(run).model for run in two_runs)
    ensemble = load_model(f"{two_runs[0]}+{two_runs[1]}").model
    assert isinstance(ensemble, NeSFEnsemble) and ensemble.config.latent_size == 2 * a.config.latent_size
    generator = torch.Generator().manual_seed(0)
    za, zb = torch.randn(2, a.config.latent_size, generator=generator), torch.randn(2, b.config.latent_size)
    z, points = torch.cat([za, zb], 1), torch.rand(2, 7, 3, generator=generator) * 5
    with torch.no_grad():
        assert torch.allclose(ensemble.position(points, z), (a.position(points, za) + b.position(points, zb)) / 2)
        log_probs = (a.species(points, za).log_softmax(-1) + b.species(points, zb).log_softmax(-1)) / 2
        assert torch.allclose(ensemble.species(points, z), log_probs, atol=1e-6)
        (la, aa), (lb, ab), (le, ae) = a.lattice(za), b.lattice(zb), ensemble.lattice(z)
        assert torch.allclose(le, (la + lb) / 2) and torch.allclose(ae, (aa + ab) / 2)


def test_one_model_twice_decodes_as_the_model(two_runs, tmp_path):
    run = two_runs[0]
    copy = tmp_path / "copy"  # the same weights in another file, as a rerun of a deterministic training gives
    copy.mkdir()
    state = torch.load(run / "best.pt", weights_only=True)
    state["epoch"] = -1
    torch.save(state, copy / "best.pt")
    alone = evaluate(EvaluateOptions(checkpoint=str(run), split="val"))
    twice = evaluate(EvaluateOptions(checkpoint=f"{run}+{copy}", split="val"))
    assert sum(row["num_detected"] for row in alone.rows) > 0
    assert twice.summary["reference"] == pytest.approx(alone.summary["reference"], nan_ok=True)
    assert [row["num_detected"] for row in twice.rows] == [row["num_detected"] for row in alone.rows]
    # written beside the first member, named as the ensemble's, unless out= is given
    summary = evaluate_runs(EvaluateOptions(checkpoint=f"{run}+{two_runs[1]}", split="val"))
    assert all(path.startswith(str(run / "eval-tiny-val-ensemble-with-seed-1")) for path in summary["report_files"])


def test_an_ensemble_is_refused_where_its_members_disagree(two_runs):
    assert ensemble_members("runs/a+runs/b") == ["runs/a", "runs/b"]
    with pytest.raises(UserError, match="joined by \\+"):
        ensemble_members("runs/a+")
    with pytest.raises(UserError, match="not found"):
        load_model(f"{two_runs[0]}+{two_runs[0].parent / 'missing'}")
    with pytest.raises(UserError, match="is the same file as"):
        load_model(f"{two_runs[0]}+{two_runs[0] / 'best.pt'}")
    with pytest.raises(UserError, match="names an ensemble"):  # where one checkpoint is read, e.g. a prior's digest
        checkpoint_digest(f"{two_runs[0]}+{two_runs[1]}")
    member = load_model(two_runs[0])
    for change, reason in (
        ({"species_table": member.species_table[::-1]}, "species table"),
        ({"box": member.box + 1.0}, "box"),
        ({"dataset_hash": "another"}, "another dataset"),
    ):
        with pytest.raises(UserError, match=reason):
            _load_ensemble([member, replace(member, **change)])


def one_fold_recipe(tiny_dataset, tmp_path, monkeypatch):
    """A one-epoch recipe of fold 0 of the tiny dataset, written to the data directory as ``tinycv-fold0``."""
    monkeypatch.setenv("NESFGEN_DATA_DIR", str(tmp_path / "data"))
    crystals = list(tiny_dataset.load("train"))
    write_dataset(
        tmp_path / "data" / "tinycv-fold0",
        {"train": crystals[3:-3], "val": crystals[-3:], "test": crystals[:3]},
        name="tinycv-fold0",
    )
    recipe = tiny_recipe(tiny_dataset, **{"data.name": "tinycv", "train.epochs": 1, "estimator.steps": 2})
    return recipe


def test_cross_validation_trains_and_decodes_members_as_one_field(tiny_dataset, tmp_path, monkeypatch, cli):
    recipe = one_fold_recipe(tiny_dataset, tmp_path, monkeypatch)
    result = cross_validate(recipe, [0], tmp_path / "cv", members=2)
    assert result["members"] == 2 and result["pooled"]["num_structures"] == 3
    configs = [(tmp_path / "cv" / name / "config.toml").read_text() for name in ("fold-0", "fold-0-member-1")]
    assert "seed = 0" in configs[0] and "seed = 1" in configs[1]
    assert (tmp_path / "cv" / "fold-0" / "eval-test-ensemble2" / "evaluation.json").is_file()
    assert "2 runs a fold decoded as one field" in crossval_markdown(result, "tinycv")
    with pytest.raises(UserError, match="members=0"):
        cross_validate(recipe, [0], tmp_path / "cv", members=0)
    with pytest.raises(UserError, match="holds a run of seed 0, but this member is seed 1"):
        check_member_seed(tmp_path / "cv" / "fold-0", member_recipe(recipe, 1))  # a seed-0 run linked as member 1
    for members, out, reason in ((9, "cv", "members=9: expected 1"), (2, "cv+ema", "may not hold '\\+'")):
        with pytest.raises(UserError, match=reason):  # before any training
            CrossValidationOptions(recipe=recipe, folds=[0], out=tmp_path / out, members=members)
    refused = cli("cv", "recipe=quickstart", "members=x", f"out={tmp_path / 'cv'}")
    assert refused.returncode == 2 and "members" in refused.stderr and "Traceback" not in refused.stderr


def test_cross_validation_trains_a_partner_recipe_beside_the_recipe_and_decodes_both_as_one_field(
    tiny_dataset, tmp_path, monkeypatch, cli
):
    recipe = one_fold_recipe(tiny_dataset, tmp_path, monkeypatch)
    partner = replace(recipe, name="tiny-batch2", train=replace(recipe.train, batch_size=2, seed=3))
    result = cross_validate(recipe, [0], tmp_path / "cv", partners=(partner,), split="val")
    assert result["members"] == 2 and result["partners"] == ["tiny-batch2"]
    configs = [(tmp_path / "cv" / name / "config.toml").read_text() for name in ("fold-0", "fold-0-with-tiny-batch2")]
    assert "batch_size = 2" not in configs[0] and "batch_size = 2" in configs[1]
    assert "seed = 0" in configs[0] and "seed = 3" in configs[1]  # a partner trains at its own seed
    assert (tmp_path / "cv" / "fold-0" / "eval-val-ensemble-with-tiny-batch2" / "evaluation.json").is_file()
    assert f"{recipe.name} with tiny-batch2 a fold decoded as one field" in crossval_markdown(result, "tinycv")
    other_data = replace(partner, data=replace(recipe.data, name="builtin"))
    for partners, members, reason in (
        ((replace(recipe, name="copy"),), 1, "trains exactly what"),
        ((partner, partner), 1, "named twice"),
        ((replace(partner, name=recipe.name),), 1, "named twice, or the recipe itself"),
        ((replace(partner, name="a/b"),), 1, "names its run folders"),
        ((other_data,), 1, "a partner trains on the same folds"),
        ((replace(partner, train=replace(partner.train, init_from="nesf-lcs6")),), 1, "train.init_from = 'nesf-lcs6'"),
        ((partner,), 2, "members= and partners= both given"),
    ):
        with pytest.raises(UserError, match=reason):
            CrossValidationOptions(recipe=recipe, folds=[0], out=tmp_path / "other", members=members, partners=partners)
        with pytest.raises(UserError, match=reason):  # refused before any training
            cross_validate(recipe, [0], tmp_path / "other", members=members, partners=partners)
        assert not (tmp_path / "other").exists()
    refused = cli("cv", "recipe=quickstart", "partners=quickstart", f"out={tmp_path / 'cv2'}")
    assert refused.returncode == 2 and "partners=quickstart" in refused.stderr and "Traceback" not in refused.stderr
    missing = cli("cv", "recipe=quickstart", "partners=no-such-recipe", f"out={tmp_path / 'cv2'}")
    assert missing.returncode == 2 and "no-such-recipe" in missing.stderr and "Traceback" not in missing.stderr


def test_an_ensemble_samples_around_a_structure_in_its_joined_latent(two_runs):
    ensemble = f"{two_runs[0]}+{two_runs[1]}"
    assert load_model(ensemble).recipe.model.latent_size == 2 * load_model(two_runs[0]).recipe.model.latent_size
    around = sample_structures(SampleOptions(checkpoint=ensemble, n=2, near="NaCl", estimator={"estimator.steps": "3"}))
    assert around.summary["generator"] == "near" and around.summary["n"] == 2
