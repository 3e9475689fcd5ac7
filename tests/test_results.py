import json
import shutil
from dataclasses import replace

import pytest
from conftest import recording, tiny_recipe

from nesfgen.card import PackageOptions, package_model
from nesfgen.config import load_recipe, to_toml
from nesfgen.data.store import write_dataset
from nesfgen.errors import UserError
from nesfgen.evaluate import markdown_table, summarise_runs
from nesfgen.metrics import PAPER_METRICS
from nesfgen.results import (
    ResultsOptions,
    build_results,
    chosen_seed,
    recipe_fingerprint,
    results_markdown,
    seeds_of,
)
from nesfgen.run_folder import run_status
from nesfgen.train import train_or_resume


@pytest.fixture
def recipe_file(tiny_dataset, tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(to_toml(tiny_recipe(tiny_dataset, **{"train.epochs": 1, "estimator.steps": 2})))
    return path


def test_missing_runs_are_listed_with_the_command_that_makes_them(recipe_file, tmp_path):
    options = ResultsOptions(
        runs=str(tmp_path / "runs"), tables="lcs6", seeds=2, lcs6_recipe=str(recipe_file), train=False
    )
    result = build_results(options)
    assert result["tables"][0]["missing"] == [
        f"nesfgen train recipe={recipe_file} train.seed={seed} out={tmp_path / 'runs' / 'lcs6' / f'seed-{seed}'}"
        for seed in (0, 1)
    ]
    page = (tmp_path / "runs" / "results.md").read_text()
    assert "No seed has finished training yet." in page and "train.seed=1" in page
    assert not (tmp_path / "runs" / "lcs6").exists()  # train=false trains nothing


def test_seeds_are_trained_once_and_reported_as_mean_and_std(recipe_file, tmp_path):
    page = tmp_path / "docs" / "results.md"
    options = ResultsOptions(
        runs=str(tmp_path / "runs"), out=str(page), tables="lcs6", seeds=2, lcs6_recipe=str(recipe_file)
    )
    table = build_results(options)["tables"][0]
    assert [run["seed"] for run in table["seeds"]] == [0, 1] and table["missing"] == []
    each = [summary["reference"] for summary in table["each"]]
    assert each[0] != each[1]  # two seeds, two models: the spread is measured, not zero by construction
    assert table["std"]["reference"]["length_error"] > 0
    for name in PAPER_METRICS:
        mean = sum(e[name] for e in each) / 2
        assert table["mean"]["reference"][name] == pytest.approx(mean, nan_ok=True)
    text = page.read_text()
    assert "mean ± std over seeds" in text and " ± " in text and "Each run, pooled over atoms" in text
    assert "nesfgen results runs=" in text  # the page says how to regenerate it
    assert all(set(run["validation"]) == set(PAPER_METRICS) for run in table["seeds"])
    assert table["chosen_seed"] in (0, 1) and f"**seed {table['chosen_seed']}**" in text
    assert json.loads(page.with_suffix(".json").read_text())["tables"][0]["seeds"] == table["seeds"]
    last = tmp_path / "runs" / "lcs6" / "seed-0" / "last.pt"
    written = last.stat().st_mtime_ns
    again = build_results(options)["tables"][0]
    assert last.stat().st_mtime_ns == written  # a finished run is evaluated again, not trained again
    assert again["mean"]["reference"] == pytest.approx(table["mean"]["reference"], nan_ok=True)
    # the shipped seed's card gives the page's mean ± std over the seeds, from the page's JSON
    ledger = str(page.with_suffix(".json"))
    with pytest.raises(UserError, match="no such file"):  # refused before a checkpoint or card is written
        package_model(
            PackageOptions(
                run=str(last.parent), name="tiny", out=str(tmp_path / "refused"), seeds=str(tmp_path / "absent.json")
            )
        )
    assert not (tmp_path / "refused").exists()
    card = package_model(
        PackageOptions(run=str(last.parent), name="tiny", out=str(tmp_path / "models"), seeds=str(ledger))
    ).card.read_text()
    assert f"## Seeds: `{table['recipe']}` trained with 2 seeds (0, 1)" in card and f"seeds={ledger}`" in card
    assert markdown_table({**again["mean"], "dataset": again["dataset"]}, again["std"]) in card


def test_a_card_refuses_a_results_json_without_its_seeds(tmp_path):
    recipe = load_recipe("fast-lcs6")
    with pytest.raises(UserError, match="seeds=.*no such file"):
        seeds_of(tmp_path / "absent.json", recipe)
    ledger = tmp_path / "results.json"
    other = {"table": "lcs6", "fingerprint": "0123", "seeds": [{"seed": 0}], "std": {}}
    ledger.write_text(json.dumps({"tables": [other]}))
    with pytest.raises(UserError, match="no table of two or more seeds of recipe 'fast-lcs6'"):
        seeds_of(ledger, recipe)
    mine = {**other, "fingerprint": recipe_fingerprint(recipe), "seeds": [{"seed": 1}, {"seed": 2}], "std": {"x": 1}}
    ledger.write_text(json.dumps({"tables": [mine]}))
    with pytest.raises(UserError, match="seed 0"):  # the recipe's table, but not this seed's
        seeds_of(ledger, recipe)
    ledger.write_text(json.dumps({"tables": [{**mine, "seeds": [{"seed": 0}, {"seed": 1}]}]}))
    assert seeds_of(ledger, recipe)["fingerprint"] == recipe_fingerprint(recipe)


def test_one_seed_is_reported_without_a_spread():
    figures = dict.fromkeys(PAPER_METRICS, 0.25)
    summary = {**figures, "reference": figures}
    table = {"table": "icsg3d", "recipe": "r", "dataset": "icsg3d", "num_structures": 360, "missing": []}
    table |= {"seeds": [{"seed": 0, "epochs": 10, "minutes": 1.0}], **summarise_runs([summary])}
    assert table["std"] is None  # one run: no spread is claimed
    text = results_markdown({"tables": [table]}, ResultsOptions(out="page.md"))
    assert "one seed" in text and "1 seed (0)" in text
    assert "±" not in text.split("## ICSG3D")[1]  # a single run has no spread to print


def test_the_seed_to_ship_is_the_best_mean_rank_on_validation():
    def run(seed, figure, atoms=None):
        scores = dict.fromkeys(PAPER_METRICS, figure) | ({"atom_count_error_pct": atoms} if atoms else {})
        return {"seed": seed, "validation": scores}

    # seed 0 has the best atom count, seed 1 the other six figures; seed 2 was recorded without validation
    assert chosen_seed([run(0, 2.0, atoms=0.5), run(1, 1.0), {"seed": 2}]) == 1
    assert chosen_seed([run(3, 1.0), run(1, 1.0)]) == 1  # a tie goes to the lower seed
    assert chosen_seed([{"seed": 0}]) is None


def two_folds(tiny_dataset, tmp_path, monkeypatch):
    """Two folds of the tiny dataset in the data directory, and a one-epoch recipe of them written to a file."""
    monkeypatch.setenv("NESFGEN_DATA_DIR", str(tmp_path / "data"))
    crystals = list(tiny_dataset.load("train"))
    for fold in range(2):
        test = crystals[fold * 3 : fold * 3 + 3]
        rest = [c for c in crystals if c not in test]
        data = {"train": rest[:-3], "val": rest[-3:], "test": test}
        write_dataset(tmp_path / "data" / f"tinycv-fold{fold}", data, name=f"tinycv-fold{fold}")
    recipe = tiny_recipe(
        tiny_dataset, **{"data.name": "tinycv", "data.fold": 0, "train.epochs": 1, "estimator.steps": 2}
    )
    fold_recipe = tmp_path / "tinycv.toml"
    fold_recipe.write_text(to_toml(recipe))
    return recipe, fold_recipe


def test_fold_table_evaluates_the_finished_folds_only(tiny_dataset, recipe_file, tmp_path, monkeypatch):
    recipe, fold_recipe = two_folds(tiny_dataset, tmp_path, monkeypatch)
    train_or_resume(recipe, tmp_path / "runs" / "ybco" / "fold-0")
    options = ResultsOptions(
        runs=str(tmp_path / "runs"), tables="ybco", folds="0-1", ybco_recipe=str(fold_recipe), train=False
    )
    bars, decoding = recording()
    result = build_results(options, decoding=decoding)
    table = result["tables"][0]
    assert table["folds"] == [0] and table["pooled"]["num_structures"] == 3
    # a labelled bar for each evaluation of the finished fold, counting its 3 decoded structures to the end
    assert [label for label, _ in bars] == ["ybco fold-0 test", "ybco fold-0 val"]
    assert all(counts and counts[-1] == (3, 3) for _, counts in bars)
    # the page holds the fold table as a subsection, each fold's row, and the validation splits it was chosen on
    assert table["validation"]["num_structures"] == 3 and table["fold_runs"][0]["epochs"] == 1
    assert "\n# " not in result["report"].split("## YBCO-like")[1] and "\n| 0 | 1 | " in result["report"]
    assert "validation splits pooled (3 structures)" in result["report"]
    tested, validated = result["report"].split("## YBCO-like")[1].split("validation splits pooled")
    assert "paper, Table 1" in tested and "paper, Table 1" not in validated  # the paper's column only beside test
    assert (tmp_path / "runs" / "ybco" / "fold-0" / "eval-val" / "evaluation.json").is_file()
    # latents fitted to their structures: a table of its own, labelled, its reports beside the one-pass ones
    bars, decoding = recording()
    fitted = build_results(replace(options, ybco_fit_steps=2), decoding=decoding)
    labels = ["ybco fold-0 test", "ybco fold-0 val", "ybco fold-0 test-fit2", "ybco fold-0 val-fit2"]
    assert [label for label, _ in bars] == labels and all(counts[-1] == (3, 3) for _, counts in bars)
    assert (
        fitted["tables"][0]["fitted"]["folds"] == [0] and fitted["tables"][0]["fitted"]["pooled"]["num_structures"] == 3
    )
    assert "### Latents fitted to each structure (2 steps), folds 0" in fitted["report"]
    assert "Not the paper's protocol" in fitted["report"] and "ybco_fit_steps=2" in fitted["report"]
    report = tmp_path / "runs" / "ybco" / "fold-0" / "eval-test-fit2" / "evaluation.json"
    assert json.loads(report.read_text())["fit_steps"] == 2
    # a fold whose run folder is gone is carried over from the page's JSON and pooled as before, labelled
    shutil.rmtree(tmp_path / "runs" / "ybco" / "fold-0")
    again = build_results(options)
    carried = again["tables"][0]
    assert carried["folds"] == [0] and carried["fold_runs"][0]["recorded"] and len(carried["missing"]) == 1
    for key in ("pooled", "validation", "mean"):  # through JSON and back, figure for figure (NaN included)
        assert json.dumps(carried[key], sort_keys=True) == json.dumps(table[key], sort_keys=True)
    assert "| 0 (recorded) | 1 | " in again["report"]
    assert table["missing"] == [f"nesfgen train recipe={fold_recipe} data.fold=1 out={tmp_path / 'runs/ybco/fold-1'}"]
    # a fold folder holding a run of another recipe (here another learning rate) is refused, not resumed or reported
    train_or_resume(replace(recipe, train=replace(recipe.train, lr=3e-4)), tmp_path / "runs" / "ybco" / "fold-1")
    with pytest.raises(UserError, match=r"fold-1 holds a run of another recipe .*train.lr = 0.0003 there"):
        build_results(options)
    with pytest.raises(UserError, match="holds a run of another recipe"):
        train_or_resume(replace(recipe, data=replace(recipe.data, fold=1)), tmp_path / "runs" / "ybco" / "fold-1")


def test_a_fold_table_of_two_members_a_fold_decodes_each_pair_as_one_field(tiny_dataset, tmp_path, monkeypatch):
    recipe, fold_recipe = two_folds(tiny_dataset, tmp_path, monkeypatch)
    folder = tmp_path / "runs" / "ybco"
    train_or_resume(recipe, folder / "fold-0")
    options = ResultsOptions(
        runs=str(tmp_path / "runs"), tables="ybco", folds="0-1", ybco_recipe=str(fold_recipe), train=False
    )
    paired = replace(options, ybco_members=2)
    alone = build_results(paired)["tables"][0]  # fold 0 lacks its second member: not ready, listed
    assert "folds" not in alone and alone["missing"][0] == (
        f"nesfgen train recipe={fold_recipe} data.fold=0 train.seed=1 out={folder / 'fold-0-member-1'}"
    )
    train_or_resume(replace(recipe, train=replace(recipe.train, seed=1)), folder / "fold-0-member-1")
    result = build_results(paired)
    table = result["tables"][0]
    assert table["folds"] == [0] and table["members"] == 2 and table["pooled"]["num_structures"] == 3
    assert (folder / "fold-0" / "eval-val-ensemble2" / "evaluation.json").is_file()
    assert "2 runs a fold decoded as one field" in result["report"] and "ybco_members=2" in result["report"]
    assert len(table["missing"]) == 2 and table["missing"][1].endswith(f"train.seed=1 out={folder / 'fold-1-member-1'}")
    # with the runs gone, the pair's page carries fold 0 over; a page of single runs does not take it as its own
    shutil.rmtree(folder)
    assert build_results(paired)["tables"][0]["fold_runs"][0]["recorded"]
    assert "folds" not in build_results(options)["tables"][0]
    with pytest.raises(UserError, match="ybco_members=0"):
        replace(options, ybco_members=0)


def test_a_fold_without_data_run_or_recorded_row_is_refused_before_any_table(tiny_dataset, tmp_path, monkeypatch):
    recipe, fold_recipe = two_folds(tiny_dataset, tmp_path, monkeypatch)
    options = ResultsOptions(
        runs=str(tmp_path / "runs"), tables="ybco", folds="0,7", ybco_recipe=str(fold_recipe), train=False
    )
    with pytest.raises(UserError, match="folds=0,7: fold 7 has no data here"):
        build_results(options)
    assert not (tmp_path / "runs").exists()


def test_a_fold_table_with_a_partner_recipe_trains_it_beside_each_fold_and_is_a_table_of_its_own(
    tiny_dataset, tmp_path, monkeypatch
):
    recipe, fold_recipe = two_folds(tiny_dataset, tmp_path, monkeypatch)
    partner_file = tmp_path / "tinycv-batch2.toml"
    partner_file.write_text(f'name = "tinycv-batch2"\nextends = "{fold_recipe}"\n[train]\nbatch_size = 2\n')
    folder = tmp_path / "runs" / "ybco"
    train_or_resume(recipe, folder / "fold-0")
    options = ResultsOptions(
        runs=str(tmp_path / "runs"), tables="ybco", folds="0", ybco_recipe=str(fold_recipe), train=False
    )
    paired = replace(options, ybco_partners=str(partner_file))
    alone = build_results(paired)["tables"][0]  # the partner of fold 0 not trained yet: listed with its command
    assert "folds" not in alone and alone["missing"] == [
        f"nesfgen train recipe={partner_file} data.fold=0 out={folder / 'fold-0-with-tinycv-batch2'}"
    ]
    partner = load_recipe(str(partner_file))
    train_or_resume(partner, folder / "fold-0-with-tinycv-batch2")
    result = build_results(paired)
    table = result["tables"][0]
    assert table["folds"] == [0] and table["members"] == 2 and table["partners"] == ["tinycv-batch2"]
    assert (folder / "fold-0" / "eval-val-ensemble-with-tinycv-batch2" / "evaluation.json").is_file()
    assert "with tinycv-batch2 a fold decoded as one field" in result["report"]
    assert f"ybco_partners={partner_file}" in result["report"]
    shutil.rmtree(folder)  # the pair's page carries its fold over; a page of single runs does not take it
    assert build_results(paired)["tables"][0]["fold_runs"][0]["recorded"]
    assert "folds" not in build_results(options)["tables"][0]
    with pytest.raises(UserError, match="named twice, or the recipe itself"):
        replace(options, ybco_partners=str(fold_recipe))
    with pytest.raises(UserError, match=r"ybco_members= and ybco_partners= both given"):
        replace(paired, ybco_members=2)
    with pytest.raises(UserError, match=r"runs=.*may not hold '\+'"):
        replace(paired, runs=str(tmp_path / "a+b"))


def test_a_run_stopped_by_its_time_limit_counts_as_finished(tiny_dataset, tmp_path):
    recipe = tiny_recipe(tiny_dataset, **{"train.epochs": 50, "train.time_limit_minutes": 1e-6})
    train_or_resume(recipe, tmp_path / "run")
    status = run_status(tmp_path / "run", 50)
    assert status.finished and status.epochs == 1
    train_or_resume(recipe, tmp_path / "run")  # nothing left to do: no extra epoch
    assert run_status(tmp_path / "run").epochs == 1
    assert not run_status(tmp_path / "nothing").finished


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ({"tables": "lcs6,icsg"}, "expected a comma list of lcs6, ybco, icsg3d"),
        ({"icsg3d_seeds": 0}, "icsg3d_seeds=0: expected at least 1 seed"),
        ({"seeds": 0}, "at least 1 seed"),
        ({"folds": "x"}, "folds must look like"),
        ({"ybco_fit_steps": -1}, "ybco_fit_steps=-1: expected 0"),
        ({"out": "notes.txt"}, "out=notes.txt: expected a Markdown page"),
    ],
)
def test_bad_options_are_refused(words, message):
    with pytest.raises(UserError, match=message):
        ResultsOptions(**words)


