"""Output folders checked before work starts, safe and distinct file names, staging left by killed writers."""

import json
import os
import subprocess
import sys

import pytest

from nesfgen.errors import UserError
from nesfgen.files import STAGING_MARKER, output_folder, remove_stale_staging, safe_file_stems, staging_folder


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
