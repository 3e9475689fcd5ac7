"""Optuna studies at tiny size: a short study, pruning, two workers on one SQLite file, resume after a kill, export."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import TINY_MODEL
from optuna.trial import TrialState

from nesfgen.config import load_recipe, to_dict
from nesfgen.errors import UserError
from nesfgen.train import train
from nesfgen.tune import (
    export_recipe,
    load_study,
    open_study,
    run_study,
    show_study,
    study_names,
    study_path,
)


def write_study(path, dataset, epochs=2, minutes=None, space=None, objectives=None, sampler=None, pruner=None):
    """A study file over the tiny dataset and model; the search space defaults to lr and latent size."""
    overrides = {**TINY_MODEL, "data.name": str(dataset.path), "train.batch_size": "8", "estimator.steps": "2"}
    space = space or ['"train.lr" = { low = 1e-3, high = 1e-2, log = true }', '"model.latent_size" = [8, 16]']
    overrides = {key: value for key, value in overrides.items() if not any(f'"{key}"' in line for line in space)}
    lines = [f"# nesfgen tune study={path}", 'recipe = "quickstart"', "seed = 0", "", "[overrides]"]
    lines += [f'"{key}" = "{value}"' for key, value in overrides.items()]
    lines += ["", "[budget]", f"epochs = {epochs}"] + ([f"minutes = {minutes}"] if minutes else [])
    lines += ["", "[storage]", "heartbeat_seconds = 1", "grace_seconds = 2", ""]
    lines += objectives or ["[objective]", 'metric = "val_loss"']
    lines += ["", "[space]"]
    lines += space
    lines += ["", "[sampler]", *(sampler or ["n_startup_trials = 2"]), "", "[pruner]"]
    lines += pruner or ['type = "median"', "n_startup_trials = 2"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run from tmp_path, so the study's runs/tune-NAME folder lands there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path


def trials_by_state(spec, state):
    study = open_study(spec, create=False)
    return [t for t in study.get_trials(deepcopy=False) if t.state == state]


def test_three_trials_keep_recipes_show_and_export_a_recipe_that_trains(tiny_dataset, in_tmp):
    spec = load_study(str(write_study(in_tmp / "tiny.toml", tiny_dataset)))
    result = run_study(spec, n_trials=3)
    assert result["trials"] == {"complete": 3} and result["ran"] == [0, 1, 2]
    for trial in trials_by_state(spec, TrialState.COMPLETE):
        recipe = trial.user_attrs["recipe"]
        assert recipe["train"]["lr"] == trial.params["train.lr"]
        assert recipe["model"]["latent_size"] == trial.params["model.latent_size"]
        assert recipe["train"]["epochs"] == 2
        assert trial.values[0] == trial.user_attrs["metrics"]["val_loss"]
        folder = in_tmp / "runs" / "tune-tiny" / f"trial-{trial.number:04d}"
        record = json.loads((folder / "trial.json").read_text())
        assert record["state"] == "complete" and record["recipe"] == recipe
        assert (folder / "best.pt").is_file() and not (folder / "last.pt").exists()
        assert sorted(trial.intermediate_values) == [1, 2]  # one report per epoch

    assert run_study(spec, n_trials=3)["ran"] == []  # already done: a rerun runs nothing
    assert run_study(spec, n_trials=4)["ran"] == [3]  # ... and a larger target adds the difference

    shown = show_study(spec)
    values = [row["values"][0] for row in shown["rows"]]
    assert values == sorted(values) and shown["best"][0]["number"] == shown["rows"][0]["number"]
    assert {os.path.basename(p) for p in shown["plots"]} == {"history.png", "importance.png"}

    exported = export_recipe(spec, out=in_tmp / "best.toml")
    assert exported["trial"] == shown["best"][0]["number"]
    recipe = load_recipe(str(in_tmp / "best.toml"))
    best = trials_by_state(spec, TrialState.COMPLETE)[exported["trial"]].user_attrs["recipe"]
    assert {**to_dict(recipe), "name": ""} == {**best, "name": ""}
    assert (in_tmp / "best.toml").read_text().startswith(f"# nesfgen train recipe={in_tmp / 'best.toml'}")
    again = train(load_recipe(str(in_tmp / "best.toml"), {"train.epochs": "1"}), in_tmp / "again")
    assert again.epochs_done == 1


def test_a_deliberately_bad_trial_is_pruned(tiny_dataset, in_tmp):
    # Weighting the position loss 1000 times more makes the validation loss 100s of times the others'.
    path = write_study(
        in_tmp / "prune.toml",
        tiny_dataset,
        epochs=3,
        space=['"loss.position" = [1.0, 1000.0]'],
        pruner=['type = "median"', "n_startup_trials = 2", "n_warmup_steps = 0"],
    )
    spec = load_study(str(path))
    study = open_study(spec)
    for weight in (1.0, 1.0, 1000.0):
        study.enqueue_trial({"loss.position": weight})
    result = run_study(spec, n_trials=3)
    assert result["trials"] == {"complete": 2, "pruned": 1}
    (pruned,) = trials_by_state(spec, TrialState.PRUNED)
    assert pruned.params == {"loss.position": 1000.0}
    assert list(pruned.intermediate_values) == [1]  # stopped after its first epoch of three
    record = json.loads((in_tmp / "runs" / "tune-prune" / "trial-0002" / "trial.json").read_text())
    assert record["state"] == "pruned" and record["metrics"]["epochs_done"] == 1
    assert not (in_tmp / "runs" / "tune-prune" / "trial-0002" / "best.pt").exists()


def tune_process(study, *args, cwd):
    """``nesfgen tune`` in a child that takes Ctrl-C as a terminal would (a background child ignores SIGINT)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "nesfgen", "tune", f"study={study}", *args]
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(path, process, timeout=600):
    deadline = time.monotonic() + timeout
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared: {process.communicate()[1][-2000:]}"