def test_the_command_line_refuses_an_unknown_key(cli, tmp_path):
    result = cli("results", "seed=3", f"runs={tmp_path}")
    assert result.returncode == 2 and "did you mean seeds?" in result.stderr


def test_recorded_seeds_are_carried_over_when_their_runs_are_gone(recipe_file, tmp_path):
    page = tmp_path / "docs" / "results.md"
    first = ResultsOptions(
        runs=str(tmp_path / "runs"), out=str(page), tables="lcs6", seeds=1, lcs6_recipe=str(recipe_file)
    )
    trained = build_results(first)["tables"][0]
    shutil.rmtree(tmp_path / "runs")  # a new machine: the page came with the repository, the runs did not
    later = replace(first, runs=str(tmp_path / "elsewhere"), seeds=2, train=False)
    table = build_results(later)["tables"][0]
    assert [run.get("recorded") for run in table["seeds"]] == [True]
    assert table["each"][0]["reference"] == trained["each"][0]["reference"]
    assert table["missing"] == [
        f"nesfgen train recipe={recipe_file} train.seed=1 out={tmp_path / 'elsewhere' / 'lcs6' / 'seed-1'}"
    ]
    assert "0 (recorded)" in page.read_text()
    # another recipe is another column: its seeds are not taken from this one's record
    other = tmp_path / "other.toml"
    recipe = load_recipe(str(recipe_file))
    other.write_text(to_toml(replace(recipe, train=replace(recipe.train, lr=0.5))))
    assert build_results(replace(later, lcs6_recipe=str(other)))["tables"][0]["seeds"] == []


