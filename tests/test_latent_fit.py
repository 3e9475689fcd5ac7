"""Latents fitted to their own structures: a better fit, the model untouched, and evaluate's fit_steps option."""

import json

import pytest
import torch
from conftest import tiny_recipe

from nesfgen.checkpoint import load_model
from nesfgen.decoder import encode
from nesfgen.errors import UserError
from nesfgen.evaluate import EvaluateOptions, evaluate, evaluate_runs
from nesfgen.latent_fit import fit_latents
from nesfgen.sampling import QuerySampler, TensorSet
from nesfgen.train import loss_terms, train


@pytest.fixture
def tiny_run(tiny_dataset, tmp_path):
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 1}), tmp_path / "run")
    return tmp_path / "run"


def test_fitted_latents_fit_their_structures_better_and_leave_the_model_alone(tiny_dataset, tiny_run):
    trained = load_model(tiny_run)
    crystals = tiny_dataset.load("test")
    before = {k: v.clone() for k, v in trained.model.state_dict().items()}
    z = encode(trained, crystals)
    fitted = fit_latents(trained, crystals, z, steps=30, lr=0.05)
    atoms = TensorSet(crystals, trained.species_table).batch(torch.arange(len(crystals)))
    queries = QuerySampler(trained.recipe.sampling, trained.box).sample(atoms, torch.Generator().manual_seed(7))
    weights = trained.recipe.loss

    def loss(latents):  # the recipe's weighted loss on queries the fit never drew
        with torch.no_grad():
            terms = loss_terms(trained.model.decode(latents, queries), atoms, queries)
        return float(sum(getattr(weights, name) * value for name, value in terms.items()))

    assert fitted.shape == z.shape and not fitted.requires_grad
    assert loss(fitted) < loss(z)
    assert all(torch.equal(before[k], v) for k, v in trained.model.state_dict().items())
    assert all(p.requires_grad for p in trained.model.parameters()) and not trained.model.training
    steps = []
    again = fit_latents(
        trained, crystals, z, steps=30, lr=0.05, progress=lambda done, total: steps.append((done, total))
    )
    assert torch.equal(fitted, again), "deterministic given the seed"
    assert steps[0] == (1, 30) and steps[-1] == (30, 30)


def test_a_split_is_fitted_in_chunks_each_as_if_alone(tiny_dataset, tiny_run):
    trained = load_model(tiny_run)
    crystals = tiny_dataset.load("test")
    assert len(crystals) >= 4
    z = encode(trained, crystals)
    steps = []
    chunked = fit_latents(trained, crystals, z, steps=5, chunk=2, progress=lambda done, total: steps.append(done))
    total = 5 * ((len(crystals) + 1) // 2)
    assert steps == list(range(1, total + 1)), "one bar over every chunk's steps"
    # the second chunk is fitted exactly as those two structures alone with the seed after the first chunk's
    assert torch.equal(chunked[2:4], fit_latents(trained, crystals.subset([2, 3]), z[2:4], steps=5, seed=1))
    assert torch.equal(fit_latents(trained, crystals, z, steps=5), fit_latents(trained, crystals, z, steps=5, chunk=99))


def test_evaluate_fits_the_latents_when_asked_and_says_so(tiny_dataset, tiny_run, tmp_path):
    plain = evaluate(EvaluateOptions(checkpoint=str(tiny_run), data=str(tiny_dataset.path)))
    summary = evaluate_runs(EvaluateOptions(checkpoint=str(tiny_run), data=str(tiny_dataset.path), fit_steps=5))
    assert plain.summary["fit_steps"] == 0 and plain.summary["fit_lr"] is None
    assert summary["fit_steps"] == 5 and summary["fit_lr"] == 0.02
    folder = tiny_run / f"eval-{summary['dataset']}-test-fit5"  # beside, not over, the plain evaluation's report
    assert str(folder / "evaluation.md") in summary["report_files"]
    assert (
        "Latents fitted to each structure's own field targets (5 Adam steps" in (folder / "evaluation.md").read_text()
    )
    assert json.loads((folder / "evaluation.json").read_text())["fit_steps"] == 5


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"fit_steps": -1}, "fit_steps must be 0"),
        ({"fit_steps": 5, "fit_lr": 0.0}, "fit_lr must be a learning rate above 0"),
        ({"fit_steps": 5, "field": "exact"}, "field=exact has none to fit"),
    ],
)
def test_bad_fit_options_are_refused_with_the_option_named(given, says):
    with pytest.raises(UserError, match=says):
        EvaluateOptions(**given)
