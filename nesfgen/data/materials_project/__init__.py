"""Datasets from the Materials Project: the paper's selections and general queries, fetched with mp-api.

The flow is: a :class:`Selection` (mp-api summary queries, then filters on the conventional cell) and a
:class:`FetchPlan` (splits, seed, cache) -> :func:`fetch_dataset` pages through each query with a
:class:`SummaryClient`, caching every page on disk, converts the documents to conventional cells, filters,
splits and writes the dataset folder atomically.

Modules, in the order they import each other: ``selections`` -> ``options`` (key=value parsing); ``client``,
``convert`` -> ``cache`` -> ``fetch``.
"""

from nesfgen.data.materials_project.client import (
    KeyRejected,
    MaterialsProjectError,
    MPResterClient,
    QueryRejected,
    SummaryClient,
    TransientError,
    api_key,
    classify_error,
    redact,
    search_arguments,
)
from nesfgen.data.materials_project.convert import FIELDS, PROPERTY_FIELDS, crystal_from_document
from nesfgen.data.materials_project.fetch import FetchReport, default_out, fetch_dataset, fetch_selection, fold_names
from nesfgen.data.materials_project.options import (
    SELECTIONS,
    plan_fetch,
    read_candidates,
    selection_keys,
)
from nesfgen.data.materials_project.selections import (
    PAPER_FRACTIONS,
    FetchPlan,
    Selection,
    icsg3d_selection,
    lcs6_selection,
    ybco_selection,
)

__all__ = [
    "FIELDS",
    "PAPER_FRACTIONS",
    "PROPERTY_FIELDS",
    "SELECTIONS",
    "FetchPlan",
    "FetchReport",
    "KeyRejected",
    "MPResterClient",
    "MaterialsProjectError",
    "QueryRejected",
    "Selection",
    "SummaryClient",
    "TransientError",
    "api_key",
    "classify_error",
    "crystal_from_document",
    "default_out",
    "fetch_dataset",
    "fetch_selection",
    "fold_names",
    "icsg3d_selection",
    "lcs6_selection",
    "plan_fetch",
    "read_candidates",
    "redact",
    "search_arguments",
    "selection_keys",
    "ybco_selection",
]