def test_two_workers_on_one_sqlite_file_share_the_study(cli, tiny_dataset, in_tmp):
    # Trials of about a second (the minutes budget), so one worker cannot finish the study alone
    # while the other is still importing.
    path = write_study(in_tmp / "shared.toml", tiny_dataset, epochs=100, minutes=0.015)
    workers = [tune_process(path, "n_trials=6", f"worker={k}", "--json", cwd=in_tmp) for k in (0, 1)]
    outputs = [worker.communicate(timeout=900) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), [err[-2000:] for _, err in outputs]
    ran = [json.loads(out)["ran"] for out, _ in outputs]
    assert ran[0] and ran[1] and not set(ran[0]) & set(ran[1])  # both worked, never on the same trial
    spec = load_study(str(path))
    trials = open_study(spec, create=False).get_trials(deepcopy=False)
    numbers = sorted(t.number for t in trials)
    assert numbers == sorted(ran[0] + ran[1]) == list(range(len(trials)))
    assert 6 <= len(trials) <= 7  # the second worker may finish the trial it had started
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    folders = sorted(p.name for p in (in_tmp / "runs" / "tune-shared").glob("trial-*"))
    assert folders == [f"trial-{n:04d}" for n in numbers]
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == len(trials)

    shown = cli("tune", f"study={path}", "show", cwd=in_tmp)
    assert shown.returncode == 0, shown.stderr
    assert "history.png" in shown.stdout and "complete" in shown.stdout


def test_a_killed_worker_is_resumed_and_its_trial_retried(tiny_dataset, in_tmp):
    # Each trial trains for 0.6 s of wall time (the minutes budget), long enough to be killed inside.
    # No pruner: epochs per trial depend on the machine's load, so pruning would be down to chance.
    path = write_study(in_tmp / "killed.toml", tiny_dataset, epochs=200, minutes=0.01, pruner=['type = "none"'])
    worker = tune_process(path, "n_trials=3", "--json", cwd=in_tmp)
    started = in_tmp / "runs" / "tune-killed" / "trial-0000" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not started.exists():
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGKILL)
    assert started.exists(), "the worker did not start a trial"
    worker.wait()
    spec = load_study(str(path))
    (running,) = trials_by_state(spec, TrialState.RUNNING)
    time.sleep(3.5)  # past the grace period of 2 s: the next worker sees the heartbeat is stale
    result = run_study(spec, n_trials=3)
    assert result["trials"] == {"complete": 3, "fail": 1}
    (failed,) = trials_by_state(spec, TrialState.FAIL)
    assert failed.number == running.number == 0
    retries = [t for t in trials_by_state(spec, TrialState.COMPLETE) if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].params == running.params


