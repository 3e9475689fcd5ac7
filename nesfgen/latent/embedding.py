"""Latents of a dataset's structures with the attributes a map is coloured by, saved so a map needs no model."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nesfgen.checkpoint import DEFAULT_MODEL, load_model
from nesfgen.data.names import resolve_dataset
from nesfgen.decoder import encode
from nesfgen.errors import UserError
from nesfgen.files import atomic_write_bytes, atomic_write_text, output_folder
from nesfgen.symmetry import STATED_SYMPREC, space_group_number


@dataclass
class Embedding:
    """The latents of a dataset's structures, with the attributes the maps are coloured by."""

    ids: list[str]
    splits: list[str]
    formulas: list[str]
    latents: np.ndarray  # (S, D)
    volume: np.ndarray  # (S,) Å³
    num_atoms: np.ndarray  # (S,)
    space_group: np.ndarray  # (S,) spglib number, 0 where none was found
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def embed(
    checkpoint: str | None = None,
    data: str | None = None,
    split: str = "test",
    device: str = "cpu",
    symprec: float = STATED_SYMPREC,
) -> Embedding:
    """Latents of one split (or ``all`` splits) of a dataset, with id, formula, volume, atoms and space group.

    Args:
        checkpoint: run folder, .pt file or shipped model name; None means the shipped default model.
        data: dataset name or folder; None means the dataset the model was trained on.
    """
    trained = load_model(checkpoint or DEFAULT_MODEL, device)
    dataset = resolve_dataset(data or trained.recipe.data.dataset_name)
    splits = dataset.split_names if split == "all" else [split]
    parts = [(name, dataset.load(name)) for name in splits]
    crystals = [c for _, part in parts for c in part]
    if not crystals:
        raise UserError(f"split {split!r} of dataset {dataset.name!r} is empty")
    latents = torch.cat([encode(trained, part) for _, part in parts if len(part)]).cpu().numpy()  # (S, D)
    return Embedding(
        ids=[c.id for c in crystals],
        splits=[name for name, part in parts for _ in range(len(part))],
        formulas=[c.reduced_formula for c in crystals],
        latents=latents.astype(np.float32),
        volume=np.array([c.volume for c in crystals]),
        num_atoms=np.array([c.num_atoms for c in crystals]),
        space_group=np.array([space_group_number(c, symprec) for c in crystals]),
        meta={"checkpoint": trained.path, "dataset": dataset.name, "split": split, "symprec": symprec},
    )


def latents_file(path: str | Path) -> Path:
    """``path`` if it names a latents file nesfgen writes (.npz arrays or .csv rows), else a UserError."""
    path = Path(path)
    if path.suffix not in (".npz", ".csv"):
        raise UserError(f"out={path}: the latents file must end in .npz or .csv")
    return path


def save_embedding(embedding: Embedding, path: Path) -> Path:
    """Write latents as ``.npz`` (arrays, no pickle) or ``.csv`` (one row per structure, columns z0 … z{D-1})."""
    path = latents_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = attribute_columns(embedding)
    if path.suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow([*columns, *(f"z{k}" for k in range(embedding.latents.shape[1]))])
        for index in range(len(embedding)):
            values = [columns[name][index] for name in columns]
            writer.writerow([*values, *(f"{x:.7g}" for x in embedding.latents[index])])
        return atomic_write_text(path, buffer.getvalue())
    archive = io.BytesIO()
    np.savez_compressed(
        archive,
        latents=embedding.latents,
        **{name: np.asarray(values) for name, values in columns.items()},
        meta=np.array(json.dumps(embedding.meta)),
    )
    return atomic_write_bytes(path, archive.getbuffer(), "the latents file")


def attribute_columns(embedding: Embedding) -> dict[str, list[Any]]:
    """Each structure's attributes as named columns: the same in the latents file and in ``map.csv``."""
    return {
        "id": list(embedding.ids),
        "split": list(embedding.splits),
        "formula": list(embedding.formulas),
        "volume": [round(float(v), 4) for v in embedding.volume],
        "num_atoms": [int(n) for n in embedding.num_atoms],
        "space_group": [int(g) for g in embedding.space_group],
    }


def load_embedding(path: Path) -> Embedding:
    """Read a latents file written by :func:`save_embedding`.

    Raises:
        UserError: naming the file when it is missing or not a latents file.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give the latents file in it (nesfgen embed writes LATENTS.npz)")
    if not path.is_file():
        raise UserError(f"latents file {path} does not exist (write one with `nesfgen embed ... out={path}`)")
    embedding = _read_embedding(path)
    if not np.isfinite(embedding.latents).all():
        bad = int((~np.isfinite(embedding.latents).all(axis=1)).sum())
        raise UserError(
            f"{path}: {bad} of {len(embedding)} latents hold NaN or infinity (a model whose training diverged?); "
            "a map needs finite latents"
        )
    return embedding


def _read_embedding(path: Path) -> Embedding:
    """The file's contents as they are, or a UserError naming it."""
    try:
        if path.suffix == ".csv":
            with path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
            if not rows:
                raise UserError("it has no rows")
            dims = sorted((k for k in rows[0] if k[:1] == "z" and k[1:].isdigit()), key=lambda k: int(k[1:]))
            return Embedding(
                ids=[r["id"] for r in rows],
                splits=[r["split"] for r in rows],
                formulas=[r["formula"] for r in rows],
                latents=np.array([[float(r[k]) for k in dims] for r in rows], dtype=np.float32),
                volume=np.array([float(r["volume"]) for r in rows]),
                num_atoms=np.array([int(r["num_atoms"]) for r in rows]),
                space_group=np.array([int(r["space_group"]) for r in rows]),
                meta={"source": str(path)},
            )
        if path.suffix != ".npz":
            raise UserError("expected a .npz or .csv latents file")
        with np.load(path, allow_pickle=False) as arrays:
            return Embedding(
                ids=[str(x) for x in arrays["id"]],
                splits=[str(x) for x in arrays["split"]],
                formulas=[str(x) for x in arrays["formula"]],
                latents=arrays["latents"],
                volume=arrays["volume"],
                num_atoms=arrays["num_atoms"],
                space_group=arrays["space_group"],
                meta=json.loads(str(arrays["meta"])),
            )
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    except (KeyError, ValueError, OSError) as error:
        # numpy's own message for object arrays suggests loading them unsafely: say what the file is instead
        why = "it holds Python objects, which are not loaded" if "allow_pickle" in str(error) else str(error)
        raise UserError(f"{path} is not a latents file written by `nesfgen embed` ({why})") from None


@dataclass(frozen=True, kw_only=True)
class EmbedOptions:
    """Whose latents, of which dataset split (or ``all``), written where (None: runs/latents-DATASET-SPLIT.npz)."""

    checkpoint: str | None = None
    data: str | None = None
    split: str = "test"
    out: str | None = None
    device: str = "cpu"


def embed_to_file(options: EmbedOptions) -> dict[str, Any]:
    """Encode a split and save its latents with ids and attributes; returns what was written."""
    if options.out:  # a wrong name or a folder that cannot be written is said before the encoding, not after
        output_folder(latents_file(options.out).parent, "latents folder", create=False)
    embedding = embed(options.checkpoint, options.data, options.split, options.device)
    out = Path(options.out or Path("runs") / f"latents-{embedding.meta['dataset']}-{options.split}.npz")
    save_embedding(embedding, out)
    return {**embedding.meta, "structures": len(embedding), "latent_size": embedding.latents.shape[1], "out": str(out)}
