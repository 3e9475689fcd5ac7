import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, cesium_chloride, perovskite, rock_salt, tiny_recipe, zinc_blende

from nesfgen import generate
from nesfgen.crystal import Crystal
from nesfgen.data.store import CrystalSet
from nesfgen.errors import UserError
from nesfgen.generate import (
    DEFAULT_VAE_MODEL,
    charge_balanced_states,
    composition_check,
    compositionally_valid,
    measure,
    min_distance,
    novel_flags,
    sample_latents,
    sample_structures,
    structurally_valid,
    unique_flags,
    wasserstein_distances,
    write_samples,
)
from nesfgen.train import train


def cubic(a, numbers, frac, id="x"):
    return Crystal.create([a] * 3, [90] * 3, atomic_numbers=numbers, frac_coords=frac, id=id)


def test_structural_validity_counts_periodic_images():
    assert structurally_valid(rock_salt()) and min_distance(rock_salt()) == pytest.approx(5.64 / 2)
    too_close = cubic(8.0, [11, 17], [[0.1, 0.1, 0.1], [0.1, 0.1, 0.14]])  # 0.32 Å apart
    assert not structurally_valid(too_close) and min_distance(too_close) == pytest.approx(0.32)
    across_the_face = cubic(10.0, [11, 17], [[0.01, 0.5, 0.5], [0.99, 0.5, 0.5]])  # 0.2 Å through the boundary
    assert not structurally_valid(across_the_face)
    own_image = cubic(0.4, [26], [[0, 0, 0]])  # an atom 0.4 Å from its own periodic image
    assert not structurally_valid(own_image)
    lonely = cubic(9.0, [26], [[0, 0, 0]])
    assert structurally_valid(lonely) and math.isinf(min_distance(lonely))


