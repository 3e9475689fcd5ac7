"""README's Python example is what a newcomer copies first: it must run as printed."""

import re
import runpy
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_example_runs_and_prints_what_its_comment_says(tmp_path, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    runpy.run_path(str(script), run_name="__main__")
    printed = capsys.readouterr().out.split()
    expected = re.search(r"print\(.*\)  # (.*)\n", blocks[0]).group(1).split()
    assert (printed[0], printed[-1]) == (expected[0], expected[-1])  # formula and space group
    lengths = [float(x.strip("[]")) for x in printed[1:-1] if x.strip("[]")]
    assert lengths == pytest.approx([float(x.strip("[]")) for x in expected[1:-1] if x.strip("[]")], abs=0.01)