def test_a_page_written_before_any_run_finished_does_not_block_the_next(
    recipe_file, tiny_dataset, tmp_path, monkeypatch
):
    _, fold_recipe = two_folds(tiny_dataset, tmp_path, monkeypatch)
    options = ResultsOptions(
        runs=str(tmp_path / "runs"), out=str(tmp_path / "results.md"), tables="lcs6,ybco", folds="0-1", train=False
    )
    options = replace(options, lcs6_recipe=str(recipe_file), ybco_recipe=str(fold_recipe))
    first = build_results(options)["tables"]
    assert [table.get("each") for table in first] == [None, None]  # nothing finished: no figures recorded
    again = build_results(options)["tables"]
    assert [len(table["missing"]) for table in again] == [len(table["missing"]) for table in first]


def test_a_damaged_results_record_is_refused_by_name(recipe_file, tmp_path):
    page = tmp_path / "results.md"
    page.with_suffix(".json").write_text("{not json")
    options = ResultsOptions(runs=str(tmp_path / "runs"), out=str(page), tables="lcs6", lcs6_recipe=str(recipe_file))
    with pytest.raises(UserError, match="results.json: not a results JSON"):
        build_results(replace(options, train=False))


def test_the_icsg3d_table_names_its_protocol(recipe_file, tmp_path):
    options = ResultsOptions(runs=str(tmp_path / "runs"), tables="icsg3d", icsg3d_recipe=str(recipe_file), train=False)
    result = build_results(options)
    assert result["tables"][0]["table"] == "icsg3d" and result["tables"][0]["missing"]
    assert "was not released" in (tmp_path / "runs" / "results.md").read_text()
    assert "fine-tuned from" not in (tmp_path / "runs" / "results.md").read_text()  # this recipe starts afresh
    started = {"table": "icsg3d", "recipe": "r", "dataset": "d", "init_from": "a-start", "seeds": [], "missing": []}
    assert "fine-tuned from `a-start` (`train.init_from`)" in results_markdown({"tables": [started]}, options)
    bars, decoding = recording()  # its seed trained, then each evaluation decoded under a labelled bar
    table = build_results(replace(options, train=True), decoding=decoding)["tables"][0]
    assert [label for label, _ in bars] == ["icsg3d seed-0 test", "icsg3d seed-0 val"]
    assert bars[0][1][-1] == (table["num_structures"],) * 2  # the test split's structures, every one decoded
    assert all(counts and counts[-1][0] == counts[-1][1] for _, counts in bars)


