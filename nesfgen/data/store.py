"""Datasets on disk: one folder with a JSON manifest and one compressed numpy file per split.

Layout of a dataset folder::

    manifest.json       format, name, species table, splits (ids, counts), provenance, content hash
    <split>.npz         lengths (S,3) angles (S,3) cart_coords (A,3) atomic_numbers (A,) offsets (S+1,)
                        and one float column per numeric property (prop_<name>, NaN where missing)

No pickle anywhere: arrays load with ``allow_pickle=False`` and everything else is JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nesfgen.crystal import Crystal
from nesfgen.errors import UserError
from nesfgen.files import output_folder, staged_folder

FORMAT = "nesfgen-dataset"
FORMAT_VERSION = 1
ARRAY_NAMES = ("lengths", "angles", "cart_coords", "atomic_numbers", "offsets")
#: split names become file names (``<split>.npz``, ``<split>/`` in exports): one plain name, no path
SPLIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


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
    """A dataset folder: its manifest, and its splits, read and checked against the manifest on first use."""

    path: Path
    manifest: Mapping[str, Any]
    _splits: dict[str, CrystalSet] = field(default_factory=dict, init=False, repr=False, compare=False)

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
        """The manifest's content hash, once the split files are checked to still have it."""
        self.verify()
        return self.manifest["content_hash"]

    def require_split(self, split: str) -> None:
        """Refuse a split this dataset does not have, naming the ones it has."""
        if split not in self.manifest["splits"]:
            raise UserError(
                f"dataset {self.name!r} ({self.path}) has no split {split!r}; it has: {', '.join(self.split_names)}"
            )

    def load(self, split: str) -> CrystalSet:
        """One split (every split is read and checked on the first call, see :meth:`verify`).

        Raises:
            UserError: if the split does not exist, or the dataset's files disagree with its manifest.
        """
        self.require_split(split)
        self.verify()
        kept = self._splits[split]  # callers get their own arrays: the checked copy stays as written
        return dataclasses.replace(
            kept,
            **{name: getattr(kept, name).copy() for name in ARRAY_NAMES},
            properties={k: v.copy() for k, v in kept.properties.items()},
        )

    def verify(self) -> Dataset:
        """Read every split and check it against the manifest: arrays, counts, ids and the content hash.

        A split file rescaled, swapped or damaged since the dataset was written is found here, before anything
        trains on it or reports on it as "this dataset". Hashing costs a few milliseconds for LCS6Å.

        Raises:
            UserError: naming the dataset, what disagrees, and how to get a sound copy.
        """
        if self._splits:
            return self
        sets = {split: self._read_split(split) for split in self.split_names}
        found = content_hash(sets)
        if found != self.manifest["content_hash"]:
            raise UserError(
                f"dataset {self.name!r} ({self.path}) does not match its manifest.json: its split files hash to "
                f"{found[:12]}, the manifest records {self.manifest['content_hash'][:12]} (a split file was changed, "
                f"rescaled or swapped after the dataset was written); {self._repair_hint()}"
            )
        self._splits.update(sets)
        return self

    def _repair_hint(self) -> str:
        sources = self.manifest.get("provenance", {}).get("sources") or []
        source = f" from {sources[0]}" if sources else ""
        return f"restore its original files, or delete {self.path} and import or fetch it again{source}"

    def _read_split(self, split: str) -> CrystalSet:
        entry = self.manifest["splits"][split]
        file = self.path / f"{split}.npz"
        where = f"dataset {self.name!r}: {file}"
        try:
            with np.load(file, allow_pickle=False) as arrays:
                loaded = {name: arrays[name] for name in arrays.files}
        except FileNotFoundError:
            raise UserError(f"{where} is missing; {self._repair_hint()}") from None
        except Exception as error:  # a damaged zip fails in many ways: BadZipFile, zlib.error, EOFError, ValueError
            raise UserError(f"{where} is damaged ({type(error).__name__}: {error}); {self._repair_hint()}") from None
        missing = [name for name in ARRAY_NAMES if name not in loaded]
        if missing:
            raise UserError(f"{where} lacks the arrays {', '.join(missing)}; {self._repair_hint()}")
        ids, count, atoms = entry["ids"], len(loaded["lengths"]), len(loaded["atomic_numbers"])
        if not count == entry["count"] == len(ids):
            raise UserError(
                f"{where} holds {count} structures but manifest.json lists {len(ids)} ids for split {split!r} "
                f"(count {entry['count']}); {self._repair_hint()}"
            )
        offsets = loaded["offsets"]
        shapes = {
            "lengths": (count, 3),
            "angles": (count, 3),
            "offsets": (count + 1,),
            "cart_coords": (atoms, 3),
            **{name: (count,) for name in loaded if name.startswith("prop_")},
        }
        wrong = [f"{name} {loaded[name].shape}" for name, shape in shapes.items() if loaded[name].shape != shape]
        if wrong or atoms != entry["atoms"] or offsets[0] != 0 or offsets[-1] != atoms or np.any(np.diff(offsets) < 0):
            raise UserError(
                f"{where}: arrays do not fit together ({', '.join(wrong) or 'offsets'}; {count} structures, {atoms} "
                f"atoms, manifest.json says {entry['atoms']} atoms); {self._repair_hint()}"
            )
        return CrystalSet(
            **{name: loaded[name] for name in ARRAY_NAMES},
            ids=tuple(ids),
            properties={k[5:]: v for k, v in loaded.items() if k.startswith("prop_")},
        )