def test_compositional_validity_needs_a_charge_balanced_assignment():
    assert charge_balanced_states({"Fe": 2, "O": 3}) == {"Fe": 3, "O": -2}
    assert charge_balanced_states({"Fe": 3, "O": 4}) is None  # mixed valence: one state per element only
    assert charge_balanced_states({"Na": 1, "O": 1}) is None
    assert composition_check({"Zn": 4, "S": 4}) == (True, "Zn+2 S-2")
    assert composition_check({"Cu": 3, "Au": 1}) == (True, "alloy")
    assert composition_check({"Si": 8}) == (True, "element")
    assert compositionally_valid(perovskite()) and compositionally_valid(zinc_blende())
    sodium_oxide_1_1 = cubic(5.0, [11, 8], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert not compositionally_valid(sodium_oxide_1_1)


def test_uniqueness_and_novelty_use_structure_matching():
    samples = [rock_salt(), rock_salt(5.75, id="bigger"), zinc_blende(), rock_salt(id="again"), cesium_chloride()]
    assert unique_flags(samples) == [True, False, True, False, True]
    training = CrystalSet.from_crystals([rock_salt(5.5), perovskite()])
    # NaCl in the CsCl structure is not the training set's rock salt: same formula, another structure
    cscl_type_nacl = cubic(3.3, [11, 17], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert novel_flags([rock_salt(), zinc_blende(), cscl_type_nacl], training) == [False, True, True]


def test_measure_summarises_rates_over_the_right_sets():
    sodium_oxide_1_1 = cubic(5.0, [11, 8], [[0, 0, 0], [0.5, 0.5, 0.5]])
    too_close = cubic(8.0, [11, 17], [[0.1, 0.1, 0.1], [0.1, 0.1, 0.14]])
    crystals = [rock_salt(), None, rock_salt(id="twin"), sodium_oxide_1_1, too_close]
    rows, summary = measure(crystals, CrystalSet.from_crystals([rock_salt(5.5)]))
    assert summary["decoded"] == 4
    assert summary["structural_validity_pct"] == pytest.approx(60.0)  # of all 5 samples
    assert summary["compositional_validity_pct"] == pytest.approx(60.0)
    assert summary["validity_pct"] == pytest.approx(40.0)
    assert summary["unique"] == 3 and summary["uniqueness_pct"] == pytest.approx(75.0)
    assert summary["novel"] == 2 and summary["novelty_pct"] == pytest.approx(100 * 2 / 3)
    assert summary["space_groups"]["Fm-3m (225)"] == 2
    assert summary["wasserstein"]["num_atoms"] == pytest.approx(0.0)  # the valid ones are two 8-atom rock salts
    assert [row["decoded"] for row in rows] == [True, False, True, True, True]
    assert rows[0]["oxidation_states"] == "Na+1 Cl-1" and rows[3]["oxidation_states"] == ""
    _, without_reference = measure(crystals, None)
    assert without_reference["novelty_pct"] is None and without_reference["wasserstein"] is None


def test_wasserstein_distances():
    reference = {"num_atoms": np.array([2.0, 4.0]), "density": np.array([3.0]), "num_elements": np.array([2.0])}
    samples = [
        {"num_atoms": 3.0, "density": 3.0, "num_elements": 1.0},
        {"num_atoms": 5.0, "density": 3.0, "num_elements": 1.0},
    ]
    assert wasserstein_distances(samples, reference) == pytest.approx(
        {"num_atoms": 1.0, "density": 0.0, "num_elements": 1.0}
    )
    assert wasserstein_distances([], reference) == dict.fromkeys(reference)


def test_latents_follow_seed_temperature_and_centre():
    a, b = sample_latents(5, 4, seed=1), sample_latents(5, 4, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, sample_latents(5, 4, seed=2))
    assert torch.allclose(sample_latents(5, 4, seed=1, temperature=0.5), 0.5 * a)
    centre = torch.arange(4.0)
    assert torch.allclose(sample_latents(5, 4, seed=1, center=centre, radius=0.1), centre + 0.1 * a)


@pytest.fixture
def vae_run(tiny_dataset, tmp_path):
    run = tmp_path / "vae"
    train(tiny_recipe(tiny_dataset, **{"model.variational": "true", "train.epochs": 2}), run)
    return run


FAST_DECODE = {"estimator.steps": "8"}


def test_sampling_is_reproducible_for_a_seed(vae_run, tmp_path):
    first = sample_structures(str(vae_run), n=4, seed=3, estimator_overrides=FAST_DECODE)
    again = sample_structures(str(vae_run), n=4, seed=3, estimator_overrides=FAST_DECODE)
    write_samples(first, tmp_path / "a")
    write_samples(again, tmp_path / "b")
    assert (tmp_path / "a" / "samples.csv").read_text() == (tmp_path / "b" / "samples.csv").read_text()
    cifs = sorted(p.name for p in (tmp_path / "a").glob("sample-*.cif"))
    assert len(cifs) == first.summary["decoded"]
    assert all((tmp_path / "a" / n).read_text() == (tmp_path / "b" / n).read_text() for n in cifs)
    assert first.summary["reference"]["is_training_data"]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["n"] == 4 and summary["seed"] == 3 and "structural_validity_pct" in summary


def test_near_a_structure_and_the_autoencoder(vae_run, tiny_dataset, tmp_path):
    near = sample_structures(str(vae_run), n=2, near="ZnS", radius=0.1, estimator_overrides=FAST_DECODE)
    assert near.summary["near_structure"].startswith("ZnS")  # found in the training set first
    cif = tmp_path / "cscl.cif"
    cif.write_text(cesium_chloride().to_cif())
    assert sample_structures(str(vae_run), n=1, near=str(cif), estimator_overrides=FAST_DECODE).crystals
    with pytest.raises(UserError, match="not trained on"):
        sample_structures(str(vae_run), n=1, near="KCl")  # K is not in the tiny species table
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 1}), tmp_path / "ae")
    with pytest.raises(UserError, match="autoencoder"):
        sample_structures(str(tmp_path / "ae"), n=2)
    assert len(sample_structures(str(tmp_path / "ae"), n=2, near="NaCl", estimator_overrides=FAST_DECODE).rows) == 2


def test_a_fresh_install_samples_from_the_shipped_vae(tmp_path):
    """No dataset, no checkpoint given: the packaged VAE decodes, and novelty is skipped, not faked."""
    result = sample_structures(n=1, seed=0, estimator_overrides=FAST_DECODE)
    assert result.summary["checkpoint"].endswith(f"{DEFAULT_VAE_MODEL}.pt") and result.summary["variational"]
    assert result.summary["novelty_pct"] is None and result.summary["n"] == 1


