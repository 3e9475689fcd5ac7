import pytest

from nesfgen.errors import UserError
from nesfgen.run_folder import RUN_HEADER, check_new_run_dir, new_run_dir, resume_hint


def test_out_folders_a_new_run_may_use(tmp_path):
    check_new_run_dir(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_new_run_dir(tmp_path / "empty")
    stopped = tmp_path / "stopped"  # what a run killed in its first epoch leaves
    stopped.mkdir()
    (stopped / "config.toml").write_text(f"{RUN_HEADER}{stopped / 'config.toml'}\n[train]\n")
    (stopped / "machine.json").write_text("{}")
    check_new_run_dir(stopped)
    (stopped / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already holds files"):
        check_new_run_dir(stopped)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="afile is a file, not a folder"):
        check_new_run_dir(tmp_path / "afile" / "run")


def test_default_run_folders_are_named_by_recipe_under_runs():
    folder = new_run_dir("fast-lcs6")
    assert folder.parent.name == "runs" and folder.name.startswith("fast-lcs6-")


def test_the_interrupt_hint_says_whether_there_is_anything_to_resume(tmp_path):
    assert "run the command again" in resume_hint(tmp_path)
    (tmp_path / "last.pt").write_bytes(b"")
    assert f"nesfgen train resume={tmp_path}" in resume_hint(tmp_path)
