"""The Materials Project client: a small protocol (tests replay recordings) and its adapter on mp-api's ``MPRester``.

The API key lives only in the client object: it never reaches a log, a message, the cache or a manifest.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from nesfgen.errors import UserError

NO_KEY_MESSAGE = (
    "no Materials Project API key: set the environment variable MP_API_KEY (or PMG_MAPI_KEY in "
    "~/.config/.pmgrc.yaml, mp-api's configuration). Get a free key from your dashboard at "
    "https://materialsproject.org/api"
)


class MaterialsProjectError(Exception):
    """A request that failed; the message never holds the API key."""


class TransientError(MaterialsProjectError):
    """Worth retrying: the network, a timeout, rate limiting, a server error."""


class KeyRejected(MaterialsProjectError):
    """The API key is malformed or refused."""


class QueryRejected(MaterialsProjectError):
    """The server (or mp-api) refuses the query itself; retrying will not help."""


class SummaryClient(Protocol):
    """One page of Materials Project summary documents, as plain JSON dicts."""

    def search(
        self, criteria: Mapping[str, Any], fields: Sequence[str], page: int, page_size: int
    ) -> list[dict[str, Any]]:
        """Page ``page`` (from 1) of ``page_size`` documents, sorted by material id.

        Raises:
            TransientError, KeyRejected, QueryRejected.
        """
        ...


#: summary-search arguments that are (min, max) ranges
RANGE_ARGUMENTS = {
    "volume",
    "num_sites",
    "num_elements",
    "energy_above_hull",
    "formation_energy",
    "band_gap",
    "density",
}


class MPResterClient:
    """:class:`SummaryClient` on mp-api's ``MPRester``, created on the first request (its start-up reaches the server).

    Args:
        api_key: the user's key; kept in this object only and redacted from every error message.
        rester_factory: builds the rester (``mp_api.client.MPRester`` by default; tests pass a recording).
    """

    def __init__(self, api_key: str, rester_factory: Callable[..., Any] | None = None):
        if rester_factory is None:
            _require_mp_api()
        self._api_key = api_key
        self._factory = rester_factory
        self._rester: Any = None

    def __repr__(self) -> str:
        return "MPResterClient(api_key=<hidden>)"

    @property
    def database_version(self) -> str | None:
        return getattr(self._rester, "db_version", None) or None

    def search(
        self, criteria: Mapping[str, Any], fields: Sequence[str], page: int, page_size: int
    ) -> list[dict[str, Any]]:
        arguments = search_arguments(criteria, fields, page, page_size)
        try:
            documents = self._connect().materials.summary.search(**arguments)
        except Exception as error:  # mp-api raises MPRestError, requests' errors, or others from its start-up
            raise classify_error(error, self._api_key) from None
        return [_plain(document) for document in documents]

    def entries_in_chemsys(self, elements: Sequence[str]) -> list[dict[str, Any]]:
        """The GGA/GGA+U entries of a chemical system and its subsystems, MP2020-corrected (mp-api's default).

        Returns:
            ``{"id", "composition", "energy_per_atom"}`` per entry, the energy corrected as on the MP website.
        """
        try:
            rester = self._connect()
            entries = rester.get_entries_in_chemsys(
                list(elements), compatible_only=True, additional_criteria={"thermo_types": ["GGA_GGA+U"]}
            )
        except Exception as error:  # as in search: mp-api, requests or start-up errors
            raise classify_error(error, self._api_key) from None
        return [
            {
                "id": str(entry.entry_id),
                "composition": {str(el): float(n) for el, n in entry.composition.items()},
                "energy_per_atom": float(entry.energy_per_atom),
            }
            for entry in entries
        ]

    def _connect(self) -> Any:
        if self._rester is None:
            factory = self._factory
            if factory is None:
                from mp_api.client import MPRester as factory
            self._rester = factory(api_key=self._api_key, use_document_model=False, mute_progress_bars=True)
        return self._rester


def search_arguments(criteria: Mapping[str, Any], fields: Sequence[str], page: int, page_size: int) -> dict[str, Any]:
    """Keyword arguments of mp-api's ``summary.search`` for one page, in a stable order (by material id)."""
    arguments = {k: tuple(v) if k in RANGE_ARGUMENTS else v for k, v in criteria.items()}
    paging = {"_page": page, "chunk_size": page_size, "num_chunks": 1, "_sort_fields": "material_id"}
    return {**arguments, "fields": list(fields), **paging}


MIN_MP_API = (0, 46, 1)  # the first mp-api whose summary search takes _page and _sort_fields


def _require_mp_api() -> None:
    """Refuse, with the fix, an mp-api too old to page through a query (or missing, as on Python 3.10)."""
    installed = mp_api_version()
    numbers = tuple(int(n) for n in re.findall(r"\d+", installed)[:3])
    if not numbers or numbers < MIN_MP_API:
        raise UserError(
            f"nesfgen data fetch needs mp-api >= {'.'.join(map(str, MIN_MP_API))} (installed: {installed}), which "
            "needs Python >= 3.11: pip install -U 'mp-api>=0.46.1'"
        )


def mp_api_version() -> str:
    """The installed mp-api version, or "none"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mp-api")
    except PackageNotFoundError:  # only on Python 3.10, where mp-api >= 0.46.1 cannot be installed
        return "none"


def classify_error(error: BaseException, api_key: str = "") -> MaterialsProjectError:
    """Sort an mp-api / requests failure into transient, key or query errors, with the key redacted."""
    message = redact(f"{type(error).__name__}: {error}".strip(), api_key)
    status = re.search(r"status code (\d{3})", message)
    code = int(status.group(1)) if status else None
    if code in (401, 403):
        return KeyRejected(message)
    if code in (408, 425, 429) or (code is not None and code >= 500):
        return TransientError(message)
    if code is not None:
        return QueryRejected(message)
    if re.search(r"api key", message, re.IGNORECASE):  # mp-api refusing a malformed key before any request
        return KeyRejected(message)
    try:
        import requests

        network = isinstance(error, (requests.RequestException, OSError))
    except ImportError:  # pragma: no cover - requests comes with mp-api
        network = isinstance(error, OSError)
    if network or re.search(r"timed? ?out|connection|max retries|temporar|unreachable", message, re.IGNORECASE):
        return TransientError(message)
    return QueryRejected(message)


def redact(text: str, api_key: str) -> str:
    return text.replace(api_key, "<api key>") if api_key else text


def _plain(document: Any) -> dict[str, Any]:
    """A summary document as JSON values (mp-api returns dicts without document models; be safe with objects)."""
    if hasattr(document, "model_dump"):
        document = document.model_dump()
    return json.loads(json.dumps(document, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if hasattr(value, "value"):  # enums
        return value.value
    return str(value)


def api_key() -> str:
    """The user's key: ``MP_API_KEY``, else mp-api's configuration (pymatgen's ``PMG_MAPI_KEY`` setting).

    Raises:
        UserError: when there is none (the message says how to set one and never shows a key).
    """
    key = os.environ.get("MP_API_KEY", "").strip()
    if not key:
        from pymatgen.core import SETTINGS

        key = str(SETTINGS.get("PMG_MAPI_KEY") or "").strip()
    if not key:
        raise UserError(NO_KEY_MESSAGE)
    return key
