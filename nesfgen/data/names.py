"""Datasets by name: ``builtin``, the paper's (``lcs6``, ``icsg3d``, ``ybco-fold3``), those derived from them, or a folder."""

from __future__ import annotations

import re
from pathlib import Path

from nesfgen.data.store import Dataset, data_dir, open_dataset
from nesfgen.errors import UserError

PAPER_NAMES = ("lcs6", "icsg3d", *(f"ybco-fold{k}" for k in range(20)))
#: built from the paper's datasets on first use (nesfgen.data.standin.DERIVED)
DERIVED_NAMES = ("icsg3d-standin", "lcs6-minus-icsg3d")


def resolve_dataset(name_or_path: str) -> Dataset:
    """Open a dataset given its name or its folder.

    Raises:
        UserError: naming where it looked and how to get the dataset.
    """
    if name_or_path == "builtin":
        from nesfgen.data.builtin import builtin_dataset

        return builtin_dataset()
    if name_or_path in DERIVED_NAMES:
        from nesfgen.data.standin import DERIVED

        return DERIVED[name_or_path]()
    path = Path(name_or_path).expanduser()
    plain_name = re.fullmatch(r"[A-Za-z0-9_.-]+", name_or_path) is not None
    # A folder of the same name in the working directory (a runs folder called lcs6/) does not hide the
    # named dataset unless it is a dataset itself.
    if path.is_dir() and (not plain_name or (path / "manifest.json").is_file()):
        return open_dataset(path)
    if plain_name:
        named = data_dir() / name_or_path
        if named.is_dir():
            return open_dataset(named)
        if path.is_dir():
            return open_dataset(path)
        how = (
            "import the paper's released files once with `nesfgen data import PATH/nesf-paper --format paper` "
            "(PATH/nesf-paper holds the dataset_* folders)"
            if name_or_path in PAPER_NAMES
            else "import it with `nesfgen data import SRC --format paper|cif|cdvae-csv --out DIR`, "
            "or build it from the Materials Project with `nesfgen data fetch`"
        )
        raise UserError(
            f"dataset {name_or_path!r} not found: it is neither a folder nor a dataset in the data directory "
            f"{data_dir()} (set NESFGEN_DATA_DIR to use another). To get it, {how}. "
            "The built-in dataset is always available as `builtin`."
        )
    if path.exists():
        raise UserError(f"dataset {name_or_path} is a file; a dataset is a folder with a manifest.json")
    raise UserError(f"dataset folder {name_or_path} does not exist")
