"""Datasets on disk: one folder with a JSON manifest and one compressed numpy file per split.

Layout of a dataset folder::

    manifest.json       format, name, species table, splits (ids, counts), provenance, content hash
    <split>.npz         lengths (S,3) angles (S,3) cart_coords (A,3) atomic_numbers (A,) offsets (S+1,)
                        and one float column per numeric property (prop_<name>, NaN where missing)

No pickle anywhere: arrays load with ``allow_pickle=False`` and everything else is JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nesfgen.crystal import Crystal
from nesfgen.errors import UserError

FORMAT = "nesfgen-dataset"
FORMAT_VERSION = 1
ARRAY_NAMES = ("lengths", "angles", "cart_coords", "atomic_numbers", "offsets")


@dataclass(frozen=True)
class CrystalSet:
    """The crystals of one split as flat arrays; indexing builds a :class:`Crystal` on demand."""

    lengths: np.ndarray  # (S, 3)
    angles: np.ndarray  # (S, 3) degrees
    cart_coords: np.ndarray  # (A, 3) all atoms, structure after structure
    atomic_numbers: np.ndarray  # (A,)
    offsets: np.ndarray  # (S + 1,) atoms of structure i are offsets[i]:offsets[i+1]
    ids: tuple[str, ...]
    properties: Mapping[str, np.ndarray] = field(default_factory=dict)  # name -> (S,) float

    @classmethod
    def from_crystals(cls, crystals: Sequence[Crystal]) -> CrystalSet:
        counts = np.array([c.num_atoms for c in crystals], dtype=np.int64)
        names = sorted({k for c in crystals for k, v in c.properties.items() if _is_number(v)})
        return cls(
            lengths=np.array([c.lengths for c in crystals], dtype=np.float64).reshape(-1, 3),
            angles=np.array([c.angles for c in crystals], dtype=np.float64).reshape(-1, 3),
            cart_coords=np.concatenate([c.cart_coords for c in crystals]) if crystals else np.zeros((0, 3)),
            atomic_numbers=np.concatenate([c.atomic_numbers for c in crystals]).astype(np.int64)
            if crystals
            else np.zeros(0, dtype=np.int64),
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            ids=tuple(c.id for c in crystals),
            properties={name: np.array([float(c.properties.get(name, np.nan)) for c in crystals]) for name in names},
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Crystal:
        start, stop = self.offsets[index], self.offsets[index + 1]
        properties = {k: float(v[index]) for k, v in self.properties.items() if np.isfinite(v[index])}
        # Records on disk were validated when written, so skip Crystal.create's checks here.
        return Crystal(
            lengths=self.lengths[index],
            angles=self.angles[index],
            cart_coords=self.cart_coords[start:stop],
            atomic_numbers=self.atomic_numbers[start:stop],
            id=self.ids[index],
            properties=properties,
        )

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def num_atoms(self) -> np.ndarray:
        """(S,) atoms per cell."""
        return np.diff(self.offsets)

    def subset(self, indices: Iterable[int]) -> CrystalSet:
        return CrystalSet.from_crystals([self[int(i)] for i in indices])

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {name: getattr(self, name) for name in ARRAY_NAMES}
        arrays.update({f"prop_{k}": v for k, v in self.properties.items()})
        return arrays


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Dataset:
    """A dataset folder: its manifest, and its splits loaded on request."""

    path: Path
    manifest: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def species_table(self) -> list[int]:
        """Sorted atomic numbers present in the dataset: the species index of the model."""
        return list(self.manifest["species_table"])

    @property
    def split_names(self) -> list[str]:
        return list(self.manifest["splits"])

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    def load(self, split: str) -> CrystalSet:
        """Load one split.

        Raises:
            UserError: if the split does not exist.
        """
        if split not in self.manifest["splits"]:
            raise UserError(
                f"dataset {self.name!r} ({self.path}) has no split {split!r}; it has: {', '.join(self.split_names)}"
            )
        file = self.path / f"{split}.npz"
        try:
            with np.load(file, allow_pickle=False) as arrays:
                loaded = {name: arrays[name] for name in arrays.files}
        except (OSError, ValueError) as error:
            raise UserError(f"cannot read {file}: {error}") from None
        return CrystalSet(
            **{name: loaded[name] for name in ARRAY_NAMES},
            ids=tuple(self.manifest["splits"][split]["ids"]),
            properties={k[5:]: v for k, v in loaded.items() if k.startswith("prop_")},
        )


def open_dataset(path: str | Path) -> Dataset:
    """Open a dataset folder written by :func:`write_dataset`.

    Raises:
        UserError: if the folder is missing or is not a nesfgen dataset.
    """
    path = Path(path)
    manifest_file = path / "manifest.json"
    if not manifest_file.is_file():
        raise UserError(f"{path} is not a nesfgen dataset folder (no manifest.json)")
    try:
        manifest = json.loads(manifest_file.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{manifest_file} is not valid JSON: {error}") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{manifest_file}: field 'format' must be {FORMAT!r}, got {manifest.get('format')!r}")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{manifest_file}: written by a newer nesfgen (format version {manifest['format_version']})")
    return Dataset(path=path, manifest=manifest)


def write_dataset(
    out: str | Path,
    splits: Mapping[str, Sequence[Crystal] | CrystalSet],
    name: str,
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Dataset:
    """Write splits as a dataset folder, atomically: a temporary sibling folder renamed into place.

    Raises:
        UserError: if ``out`` exists (and ``overwrite`` is false) or a split is empty.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; choose another --out or remove it first")
    sets = {
        split: items if isinstance(items, CrystalSet) else CrystalSet.from_crystals(items)
        for split, items in splits.items()
    }
    for split, crystals in sets.items():
        if len(crystals) == 0:
            raise UserError(f"split {split!r} of dataset {name!r} is empty")
    species = sorted({int(z) for s in sets.values() for z in np.unique(s.atomic_numbers)})
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        digest = hashlib.sha256()
        manifest_splits = {}
        for split, crystals in sets.items():
            arrays = crystals.arrays()
            np.savez_compressed(staging / f"{split}.npz", **arrays)
            digest.update(split.encode())
            for key in sorted(arrays):
                digest.update(key.encode())
                digest.update(np.ascontiguousarray(arrays[key]).tobytes())
            digest.update("\n".join(crystals.ids).encode())
            manifest_splits[split] = {
                "count": len(crystals),
                "atoms": int(crystals.offsets[-1]),
                "ids": list(crystals.ids),
            }
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": name,
            "species_table": species,
            "splits": manifest_splits,
            "provenance": dict(provenance or {}),
            "content_hash": digest.hexdigest(),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if out.exists():
            backup = out.with_name(f".{out.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(out, backup)
            os.replace(staging, out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return open_dataset(out)


def data_dir() -> Path:
    """Where named datasets live: ``$NESFGEN_DATA_DIR`` or the user cache folder."""
    if os.environ.get("NESFGEN_DATA_DIR"):
        return Path(os.environ["NESFGEN_DATA_DIR"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "nesfgen" / "datasets"
