"""The command line end to end at tiny size, through a real subprocess (exit codes, stdout JSON)."""

import json

import pytest
from conftest import TINY_MODEL, rock_salt, zinc_blende


def test_recipes_json(cli):
    result = cli("recipes", "--json")
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
def test_user_mistakes_exit_2_without_traceback(cli, tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("NESFGEN_DATA_DIR", str(tmp_path / "empty"))
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_import_info_export(cli, tmp_path):
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    for k in range(4):
        (cifs / f"nacl{k}.cif").write_text(rock_salt(5.6 + 0.05 * k).to_cif())
        (cifs / f"zns{k}.cif").write_text(zinc_blende(5.4 + 0.05 * k).to_cif())
    result = cli("data", "import", str(cifs), "--format", "cif", "--out", str(tmp_path / "ds"), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(cli("data", "info", str(tmp_path / "ds"), "--json").stdout)
    assert sum(s["structures"] for s in info["splits"].values()) == 8
    assert info["splits"]["train"]["atoms_per_cell"].keys() == {"8"}
    groups = info["space_groups"]  # the training split's, beside the counts
    assert sum(g["count"] for g in groups["groups"]) + groups["unassigned"] == info["splits"]["train"]["structures"]
    assert {g["number"] for g in groups["groups"]} <= {225, 216}  # rock salt and zinc blende
    result = cli("data", "export", str(tmp_path / "ds"), "--out", str(tmp_path / "cif_out"), "--json")
    assert json.loads(result.stdout)["written"] == 8


def test_train_evaluate_reconstruct(cli, tiny_dataset, tmp_path):
    overrides = [f"{k}={v}" for k, v in TINY_MODEL.items()]
    run_dir = tmp_path / "run"
    result = cli(
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
    report = summary["report"]  # the validation split decoded at the end
    assert report["split"] == "val" and report["num_structures"] == 6 and "cdvae_match_rate_pct" in report
    assert (run_dir / "report.json").is_file() and (run_dir / "reconstruction.png").read_bytes()[:4] == b"\x89PNG"

    result = cli(
        "evaluate", f"checkpoint={run_dir}", f"data={tiny_dataset.path}", "split=test", "estimator.steps=4", "--json"
    )
    assert result.returncode == 0, result.stderr
    evaluation = json.loads(result.stdout)
    assert evaluation["num_structures"] == 6
    for name in ("evaluation.json", "evaluation.md", "structures.csv", "errors_vs_atoms.png"):
        assert (run_dir / "eval-tiny-test" / name).is_file()

    out = tmp_path / "pairs"
    result = cli(
        "reconstruct", f"checkpoint={run_dir}", f"data={tiny_dataset.path}", "estimator.steps=4", f"out={out}", "--json"
    )
    assert result.returncode == 0, result.stderr
    assert len(list(out.glob("*.input.cif"))) == 6

    result = cli("train", f"resume={run_dir}", "train.epochs=3", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["epochs"] == 3

    result = cli("refit", f"run={run_dir}", "epochs=2", "--json")
    assert result.returncode == 0, result.stderr
    refit = json.loads(result.stdout)
    assert refit["epochs"] == 2 and set(refit["best_epoch"]) == {"lengths", "angles"}
    assert (run_dir / "best.before-refit.pt").is_file()


def test_train_defaults_to_quickstart_and_ends_with_the_report_then_the_hint(cli, tiny_dataset, tmp_path):
    overrides = [f"{k}={v}" for k, v in TINY_MODEL.items()]
    args = ["train", f"data.name={tiny_dataset.path}", "train.epochs=1", "train.batch_size=8", *overrides]
    result = cli(*args, "estimator.steps=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    runs = list((tmp_path / "runs").glob("quickstart-*"))
    assert len(runs) == 1 and (runs[0] / "reconstruction.png").is_file()
    figures = text.index("species error, actual [%]")
    assert text.index("reconstruction of the validation split (6 structures") < figures
    assert (
        figures < text.index("StructureMatcher match") < text.index("reconstruction.png") < text.index("next: nesfgen")
    )

    result = cli(*args, "report=false", "out=plain", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "StructureMatcher" not in result.stdout and not (tmp_path / "plain" / "report.json").exists()


def test_exact_field_evaluation_is_perfect(cli, tiny_dataset, tmp_path):
    result = cli(
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


@pytest.fixture
def bad_outs(tmp_path, unwritable_folder):
    """out= values no command can write: under a file, a 300-character name, a folder without write access."""
    (tmp_path / "afile").write_text("x")
    return {
        "under a file": (tmp_path / "afile" / "out", "afile is a file, not a folder"),
        "long name": (tmp_path / ("n" * 300), "name in the path is too long"),
        "unwritable": (unwritable_folder, "cannot write the"),
    }


def main_in_process(monkeypatch, capsys, *args):
    """nesfgen's real entry point in this process (no interpreter start per call): exit code and stderr."""
    from nesfgen import cli

    monkeypatch.setattr("sys.argv", ["nesfgen", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    return exited.value.code, " ".join(capsys.readouterr().err.split())


def test_unusable_out_folders_exit_2_with_the_reason(cli, tiny_dataset, tmp_path, bad_outs, monkeypatch, capsys):
    from nesfgen import evaluate

    def decode_everything(*args, **kwargs):
        raise AssertionError("decoded before checking out=")

    monkeypatch.setattr(evaluate, "evaluate", decode_everything)  # evaluate and reconstruct must check first
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    (cifs / "nacl.cif").write_text(rock_salt().to_cif())
    for out, reason in bad_outs.values():
        commands = [
            ["train", f"data.name={tiny_dataset.path}", *(f"{k}={v}" for k, v in TINY_MODEL.items()), f"out={out}"],
            ["data", "import", cifs, "--format", "cif", "--out", out],
            ["data", "export", tiny_dataset.path, "--out", out],
            ["evaluate", f"data={tiny_dataset.path}", "field=exact", f"out={out}"],
            ["reconstruct", f"data={tiny_dataset.path}", "field=exact", f"out={out}"],
        ]
        for args in commands:
            code, stderr = main_in_process(monkeypatch, capsys, *args, "--json")
            assert code == 2 and reason in stderr and "Traceback" not in stderr, (args[:2], reason, stderr)
    for out, reason in bad_outs.values():  # the shipped generator refuses before decoding, as the rest do
        code, stderr = main_in_process(monkeypatch, capsys, "sample", "n=2", f"out={out}", "--json")
        assert code == 2 and reason in stderr and "Traceback" not in stderr, ("sample", reason, stderr)
    result = cli("data", "export", str(tiny_dataset.path), "--out", str(bad_outs["under a file"][0]))
    assert result.returncode == 2 and "Traceback" not in result.stderr  # and so in a process of its own


def test_export_of_hostile_ids_and_train_into_a_users_folder(cli, tmp_path):
    rows = "material_id,cif\n" + "".join(
        f'"{id}","{rock_salt(5.6 + 0.02 * k).to_cif()}"\n' for k, id in enumerate(["a/b", "a_b", "/abs/victim"])
    )
    (tmp_path / "train.csv").write_text(rows)
    result = cli("data", "import", str(tmp_path / "train.csv"), "--format", "cdvae-csv", "--out", str(tmp_path / "ds"))
    assert result.returncode == 0, result.stderr
    result = cli("data", "export", str(tmp_path / "ds"), "--out", str(tmp_path / "cifs"), "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["written"] == 3
    assert len(list((tmp_path / "cifs" / "train").glob("*.cif"))) == 3
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.toml").write_text("mine")
    result = cli("train", f"data.name={tmp_path / 'ds'}", f"out={mine}", "train.batch_size=2")
    assert result.returncode == 2 and "already holds files (config.toml)" in " ".join(result.stderr.split())
    assert (mine / "config.toml").read_text() == "mine"


def test_error_messages_print_brackets_as_text(cli, tmp_path):
    # rich would read "[nan 90.]" as a markup tag and drop it (issue 30: "contain NaN or infinity: , [90. 90. 90.]")
    result = cli("evaluate", "checkpoint=runs/[nan 90.]/x.pt", cwd=tmp_path)
    assert result.returncode == 2
    assert "runs/[nan 90.]/x.pt" in result.stderr


def test_console_lines_print_bracketed_names_as_text(cli, tiny_dataset, tmp_path):
    # a folder name such as "run[1]" is a file name, not a rich markup tag
    folder = tmp_path / "data[old]"
    tiny_dataset.path.rename(folder)
    result = cli("data", "info", str(folder))
    assert result.returncode == 0 and "data[old]" in result.stdout, result.stderr
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    (cifs / "nacl.cif").write_text(rock_salt().to_cif())
    result = cli("data", "import", str(cifs), "--format", "cif", "--out", str(tmp_path / "new[1]"))
    first_line = result.stdout.splitlines()[0]
    assert result.returncode == 0 and first_line.startswith("imported ") and "new[1]" in first_line, result.stdout


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (("map", "latents.npz", "perplexity=0"), "perplexity=0.0: expected a positive number"),
        (("map", "latents.npz", "method=pca", "perplexity=5"), "perplexity=5.0: expected no value with method=pca"),
        (("refit", "run=runs/x", "lr=-1"), "lr=-1.0: expected a positive number"),
        (("tune", "study=quickstart", "n_trials=0"), "n_trials=0: expected at least 1"),
        (("tune", "study=quickstart", "worker=-1"), "worker=-1: expected 0 or more"),
        (("bench", "estimate", "checkpoint=nesf-lcs6", "limit=0"), "limit=0: expected at least 1"),
        (("symmetry", "data=builtin", "limit=-2"), "limit=-2: expected at least 1"),
        (("data", "hull", "builtin", "limit=-1"), "limit=-1: expected 0 (all)"),
        (("tune", "study=quickstart", "timeout=nan"), "timeout=nan: expected a positive, finite duration"),
        (("evaluate", "checkpoint=,"), "checkpoint=,: names no checkpoint"),
        (("train", "resume=no-such-run"), "cannot resume no-such-run: no such run folder"),
        (("trajectory", "run=no-such-run"), "run=no-such-run: no such run folder"),
        (("results", "tables=lcs6,ybco", "ybco_recipe=no-such-recipe"), "unknown recipe 'no-such-recipe'"),
    ],
)
def test_numbers_out_of_range_are_refused_by_name_before_any_work(cli, tmp_path, words, message):
    result = cli(*words, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_file_or_folder_in_the_wrong_place_is_named_as_such(cli, tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "emptydir").mkdir()
    info = cli("data", "info", str(tmp_path / "afile"))
    assert info.returncode == 2 and "is a file; a dataset is a folder with a manifest.json" in info.stderr
    latents = cli("map", str(tmp_path / "emptydir"))
    assert latents.returncode == 2 and "is a folder; give the latents file in it" in latents.stderr
    typo = cli("embed", "limitt=2")
    assert typo.returncode == 2 and "unknown option limitt for nesfgen embed. Valid: checkpoint," in typo.stderr


def test_decoding_bars_share_the_training_display_and_vanish_when_done():
    """nesfgen results decodes dozens of splits beside its training bar: each bar goes once complete."""
    from nesfgen.views import RichTrainProgress

    progress = RichTrainProgress()
    update = progress.decoding("lcs6 seed-0 test")
    update(1, 2)
    assert len(progress.bar.task_ids) == 1
    update(2, 2)
    update(2, 2)  # a late call after completion is harmless
    assert not progress.bar.task_ids
    progress.stop()
