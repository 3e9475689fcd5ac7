"""Atomic writes: a temporary sibling file renamed into place, so readers never see half a file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str) -> Path:
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path


def new_figure(columns: int, width: float, height: float, rows: int = 1) -> tuple[Any, Any]:
    """A matplotlib figure with a grid of axes (one row by default), on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, columns, figsize=(width, height))


def save_figure(figure: Any, path: Path, dpi: int = 90) -> Path:
    """Write a figure as PNG atomically and release it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    figure.tight_layout()
    temporary = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(temporary, dpi=dpi)
    plt.close(figure)
    os.replace(temporary, path)
    return path
