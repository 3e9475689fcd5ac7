"""Every page of a query cached on disk as it arrives, fetched with retries, so a stopped fetch resumes."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nesfgen.data.materials_project.client import KeyRejected, QueryRejected, SummaryClient, TransientError
from nesfgen.data.materials_project.convert import FIELDS
from nesfgen.errors import UserError
from nesfgen.files import atomic_write_text

log = logging.getLogger(__name__)


def query_folder(cache: Path, criteria: Mapping[str, Any], page_size: int) -> Path:
    """One folder per (criteria, fields, page size): a repeated or resumed fetch finds its pages there."""
    spec = {"criteria": criteria, "fields": list(FIELDS), "page_size": page_size, "sort": "material_id"}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache / f"query-{digest}"
    if not (folder / "query.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "query.json", json.dumps(spec, indent=1, sort_keys=True))
    return folder


def _read_json(path: Path) -> Any:
    """A cached file, or None when it is missing or unreadable (then it is fetched again)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable cache file %s (%s); fetching it again", path, error)
        return None


@dataclass
class PageCounts:
    """Pages downloaded and read from the cache, and the documents they held, for the fetch report."""

    downloaded: int = 0  # pages
    cached: int = 0  # pages
    documents: int = 0


def cached_pages(
    client: SummaryClient,
    criteria: Mapping[str, Any],
    folder: Path,
    page_size: int,
    counts: PageCounts,
    retry: Callable[[Callable[[], list[dict]], str], list[dict]],
) -> Iterator[list[dict[str, Any]]]:
    """Every page of one query, from the cache where present; a page shorter than ``page_size`` is the last."""
    complete = _read_json(folder / "complete.json")
    page = 1
    while True:
        path = folder / f"page-{page:05d}.json"
        cached = _read_json(path)
        if cached is not None:
            documents = cached["documents"]
            counts.cached += 1
        elif complete is not None and page > complete["pages"]:
            return
        else:
            documents = retry(lambda p=page: client.search(criteria, FIELDS, p, page_size), f"page {page}")
            atomic_write_text(path, json.dumps({"documents": documents}))
            counts.downloaded += 1
            log.info("fetched page %d of %s: %d documents", page, folder.name, len(documents))
        counts.documents += len(documents)
        yield documents
        if len(documents) < page_size:
            if complete is None:
                atomic_write_text(folder / "complete.json", json.dumps({"pages": page}))
            return
        page += 1


def retrying(retries: int, backoff: float, sleep: Callable[[float], None], cache: Path):
    """Call with exponential back-off on transient errors; key and query errors become UserError at once."""

    def call(request: Callable[[], list[dict]], what: str) -> list[dict]:
        for attempt in range(retries + 1):
            try:
                return request()
            except KeyRejected as error:
                raise UserError(
                    f"the Materials Project rejected the API key ({error}); check MP_API_KEY (keys are 32 characters, "
                    "from https://materialsproject.org/api)"
                ) from None
            except QueryRejected as error:
                raise UserError(f"the Materials Project refused the query ({error})") from None
            except TransientError as error:
                if attempt == retries:
                    raise UserError(
                        f"the Materials Project did not answer ({what}) after {retries + 1} attempts: {error}. "
                        f"The pages fetched so far are cached in {cache}; run the same command again to continue"
                    ) from None
                delay = backoff * 2**attempt
                log.warning("%s failed (%s); retrying in %.1f s", what, error, delay)
                sleep(delay)
        raise AssertionError("unreachable")

    return call
