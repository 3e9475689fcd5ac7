"""Shared fixtures: tiny crystals by formula, the paper-data folder, a seeded RNG, the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nesfgen.config import load_recipe
from nesfgen.crystal import Crystal
from nesfgen.data.store import write_dataset


def rock_salt(a: float = 5.64, cation: int = 11, anion: int = 17, id: str = "NaCl") -> Crystal:
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    frac = np.concatenate([base, (base + 0.5) % 1.0])
    return Crystal.create([a] * 3, [90] * 3, atomic_numbers=[cation] * 4 + [anion] * 4, frac_coords=frac, id=id)


def zinc_blende(a: float = 5.41, cation: int = 30, anion: int = 16, id: str = "ZnS") -> Crystal:
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    frac = np.concatenate([base, base + 0.25])
    return Crystal.create([a] * 3, [90] * 3, atomic_numbers=[cation] * 4 + [anion] * 4, frac_coords=frac, id=id)


def cesium_chloride(a: float = 4.12, id: str = "CsCl") -> Crystal:
    return Crystal.create([a] * 3, [90] * 3, atomic_numbers=[55, 17], frac_coords=[[0, 0, 0], [0.5, 0.5, 0.5]], id=id)


def perovskite(a: float = 3.905, id: str = "SrTiO3") -> Crystal:
    frac = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return Crystal.create([a] * 3, [90] * 3, atomic_numbers=[38, 22, 8, 8, 8], frac_coords=frac, id=id)


def monoclinic(id: str = "mono") -> Crystal:
    return Crystal.create(
        [4.1, 5.3, 4.7],
        [90, 103.5, 90],
        atomic_numbers=[12, 8, 8],
        frac_coords=[[0.1, 0.2, 0.3], [0.6, 0.7, 0.2], [0.4, 0.1, 0.8]],
        id=id,
    )


TINY = {"NaCl": rock_salt, "ZnS": zinc_blende, "CsCl": cesium_chloride, "SrTiO3": perovskite, "mono": monoclinic}


def recording():
    """A ``decoding`` callback that keeps each bar's label and every (done, total) reported to it, in order."""
    bars = []

    def decoding(label):
        counts = []
        bars.append((label, counts))
        return lambda done, total: counts.append((done, total))

    return bars, decoding


@pytest.fixture
def tiny_crystals() -> dict[str, Crystal]:
    """A few small textbook crystals by formula."""
    return {name: make() for name, make in TINY.items()}


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def paper_data() -> Path:
    """The paper's released datasets (NESFGEN_PAPER_DATA); tests using this skip when absent."""
    root = os.environ.get("NESFGEN_PAPER_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("paper datasets not available: set NESFGEN_PAPER_DATA to the nesf-paper folder")
    return Path(root)


TINY_MODEL = {
    "model.latent_size": "16",
    "model.encoder_position_widths": "8,16",
    "model.encoder_species_widths": "16",
    "model.encoder_mix_width": "32",
    "model.encoder_head_widths": "32",
    "model.position_widths": "32,32,32",
    "model.species_widths": "32",
    "model.lattice_hidden": "16",
    "sampling.global_interval": "2.0",
    "sampling.query_fraction": "1.0",
    "train.precision": "fp32",
    "train.lr_schedule": "step",
    "train.lr_decay_every": "640",
    # what the quickstart recipe spends on speed and accuracy, which tiny runs do not need
    "sampling.global_query_fraction": "none",
    "train.compile": "false",
    "train.time_limit_minutes": "0",
    "train.lattice_refit_epochs": "0",
    "estimator.precision": "fp32",
}


@pytest.fixture
def tiny_dataset(tmp_path):
    """60 small crystals (5 prototypes × 12 scales) split 48 / 6 / 6."""
    crystals = []
    for k in range(12):
        for name, make in TINY.items():
            base = make()
            scale = 1.0 + 0.01 * k
            crystals.append(
                Crystal.create(
                    base.lengths * scale,
                    base.angles,
                    atomic_numbers=base.atomic_numbers,
                    frac_coords=base.frac_coords,
                    id=f"{name}-{k}",
                )
            )
    return write_dataset(
        tmp_path / "tiny", {"train": crystals[:48], "val": crystals[48:54], "test": crystals[54:]}, name="tiny"
    )


def tiny_recipe(dataset, **extra):
    overrides = {"data.name": str(dataset.path), "train.batch_size": "8", "train.epochs": "2", **TINY_MODEL}
    overrides.update({k: str(v) for k, v in extra.items()})
    return load_recipe("quickstart", overrides)


@pytest.fixture(autouse=True)
def isolated_data_dir(tmp_path, monkeypatch):
    """Every test gets its own data directory, so nothing touches the user's cache."""
    monkeypatch.setenv("NESFGEN_DATA_DIR", str(tmp_path / "nesfgen-data"))


@pytest.fixture
def cli():
    """Run ``python -m nesfgen ARGS`` in a subprocess, as a user does: exit code, stdout and stderr.

    The process gets the test's ``os.environ`` (set or drop variables with monkeypatch), so it uses the
    test's own data directory. It is passed explicitly: libraries imported by the tests may set variables
    such as COLUMNS at the C level, where os.environ does not see them but a child would inherit them.
    """

    def run(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "nesfgen", *args]
        return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=dict(os.environ), timeout=timeout)

    return run


@pytest.fixture
def unwritable_folder(tmp_path) -> Path:
    """A folder nothing may be written into: a read-only folder, or under /sys where even root cannot write."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    candidates = [folder / "out", Path("/sys") / f"nesfgen-test-{os.getpid()}"]
    for candidate in candidates:
        try:
            candidate.mkdir()
        except OSError:
            yield candidate
            break
        candidate.rmdir()  # writable after all (root ignores permission bits)
    else:
        pytest.skip("no unwritable folder on this machine (root, and no read-only /sys)")
    folder.chmod(0o755)