def test_missing_default_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(generate, "PACKAGED_MODELS", tmp_path)
    with pytest.raises(UserError, match=f"default model {DEFAULT_VAE_MODEL} is not shipped"):
        sample_structures(n=2)


def test_cli_trains_a_vae_then_samples_and_evaluates(cli, tiny_dataset, tmp_path):
    overrides = [f"{k}={v}" for k, v in TINY_MODEL.items()]
    data = f"data.name={tiny_dataset.path}"
    trained = cli(
        "train",
        "recipe=vae-quickstart",
        data,
        "train.batch_size=8",
        "train.epochs=1",
        *overrides,
        f"out={tmp_path / 'run'}",
        "--json",
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    sampled = cli(
        "sample",
        f"checkpoint={tmp_path / 'run'}",
        "n=3",
        "seed=1",
        f"out={tmp_path / 'samples'}",
        "estimator.steps=8",
        "symmetrize=true",
        "--json",
    )
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    summary = json.loads(sampled.stdout)
    assert summary["n"] == 3 and summary["symmetrize"] and summary["reference"]["dataset"] == "tiny"
    assert (tmp_path / "samples" / "samples.csv").read_text().count("\n") == 4
    evaluated = cli(
        "evaluate", f"checkpoint={tmp_path / 'run'}", f"data={tiny_dataset.path}", "--json", f"out={tmp_path / 'eval'}"
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads(evaluated.stdout)["num_structures"] == 6
    mistake = cli("sample", f"checkpoint={tmp_path / 'run'}", "n=0")
    assert mistake.returncode == 2 and "n must be at least 1" in mistake.stderr


def test_a_streamed_sampling_continues_where_it_stopped_and_matches_an_uninterrupted_one(vae_run, tmp_path):
    decode = {"estimator.steps": "8", "estimator.chunk_size": "2"}
    whole = sample_structures(str(vae_run), n=5, seed=3, estimator_overrides=decode, out=tmp_path / "whole")
    # an interrupted run: its first two chunks are on disk, the third never finished
    calls = []

    def stop_after_two_chunks(done, total):
        calls.append(done)
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample_structures(
            str(vae_run), n=5, seed=3, estimator_overrides=decode, out=tmp_path / "cut", progress=stop_after_two_chunks
        )
    chunks = sorted(p.name for p in (tmp_path / "cut" / "progress").glob("chunk-*.json"))
    assert chunks == ["chunk-00000000.json", "chunk-00000002.json"]
    resumed_from = []
    again = sample_structures(
        str(vae_run),
        n=5,
        seed=3,
        estimator_overrides=decode,
        out=tmp_path / "cut",
        progress=lambda d, t: resumed_from.append(d),
    )
    assert resumed_from == [4, 5]  # continued after the saved samples, decoding only the last
    assert again.rows == whole.rows and again.summary == whole.summary | {"checkpoint": again.summary["checkpoint"]}
    # other settings in the same folder: a new sampling replaces the old one's files
    other = sample_structures(str(vae_run), n=2, seed=4, estimator_overrides=decode, out=tmp_path / "cut")
    write_samples(other, tmp_path / "cut")
    assert len(list((tmp_path / "cut" / "progress").glob("chunk-*.json"))) == 1
    assert {p.stem for p in (tmp_path / "cut").glob("sample-*.cif")} <= {"sample-0000", "sample-0001"}


def test_a_huge_n_is_refused_with_an_estimate_unless_forced(vae_run, tmp_path, monkeypatch):
    monkeypatch.setattr(generate, "MAX_SAMPLES", 3)
    decode = {"estimator.steps": "2", "estimator.chunk_size": "2"}
    with pytest.raises(UserError, match=r"n=6 samples would take about .* days here .* more than 3 need force=true"):
        sample_structures(str(vae_run), n=6, seed=0, estimator_overrides=decode, out=tmp_path / "big")
    assert len(list((tmp_path / "big" / "progress").glob("chunk-*.json"))) == 1  # the timed chunk is kept
    forced = sample_structures(str(vae_run), n=6, seed=0, estimator_overrides=decode, out=tmp_path / "big", force=True)
    assert len(forced.rows) == 6
