"""Fault injection at tiny size: Ctrl-C, SIGKILL and a full disk in the middle of real commands.

In every case what was saved before stays intact and the next run continues, or the message says what to
do. (A worker killed in the middle of a tuning trial: tests/test_tune.py, on SQLite and on PostgreSQL.)
"""

import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
from conftest import TINY_MODEL, rock_salt, zinc_blende

from nesfgen.checkpoint import read_checkpoint

TRAIN = [f"{key}={value}" for key, value in TINY_MODEL.items()] + ["train.batch_size=8"]


def start(*args, cwd, limit_file_size=None):
    """``nesfgen ARGS`` in a child that takes Ctrl-C as a terminal would (and, optionally, a file-size limit)."""

    def prepare():
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background child would otherwise ignore SIGINT
        if limit_file_size is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    command = [sys.executable, "-m", "nesfgen", *args]
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=prepare
    )


def wait_for(path, process, timeout=600):
    deadline = time.monotonic() + timeout
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared: {process.communicate()[1][-2000:]}"


def test_ctrl_c_during_training_exits_130_and_says_how_to_resume(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    train = start(
        "train", f"data.name={tiny_dataset.path}", "train.epochs=500", f"out={run}", *TRAIN, "--json", cwd=tmp_path
    )
    wait_for(run / "last.pt", train)
    train.send_signal(signal.SIGINT)
    out, err = train.communicate(timeout=300)
    assert train.returncode == 130, err[-2000:]
    assert out == ""  # nothing claims success; no half JSON document
    assert f"interrupted: the last finished epoch is saved; continue with: nesfgen train resume={run}" in err
    assert "Traceback" not in err
    saved = read_checkpoint(run / "last.pt")["epoch"]
    resumed = start("train", f"resume={run}", f"train.epochs={saved + 1}", "--json", cwd=tmp_path)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert json.loads(out)["epochs"] == saved + 1


def test_sigkill_during_training_keeps_the_last_checkpoint_whole(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    train = start("train", f"data.name={tiny_dataset.path}", "train.epochs=500", f"out={run}", *TRAIN, cwd=tmp_path)
    wait_for(run / "last.pt", train)
    time.sleep(0.3)  # somewhere in a later epoch, perhaps in the middle of writing a checkpoint
    train.kill()
    train.wait()
    assert read_checkpoint(run / "last.pt")["epoch"] >= 1  # a whole checkpoint, never half a file
    refused = start("train", f"data.name={tiny_dataset.path}", f"out={run}", *TRAIN, cwd=tmp_path)
    _, err = refused.communicate(timeout=300)
    assert refused.returncode == 2 and f"nesfgen train resume={run}" in err  # says how to continue


def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_one(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    first = start("train", f"data.name={tiny_dataset.path}", "train.epochs=1", f"out={run}", *TRAIN, cwd=tmp_path)
    assert first.wait(timeout=600) == 0, first.communicate()[1][-2000:]
    before = (run / "last.pt").read_bytes()
    # room for the small files, not for another checkpoint
    full = start("train", f"resume={run}", "train.epochs=2", cwd=tmp_path, limit_file_size=len(before) // 2)
    _, err = full.communicate(timeout=600)
    assert full.returncode == 2 and "exceed the file-size limit" in err and "Traceback" not in err, err[-2000:]
    assert (run / "last.pt").read_bytes() == before  # the previous checkpoint, untouched
    assert not [p.name for p in run.iterdir() if p.name.startswith(".last.pt.")]  # no half-written temp file
    again = start("train", f"resume={run}", "train.epochs=2", "--json", cwd=tmp_path)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0 and json.loads(out)["epochs"] == 2, err[-2000:]


@pytest.fixture
def tiny_vae(tiny_dataset, tmp_path):
    run = tmp_path / "vae"
    train = start(
        "train",
        f"data.name={tiny_dataset.path}",
        "model.variational=true",
        "train.epochs=1",
        f"out={run}",
        *TRAIN,
        cwd=tmp_path,
    )
    assert train.wait(timeout=600) == 0, train.communicate()[1][-2000:]
    return run


@pytest.mark.parametrize("how", ["ctrl-c", "sigkill"])
def test_an_interrupted_sampling_continues_where_it_stopped(tiny_vae, tmp_path, how):
    out = tmp_path / "samples"
    # few samples (measuring an untrained model's junk decodes is costly), each slow enough to be interrupted
    args = ("sample", f"checkpoint={tiny_vae}", "n=12", "estimator.steps=64", "estimator.chunk_size=1", f"out={out}")
    sample = start(*args, "--json", cwd=tmp_path)
    wait_for(out / "progress" / "chunk-00000002.json", sample)
    if how == "ctrl-c":
        sample.send_signal(signal.SIGINT)
        stdout, err = sample.communicate(timeout=300)
        assert sample.returncode == 130 and stdout == "", err[-2000:]
        assert f"the samples decoded so far are saved in {out}; run the same command again to continue" in err
    else:
        sample.kill()
        sample.wait()
    saved = sorted(p.name for p in (out / "progress").glob("chunk-*.json"))
    assert len(saved) >= 2 and not (out / "summary.json").exists()
    again = start(*args, "--json", cwd=tmp_path)
    stdout, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-2000:]
    assert json.loads(stdout)["n"] == 12 and len(list((out / "progress").glob("chunk-*.json"))) == 12


def test_sigkill_during_an_import_leaves_nothing_half_made(tmp_path):
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    for k in range(150):
        (cifs / f"nacl{k}.cif").write_text(rock_salt(5.6 + 0.001 * k).to_cif())
        (cifs / f"zns{k}.cif").write_text(zinc_blende(5.4 + 0.001 * k).to_cif())
    out = tmp_path / "ds"
    importing = start("data", "import", str(cifs), "--format", "cif", "--out", str(out), cwd=tmp_path)
    time.sleep(4)  # parsing the files
    importing.kill()
    importing.wait()
    if out.exists():  # it had finished: then it is whole
        assert json.loads((out / "manifest.json").read_text())["format"] == "nesfgen-dataset"
    else:
        again = start("data", "import", str(cifs), "--format", "cif", "--out", str(out), "--json", cwd=tmp_path)
        stdout, err = again.communicate(timeout=600)
        assert again.returncode == 0, err[-2000:]
        assert sum(json.loads(stdout)[0]["imported"].values()) == 300