def test_ctrl_c_in_a_trial_exits_130_without_a_trace_and_the_trial_runs_again(tiny_dataset, in_tmp):
    # Trials of a minute, so that Ctrl-C lands inside the first; no retries, as Ctrl-C is no failure to retry.
    path = write_study(in_tmp / "stopped.toml", tiny_dataset, epochs=200, minutes=1, pruner=['type = "none"'])
    path.write_text(path.read_text().replace("seed = 0", "seed = 0\nretries = 0", 1))
    worker = tune_process(path, "n_trials=1", "--json", cwd=in_tmp)
    wait_for(in_tmp / "runs" / "tune-stopped" / "trial-0000" / "metrics.jsonl", worker)
    worker.send_signal(signal.SIGINT)
    out, err = worker.communicate(timeout=300)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "failed" not in err, err[-2000:]
    assert worker.returncode == 130 and out == "", err[-2000:]  # no half JSON document
    assert "interrupted: finished trials are stored; run the same command again (the interrupted trial runs" in err
    spec = load_study(str(path))
    (stopped,) = trials_by_state(spec, TrialState.FAIL)  # not counted among the finished trials
    (queued,) = trials_by_state(spec, TrialState.WAITING)
    assert queued.user_attrs["retry_of"] == stopped.number == 0

    short = load_study(str(write_study(path, tiny_dataset, epochs=1)))  # the same study, with shorter trials
    result = run_study(short, n_trials=1)
    assert result["ran"] == [1] and result["trials"] == {"complete": 1, "fail": 1}
    (resumed,) = trials_by_state(spec, TrialState.COMPLETE)
    assert resumed.params == stopped.params and resumed.user_attrs["retry_of"] == 0


