"""Output folders checked before work starts, safe and distinct file names, staging left by killed writers."""

import json
import os
import subprocess
import sys

import pytest

from nesfgen.errors import UserError
from nesfgen.files import (
    STAGING_MARKER,
    output_folder,
    remove_stale_staging,
    safe_file_stems,
    staged_folder,
    staging_folder,
)


def test_file_stems_stay_inside_and_never_collide():
    ids = ["a/b", "a_b", "/abs/path/victim", "../../x", "..", ".hidden", "", "Mp-1", "mp-1", "x" * 300, "a/b"]
    stems = safe_file_stems(ids)
    assert len({s.casefold() for s in stems}) == len(ids)  # distinct, even on a case-insensitive file system
    for stem in stems:
        assert stem and "/" not in stem and "\\" not in stem and not stem.startswith(".") and len(stem) <= 140
    assert stems[1] == "a_b" and stems[7] == "Mp-1"  # plain ids keep their name
    assert stems[0].startswith("a_b-") and stems[8].startswith("mp-1-")
    assert safe_file_stems(ids) == stems  # deterministic
    assert safe_file_stems(["a_b", "a/b"]) == [stems[1], stems[0]]  # a name's stem does not depend on order


def test_output_folder_reasons(tmp_path, unwritable_folder):
    (tmp_path / "afile").write_text("x")
    cases = [
        (tmp_path / "afile" / "out", "afile is a file, not a folder"),
        (tmp_path / ("n" * 300) / "out", "too long"),
        (unwritable_folder, "cannot write the output folder"),
    ]
    for path, reason in cases:
        for create in (False, True):
            with pytest.raises(UserError, match=reason):
                output_folder(path, create=create)
    assert output_folder(tmp_path / "new" / "deep", create=False) == tmp_path / "new" / "deep"
    assert not (tmp_path / "new").exists()  # only checked
    assert output_folder(tmp_path / "new" / "deep").is_dir()


def test_only_staging_of_dead_writers_is_removed(tmp_path):
    out = tmp_path / "data" / "lcs6"
    out.parent.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = staging_folder(out)
    marker = json.loads((stale / STAGING_MARKER).read_text())
    (stale / STAGING_MARKER).write_text(json.dumps({**marker, "pid": int(dead.stdout)}))
    live = staging_folder(out)  # this process: still writing
    other = staging_folder(tmp_path / "data" / "lcs6-other")  # another target's
    unmarked = out.parent / f".lcs6.nesfgen-staging-{os.getpid()}"
    unmarked.mkdir()  # not ours to judge: no marker
    assert remove_stale_staging(out) == [stale]
    assert not stale.exists() and live.is_dir() and other.is_dir() and unmarked.is_dir()


def test_a_staged_folder_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(out, "dataset folder") as staging:
        (staging / "new.txt").write_text("half")
        raise RuntimeError("killed halfway")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"] and (out / "old.txt").read_text() == "old"
    with staged_folder(out, "dataset folder") as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]  # the old folder replaced, no staging left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    real_replace = os.replace

    def swap_fails(src, dst):  # the old folder moves aside, then the new one cannot move in
        if "nesfgen-staging" in os.path.basename(src):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", swap_fails)
    with pytest.raises(UserError, match=r"cannot write the dataset folder .*ds: no space left"):
        with staged_folder(out, "dataset folder") as staging:
            (staging / "newer.txt").write_text("newer")
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]  # put back where it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_a_staged_folder_without_replace_refuses_a_folder_that_filled_meanwhile(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    with pytest.raises(UserError, match="cannot write the export folder"):
        with staged_folder(out, "export folder", replace=False) as staging:
            (staging / "a.cif").write_text("cif")
            (out / "mine.txt").write_text("the user's")  # written while the export ran
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"] and len(list(tmp_path.iterdir())) == 1
    out.joinpath("mine.txt").unlink()
    with staged_folder(out, "export folder", replace=False) as staging:
        (staging / "a.cif").write_text("cif")
    assert sorted(p.name for p in out.iterdir()) == ["a.cif"]


def test_a_failed_text_or_prior_write_keeps_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    import errno

    import torch

    from nesfgen.files import atomic_write_text
    from nesfgen.prior import PriorConfig, fit_prior, save_prior

    summary, prior_path = tmp_path / "summary.json", tmp_path / "prior.pt"
    atomic_write_text(summary, "old")
    prior = fit_prior(torch.randn(4, 3), PriorConfig(hidden=4, layers=1, steps=1, ode_steps=1, threads=1), [8])
    save_prior(prior, prior_path)
    before = prior_path.read_bytes()

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(UserError, match=f"cannot write the file {summary}: no space left on the device"):
        atomic_write_text(summary, "new")
    with pytest.raises(UserError, match="cannot write the latent prior .*prior.pt: no space left"):
        save_prior(prior, prior_path)
    monkeypatch.undo()
    assert summary.read_text() == "old" and prior_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prior.pt", "summary.json"]