def content_hash(sets: Mapping[str, CrystalSet]) -> str:
    """SHA-256 over split names, arrays and ids: what a manifest records and :meth:`Dataset.verify` recomputes."""
    digest = hashlib.sha256()
    for split, crystals in sets.items():
        arrays = crystals.arrays()
        digest.update(split.encode())
        for key in sorted(arrays):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(arrays[key]).tobytes())
        digest.update("\n".join(crystals.ids).encode())
    return digest.hexdigest()


def check_split_name(split: Any, where: str) -> str:
    """A split name that is a plain file name inside the dataset folder.

    Raises:
        UserError: for a name with a path separator, a leading dot (``..``), or other characters.
    """
    if not isinstance(split, str) or not SPLIT_NAME.fullmatch(split):
        raise UserError(
            f"{where}: split name {split!r} is not allowed: a split name becomes a file name in the dataset "
            "folder, so it must be 1-64 letters, digits, '_', '-' or '.', not starting with '.' (no '/' or '..')"
        )
    return split


def _check_manifest(manifest: Any, file: Path) -> None:
    """Refuse a manifest whose fields would be misread: wrong types, unsafe split names, ids not matching counts."""

    def need(ok: bool, field: str, expected: str) -> None:
        if not ok:
            raise UserError(f"{file}: field {field!r} must be {expected}")

    need(isinstance(manifest, dict), "(top level)", "a JSON object")
    if manifest.get("format") != FORMAT:
        raise UserError(f"{file}: field 'format' must be {FORMAT!r}, got {manifest.get('format')!r}")
    version = manifest.get("format_version", 0)
    need(isinstance(version, int), "format_version", "an integer")
    if version > FORMAT_VERSION:
        raise UserError(f"{file}: written by a newer nesfgen (format version {version})")
    name = manifest.get("name")
    need(
        isinstance(name, str) and name not in ("", ".", "..") and not re.search(r"[/\\\x00]", name),
        "name",
        "a plain name (no '/', '\\' or '..')",
    )
    table = manifest.get("species_table")
    need(isinstance(table, list) and all(isinstance(z, int) for z in table), "species_table", "a list of integers")
    need(isinstance(manifest.get("content_hash"), str), "content_hash", "a string")
    splits = manifest.get("splits")
    need(isinstance(splits, dict) and len(splits) > 0, "splits", "an object with at least one split")
    for split, entry in splits.items():
        check_split_name(split, f"{file}: field 'splits'")
        field = f"splits.{split}"
        need(isinstance(entry, dict), field, "an object with count, atoms and ids")
        need(
            isinstance(entry.get("ids"), list) and all(isinstance(i, str) for i in entry["ids"]),
            f"{field}.ids",
            "a list of strings",
        )
        need(isinstance(entry.get("count"), int), f"{field}.count", "an integer")
        need(isinstance(entry.get("atoms"), int), f"{field}.atoms", "an integer")
        if entry["count"] != len(entry["ids"]):
            raise UserError(
                f"{file}: field '{field}.ids' lists {len(entry['ids'])} ids but '{field}.count' is {entry['count']}: "
                "ids were added or removed by hand; restore the original manifest.json"
            )


def open_dataset(path: str | Path) -> Dataset:
    """Open a dataset folder written by :func:`write_dataset`; its split files are checked on first load.

    Raises:
        UserError: if the folder is missing, is not a nesfgen dataset, or its manifest is malformed.
    """
    path = Path(path)
    manifest_file = path / "manifest.json"
    if not manifest_file.is_file():
        raise UserError(f"{path} is not a nesfgen dataset folder (no manifest.json)")
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {manifest_file}: {error}") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{manifest_file} is not valid JSON: {error}") from None
    _check_manifest(manifest, manifest_file)
    return Dataset(path=path, manifest=manifest)


def write_dataset(
    out: str | Path,
    splits: Mapping[str, Sequence[Crystal] | CrystalSet],
    name: str,
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Dataset:
    """Write splits as a dataset folder, atomically: a marked staging folder beside ``out`` renamed into place.

    Staging folders that a killed earlier write of ``out`` left behind are removed first.

    Raises:
        UserError: if ``out`` exists (and ``overwrite`` is false), cannot be written, or a split is empty or has
            a name that is not a plain file name.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; choose another --out or remove it first")
    sets = {
        check_split_name(split, f"dataset {name!r}"): items
        if isinstance(items, CrystalSet)
        else CrystalSet.from_crystals(items)
        for split, items in splits.items()
    }
    for split, crystals in sets.items():
        if len(crystals) == 0:
            raise UserError(f"split {split!r} of dataset {name!r} is empty")
    species = sorted({int(z) for s in sets.values() for z in np.unique(s.atomic_numbers)})
    output_folder(out, "dataset folder", create=False)
    output_folder(out.parent, "dataset folder's parent")
    with staged_folder(out, "dataset folder") as staging:
        manifest_splits = {}
        for split, crystals in sets.items():
            np.savez_compressed(staging / f"{split}.npz", **crystals.arrays())
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
            "content_hash": content_hash(sets),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return open_dataset(out)


def data_dir() -> Path:
    """Where named datasets live: ``$NESFGEN_DATA_DIR`` or the user cache folder."""
    if os.environ.get("NESFGEN_DATA_DIR"):
        return Path(os.environ["NESFGEN_DATA_DIR"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "nesfgen" / "datasets"