@pytest.fixture
def optuna_records():
    """What Optuna logs: its logger does not pass records on to the root logger, where caplog listens."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("optuna").addHandler(handler)
    yield records
    logging.getLogger("optuna").removeHandler(handler)


def test_failing_trials_are_retried_then_stop_the_worker(tiny_dataset, in_tmp, monkeypatch, optuna_records):
    import nesfgen.tune.trials as trials

    path = write_study(in_tmp / "broken.toml", tiny_dataset, space=['"model.latent_size" = [8, 16, 128]'])
    path.write_text(path.read_text().replace('recipe = "quickstart"', 'recipe = "quickstart"\nbaseline = true', 1))
    spec = load_study(str(path))
    monkeypatch.setattr(trials, "train", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk on fire")))
    with pytest.raises(UserError, match="three trials in a row failed.*disk on fire"):
        run_study(spec, n_trials=2)
    failed = trials_by_state(spec, TrialState.FAIL)
    assert len(failed) == 3 and failed[1].params == failed[0].params  # trial 1 retried trial 0
    assert failed[1].user_attrs["retry_of"] == 0 and failed[1].user_attrs["baseline"]  # the baseline's retry is one
    # unlike Ctrl-C, a real failure is reported, with its trace
    reports = [r for r in optuna_records if "failed with parameters" in r.getMessage()]
    assert len(reports) == 3 and all(r.exc_info and "disk on fire" in r.getMessage() for r in reports)


def test_two_objectives_with_the_evaluator_and_nsga2(tiny_dataset, in_tmp):
    objectives = [
        "[[objectives]]",
        'metric = "val_loss"',
        "[[objectives]]",
        'metric = "cdvae_match_rate_pct"',
        "",
        "[evaluate]",
        "limit = 2",
    ]
    sampler = ['type = "nsga2"', "population_size = 2"]
    path = write_study(
        in_tmp / "two.toml", tiny_dataset, 1, objectives=objectives, sampler=sampler, pruner=["type = 'none'"]
    )
    spec = load_study(str(path))
    assert spec.directions == ["minimize", "maximize"]
    result = run_study(spec, n_trials=2)
    assert result["trials"] == {"complete": 2}
    for trial in trials_by_state(spec, TrialState.COMPLETE):
        assert trial.values[1] == trial.user_attrs["metrics"]["cdvae_match_rate_pct"]
        assert 0 <= trial.values[1] <= 100
    assert len(show_study(spec)["plots"]) == 2
    exported = export_recipe(spec, out=in_tmp / "front.toml")
    assert exported["trial"] in {row["number"] for row in result["best"]}


@pytest.mark.parametrize("name", study_names())
def test_every_shipped_study_loads_and_says_how_to_launch(name):
    spec = load_study(name)
    assert spec.name == name and spec.space and spec.objectives
    assert study_path(name).read_text().startswith(f"# nesfgen tune study={name}\n")
    assert spec.recipe.train.epochs > 0


@pytest.mark.parametrize(
    "change, message",
    [
        (('"train.lr" =', '"train.lrr" ='), "did you mean train.lr"),
        (('"model.latent_size" = [8, 16]', '"model.batch_norm" = { low = 0, high = 1 }'), "not a number setting"),
        (('"model.latent_size" = [8, 16]', '"model.latent_size" = [8, 1.5]'), "expects an integer"),
        (("low = 1e-3", "low = -1e-3"), "space: train.lr = -0.001 is not allowed"),
        (('metric = "val_loss"', 'metric = "val_los"'), "did you mean val_loss"),
        (("[budget]", "[budgte]"), "did you mean budget"),
        (('type = "median"', 'type = "medain"'), "pruner.type must be one of"),
        (("n_startup_trials = 2\n\n[pruner]", "n_startup = 2\n\n[pruner]"), r"\[sampler\] tpe"),
        (('"train.batch_size" = "8"', '"train.batch_size" = "eight"'), "expects an integer"),
    ],
)
def test_study_mistakes_fail_when_loaded(tiny_dataset, tmp_path, change, message):
    path = write_study(tmp_path / "bad.toml", tiny_dataset)
    text = path.read_text()
    assert change[0] in text
    path.write_text(text.replace(change[0], change[1], 1))
    with pytest.raises(UserError, match=message):
        load_study(str(path))


def test_a_baseline_study_runs_the_recipe_itself_first(tiny_dataset, in_tmp):
    # quickstart's own lr (1e-3) and latent size (128)
    space = ['"train.lr" = { low = 5e-4, high = 1e-2, log = true }', '"model.latent_size" = [16, 128]']
    path = write_study(in_tmp / "base.toml", tiny_dataset, epochs=1, space=space)
    path.write_text(path.read_text().replace('recipe = "quickstart"', 'recipe = "quickstart"\nbaseline = true', 1))
    spec = load_study(str(path))
    assert spec.baseline == {"train.lr": 1e-3, "model.latent_size": 128}
    run_study(spec, n_trials=2)
    rows = {row["number"]: row for row in show_study(spec)["rows"]}
    assert rows[0]["baseline"] and rows[0]["params"] == spec.baseline and not rows[1]["baseline"]

    outside = path.read_text().replace("low = 5e-4", "low = 3e-3", 1)
    path.write_text(outside)
    with pytest.raises(UserError, match="train.lr = 0.001 lies outside its search space"):
        load_study(str(path))


def test_multi_objective_studies_cannot_prune(tiny_dataset, tmp_path):
    objectives = ["[[objectives]]", 'metric = "val_position"', "[[objectives]]", 'metric = "val_species"']
    path = write_study(tmp_path / "multi.toml", tiny_dataset, objectives=objectives, sampler=['type = "nsga2"'])
    with pytest.raises(UserError, match="cannot prune"):
        load_study(str(path))


def test_show_and_export_need_a_stored_study(tiny_dataset, in_tmp):
    spec = load_study(str(write_study(in_tmp / "empty.toml", tiny_dataset)))
    with pytest.raises(UserError, match="run `nesfgen tune study=empty` first"):
        show_study(spec)
    open_study(spec)  # created, but without a trial
    with pytest.raises(UserError, match="no complete trial"):
        export_recipe(spec)
    with pytest.raises(UserError, match="cannot be opened"):
        open_study(spec, storage="nosuchdb://nowhere")


@pytest.mark.parametrize("storage", ["postgresql:/host/db", "postgresql:host/db", "mysql:/x", "sqlite:study.db"])
def test_a_storage_that_starts_like_a_url_but_is_not_one_is_refused(tiny_dataset, in_tmp, storage):
    spec = load_study(str(write_study(in_tmp / "typo.toml", tiny_dataset)))
    with pytest.raises(UserError, match="is not a valid database URL; give a database URL such as postgresql://"):
        open_study(spec, storage=storage)
    assert sorted(p.name for p in in_tmp.iterdir()) == ["tiny", "typo.toml"]  # no SQLite file of that name


def test_a_file_path_is_still_a_sqlite_storage(tiny_dataset, in_tmp):
    spec = load_study(str(write_study(in_tmp / "file.toml", tiny_dataset)))
    open_study(spec, storage="studies/my.db")
    assert (in_tmp / "studies" / "my.db").is_file()


def test_the_storage_password_is_never_shown(tiny_dataset, in_tmp):
    from nesfgen.tune import redact

    assert redact("postgresql://bob:s3cret@db.example:5432/optuna") == "postgresql://bob:***@db.example:5432/optuna"
    assert redact("sqlite:////tmp/study.db") == "sqlite:////tmp/study.db"
    path = write_study(in_tmp / "secret.toml", tiny_dataset)
    # an unreachable server (or a missing driver): the failure is reported, the password is not
    worker = tune_process(path, "n_trials=1", "storage=postgresql://bob:s3cret@127.0.0.1:9/optuna", cwd=in_tmp)
    out, err = worker.communicate(timeout=300)
    assert worker.returncode == 2, err
    assert "s3cret" not in out + err and "bob:***@127.0.0.1:9" in " ".join(err.split()).replace(" ", "")


@pytest.fixture
def postgres_url():
    """A PostgreSQL database for studies (.ci/run starts one and sets NESFGEN_TEST_POSTGRES_URL)."""
    url = os.environ.get("NESFGEN_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("no PostgreSQL server: set NESFGEN_TEST_POSTGRES_URL (.ci/run starts one)")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is not installed (pip install -e '.[dev]')")
    return url


def test_two_workers_on_postgresql_survive_one_being_killed(tiny_dataset, in_tmp, postgres_url):
    # Trials of about 1.5 s and a grace period of 2 s: the survivor starts trials after the killed worker's
    # heartbeat is stale, fails that trial and runs it again with the same parameters.
    name = f"pg{os.getpid()}x{time.time_ns() % 10**9}"  # a new study in a database that outlives the test
    path = write_study(in_tmp / f"{name}.toml", tiny_dataset, epochs=200, minutes=0.025, pruner=['type = "none"'])
    workers = [
        tune_process(path, "n_trials=4", f"worker={k}", f"storage={postgres_url}", "--json", cwd=in_tmp) for k in (0, 1)
    ]
    folder = in_tmp / "runs" / f"tune-{name}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len(list(folder.glob("trial-*/metrics.jsonl"))) < 2:
        time.sleep(0.05)
    os.kill(workers[0].pid, signal.SIGKILL)  # in the middle of a trial: both workers have one running
    workers[0].wait()
    out, err = workers[1].communicate(timeout=900)
    assert workers[1].returncode == 0, err[-2000:]
    spec = load_study(str(path))
    study = open_study(spec, storage=postgres_url, create=False)
    trials = study.get_trials(deepcopy=False)
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == failed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == failed.params
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 4
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def test_the_objective_takes_the_paper_metrics_pooled_over_atoms():
    from nesfgen.metrics import PAPER_METRICS
    from nesfgen.tune import EVALUATOR_METRICS, evaluator_metrics

    per_structure = dict.fromkeys(EVALUATOR_METRICS, 1.0)
    metrics = evaluator_metrics(per_structure | {"reference": dict.fromkeys(PAPER_METRICS, 2.0)})
    assert metrics.keys() == EVALUATOR_METRICS.keys()
    assert all(metrics[name] == 2.0 for name in PAPER_METRICS) and metrics["cdvae_rmse"] == 1.0