def test_a_fitted_evaluations_bar_comes_back_for_its_decode():
    """ybco_fit_steps= evaluations count their fit's steps, then their decoded structures, on one callback."""
    from nesfgen.views import RichTrainProgress

    progress = RichTrainProgress()
    update = progress.decoding("ybco fold-0 test-fit2")
    update(1, 2)
    update(2, 2)  # the fit done: the bar goes
    assert not progress.bar.task_ids
    update(1, 3)  # the decode's first chunk: the bar is back, counting structures
    [task] = progress.bar.tasks
    assert (task.description, task.completed, task.total) == ("ybco fold-0 test-fit2", 1, 3)
    update(3, 3)
    update(3, 3)  # a late call after completion is harmless
    assert not progress.bar.task_ids
    progress.stop()


def test_a_fine_tuning_recipe_is_another_column_when_its_starting_checkpoint_changes(recipe_file, tmp_path):
    recipe = load_recipe(str(recipe_file))
    start = tmp_path / "start.pt"
    start.write_bytes(b"first")
    fine_tuned = replace(recipe, train=replace(recipe.train, init_from=str(start)))
    before = recipe_fingerprint(fine_tuned)
    assert recipe_fingerprint(replace(fine_tuned, train=replace(fine_tuned.train, seed=4))) == before
    start.write_bytes(b"second")  # the same name, other weights: e.g. a newly shipped nesf-lcs6
    assert recipe_fingerprint(fine_tuned) != before != recipe_fingerprint(recipe)


def test_runs_of_one_recipe_share_its_fingerprint_however_they_ran():
    recipe = load_recipe("fast-lcs6")
    ran_otherwise = replace(recipe, train=replace(recipe.train, seed=2, threads=1, time_limit_minutes=240.0))
    assert recipe_fingerprint(ran_otherwise) == recipe_fingerprint(recipe)  # as the page accepts such a run folder
    trained_otherwise = replace(recipe, train=replace(recipe.train, lr=recipe.train.lr * 2))
    assert recipe_fingerprint(trained_otherwise) != recipe_fingerprint(recipe)
