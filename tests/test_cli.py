"""The command line end to end at tiny size, through a real subprocess (exit codes, stdout JSON)."""

import json
import subprocess
import sys

import pytest
from conftest import TINY_MODEL, rock_salt, zinc_blende


def run(*args, env_dir=None, cwd=None):
    env = None
    if env_dir is not None:
        import os

        env = {**os.environ, "NESFGEN_DATA_DIR": str(env_dir)}
    return subprocess.run(
        [sys.executable, "-m", "nesfgen", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def test_recipes_json():
    result = run("recipes", "--json")
    assert result.returncode == 0, result.stderr
    names = {row["name"] for row in json.loads(result.stdout)}
    assert {"quickstart", "paper-lcs6", "paper-icsg3d", "paper-ybco"} <= names


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "train.epohcs=3"], "did you mean train.epochs"),
        (["train", "train.epochs=abc"], "expects an integer"),
        (["train", "recipe=nope"], "unknown recipe"),
        (["train", "recipe=paper-lcs6"], "nesfgen data import"),
        (["evaluate", "data=nowhere/at/all", "field=exact"], "does not exist"),
        (["evaluate", "checkpoint=missing.pt"], "not found"),
        (["data", "info", "nope"], "not found"),
        (["refit", "run=nowhere"], "holds no best.pt"),
        (["data", "import", "x", "--format", "zip", "--out", "y"], "unknown --format"),
    ],
)
def test_user_mistakes_exit_2_without_traceback(tmp_path, args, message):
    result = run(*args, env_dir=tmp_path / "empty", cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_import_info_export(tmp_path):
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    for k in range(4):
        (cifs / f"nacl{k}.cif").write_text(rock_salt(5.6 + 0.05 * k).to_cif())
        (cifs / f"zns{k}.cif").write_text(zinc_blende(5.4 + 0.05 * k).to_cif())
    result = run("data", "import", str(cifs), "--format", "cif", "--out", str(tmp_path / "ds"), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(run("data", "info", str(tmp_path / "ds"), "--json").stdout)
    assert sum(s["structures"] for s in info["splits"].values()) == 8
    assert info["splits"]["train"]["atoms_per_cell"].keys() == {"8"}
    result = run("data", "export", str(tmp_path / "ds"), "--out", str(tmp_path / "cif_out"), "--json")
    assert json.loads(result.stdout)["written"] == 8


def test_train_evaluate_reconstruct(tiny_dataset, tmp_path):
    overrides = [f"{k}={v}" for k, v in TINY_MODEL.items()]
    run_dir = tmp_path / "run"
    result = run(
        "train",
        f"data.name={tiny_dataset.path}",
        "train.epochs=2",
        "train.batch_size=8",
        *overrides,
        f"out={run_dir}",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["epochs"] == 2 and (run_dir / "best.pt").is_file() and (run_dir / "config.toml").is_file()

    result = run(
        "evaluate", f"checkpoint={run_dir}", f"data={tiny_dataset.path}", "split=test", "estimator.steps=4", "--json"
    )
    assert result.returncode == 0, result.stderr
    evaluation = json.loads(result.stdout)
    assert evaluation["num_structures"] == 6
    for name in ("evaluation.json", "evaluation.md", "structures.csv", "errors_vs_atoms.png"):
        assert (run_dir / "eval-tiny-test" / name).is_file()

    out = tmp_path / "pairs"
    result = run(
        "reconstruct", f"checkpoint={run_dir}", f"data={tiny_dataset.path}", "estimator.steps=4", f"out={out}", "--json"
    )
    assert result.returncode == 0, result.stderr
    assert len(list(out.glob("*.input.cif"))) == 6

    result = run("train", f"resume={run_dir}", "train.epochs=3", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["epochs"] == 3

    result = run("refit", f"run={run_dir}", "epochs=2", "--json")
    assert result.returncode == 0, result.stderr
    refit = json.loads(result.stdout)
    assert refit["epochs"] == 2 and set(refit["best_epoch"]) == {"lengths", "angles"}
    assert (run_dir / "best.before-refit.pt").is_file()


def test_exact_field_evaluation_is_perfect(tiny_dataset, tmp_path):
    result = run(
        "evaluate",
        f"data={tiny_dataset.path}",
        "field=exact",
        "estimator.steps=2",
        f"out={tmp_path / 'exact'}",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    evaluation = json.loads(result.stdout)
    assert evaluation["atom_count_error_pct"] == 0
    assert evaluation["position_error_actual"] < 1e-3
    assert evaluation["species_error_actual_pct"] == 0
    assert evaluation["cdvae_match_rate_pct"] == 100


def test_error_messages_print_brackets_as_text(tmp_path):
    # rich would read "[nan 90.]" as a markup tag and drop it (issue 30: "contain NaN or infinity: , [90. 90. 90.]")
    result = run("evaluate", "checkpoint=runs/[nan 90.]/x.pt", cwd=tmp_path)
    assert result.returncode == 2
    assert "runs/[nan 90.]/x.pt" in result.stderr
