"""Fetching datasets from the Materials Project, without the network: mp-api's MPRester is replaced by a recording
that replays the responses in tests/data/mp/ (pagination, an empty result, an invalid key, transient errors)."""

import copy
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests

from nesfgen.data import materials_project as mp
from nesfgen.data.materials_project.fetch import _fold_splits
from nesfgen.errors import UserError

if sys.version_info < (3, 11):  # mp-api >= 0.46.1 needs it; a broken install on 3.11 must fail, not skip
    pytest.skip("mp-api >= 0.46.1 needs Python >= 3.11", allow_module_level=True)

from mp_api.client.core import MPRestError  # noqa: E402

RECORDINGS = Path(__file__).parent / "data" / "mp"
KEY = "Zq7secretKEYzq7secretKEYzq7secre"  # 32 characters, as mp-api requires


class RecordedRester:
    """Stands in for ``mp_api.client.MPRester``: called like it, replays a recording, keeps every search call.

    A recording lists ``{"criteria": {...}, "page": P, "replies": [...]}``; a request takes the next reply of the
    entry whose page and criteria match (the last reply repeats). Replies are ``{"data": [...]}``,
    ``{"error": message}`` (raised as MPRestError) or ``{"connection_error": message}``.
    """

    def __init__(self, name: str, edit=None):
        self.recording = json.loads((RECORDINGS / name).read_text())
        if edit:
            edit(self.recording)
        self.calls: list[dict] = []

    def __call__(self, api_key: str, **kwargs):
        if len(api_key) != 32:  # what mp-api itself does before any request
            raise MPRestError(
                "Please obtain a valid API key from https://materialsproject.org/api and export it as an "
                "environment variable `MP_API_KEY`. Valid API keys are 32 characters."
            )
        assert kwargs == {"use_document_model": False, "mute_progress_bars": True}
        summary = SimpleNamespace(search=self.search)
        return SimpleNamespace(materials=SimpleNamespace(summary=summary), db_version="2025.09.25")

    def search(self, **kwargs):
        self.calls.append(kwargs)
        assert kwargs["chunk_size"] == self.recording["page_size"] and kwargs["num_chunks"] == 1
        assert kwargs["_sort_fields"] == "material_id" and "structure" in kwargs["fields"]
        for entry in self.recording["responses"]:
            wanted = entry.get("criteria", {})
            if entry["page"] == kwargs["_page"] and all(_same(kwargs.get(k), v) for k, v in wanted.items()):
                reply = entry["replies"].pop(0) if len(entry["replies"]) > 1 else entry["replies"][0]
                if "error" in reply:
                    raise MPRestError(reply["error"])
                if "connection_error" in reply:
                    raise requests.ConnectionError(reply["connection_error"])
                return copy.deepcopy(reply["data"])
        raise AssertionError(f"no recorded reply for {kwargs}")

    def pages(self) -> list[int]:
        return [call["_page"] for call in self.calls]


def _same(value, recorded) -> bool:
    return (list(value) if isinstance(value, tuple) else value) == recorded


def client(name: str, key: str = KEY, edit=None) -> tuple[mp.MPResterClient, RecordedRester]:
    rester = RecordedRester(name, edit)
    return mp.MPResterClient(key, rester_factory=rester), rester


def plan(name: str, **options) -> mp.FetchPlan:
    return mp.plan_fetch(name, {k: str(v) for k, v in options.items()})


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def all_ids(dataset) -> list[str]:
    return [i for split in dataset.split_names for i in dataset.manifest["splits"][split]["ids"]]


# --- fetching ----------------------------------------------------------------------------------------------------------


def test_lcs6_pages_through_converts_filters_and_writes(tmp_path):
    mp_client, rester = client("lcs6.json")
    report = mp.fetch_dataset(plan("lcs6", page_size=3), tmp_path / "lcs6", mp_client, sleep=Sleeps())

    assert rester.pages() == [1, 2, 3]  # a short third page ends the query
    call = rester.calls[0]
    assert call["volume"] == (None, 216.0) and call["deprecated"] is False and call["include_gnome"] is False
    assert (report.documents, report.pages_downloaded, report.pages_cached, report.kept) == (8, 3, 0, 6)
    assert report.filtered == {"a, b or c above 6 Å": 1}  # KCl: primitive 4.45 Å but conventional 6.29 Å
    assert [id for id, _ in report.skipped] == ["mp-999999"] and "apart" in report.skipped[0][1]

    (dataset,) = report.datasets
    assert dataset.path == tmp_path / "lcs6" and dataset.name == "lcs6"
    assert sorted(all_ids(dataset)) == sorted(["mp-1265", "mp-149", "mp-22862", "mp-22865", "mp-5229", "mp-30"])
    assert {s: dataset.manifest["splits"][s]["count"] for s in dataset.split_names} == {"train": 4, "val": 1, "test": 1}
    crystals = {c.id: c for split in dataset.split_names for c in dataset.load(split)}
    mgo = crystals["mp-1265"]  # stored as MP's 2-atom primitive cell, written as the 8-atom conventional one
    assert mgo.num_atoms == 8 and np.allclose(mgo.lengths, 4.26) and np.allclose(mgo.angles, 90)
    assert mgo.properties["band_gap"] == 4.45 and mgo.properties["formation_energy_per_atom"] == -3.05
    assert mgo.properties["is_stable"] == 1.0 and mgo.properties["spacegroup_number"] == 225
    assert crystals["mp-30"].properties["is_metal"] == 1.0
    provenance = dataset.manifest["provenance"]
    assert provenance["selection"]["max_length"] == 6.0 and provenance["database_version"] == "2025.09.25"
    assert provenance["split"] == {"seed": 0, "fractions": list(mp.PAPER_FRACTIONS)}
    assert "CC BY 4.0" in provenance["license"] and provenance["skipped"][0][0] == "mp-999999"


def test_splits_are_seeded_and_a_second_fetch_reads_the_cache(tmp_path):
    first, rester = client("lcs6.json")
    a = mp.fetch_dataset(plan("lcs6", page_size=3, seed=1), tmp_path / "a", first).datasets[0]
    second, again = client("lcs6.json")
    b_report = mp.fetch_dataset(plan("lcs6", page_size=3, seed=1), tmp_path / "b", second)
    assert again.calls == [] and b_report.pages_cached == 3  # every page came from the cache
    b = b_report.datasets[0]
    assert a.manifest["splits"] == b.manifest["splits"] and a.content_hash == b.content_hash
    third, _ = client("lcs6.json")
    c = mp.fetch_dataset(plan("lcs6", page_size=3, seed=2), tmp_path / "c", third).datasets[0]
    assert c.manifest["splits"] != a.manifest["splits"]  # another seed, another assignment
    fourth, _ = client("lcs6.json")
    d = mp.fetch_dataset(plan("lcs6", page_size=3, split="0.5,0.25,0.25"), tmp_path / "d", fourth).datasets[0]
    assert {s: d.manifest["splits"][s]["count"] for s in d.split_names} == {"train": 3, "val": 2, "test": 1}


def test_an_empty_result_writes_nothing(tmp_path):
    mp_client, rester = client("empty.json")
    with pytest.raises(UserError, match="returned 0 documents"):
        mp.fetch_dataset(plan("query", elements="Og", page_size=3), tmp_path / "none", mp_client)
    assert rester.pages() == [1] and not (tmp_path / "none").exists()
    assert rester.calls[0]["elements"] == ["Og"]


@pytest.mark.parametrize("key", [KEY, "short-key"])
def test_an_invalid_key_fails_at_once_with_a_clear_message(tmp_path, key):
    mp_client, rester = client("invalid_key.json", key=key)
    sleeps = Sleeps()
    with pytest.raises(UserError, match="rejected the API key") as error:
        mp.fetch_dataset(plan("lcs6", page_size=3), tmp_path / "out", mp_client, sleep=sleeps)
    assert sleeps == [] and len(rester.calls) <= 1  # never retried
    assert key not in str(error.value) and not (tmp_path / "out").exists()


def test_a_transient_error_is_retried_with_back_off(tmp_path):
    mp_client, rester = client("transient.json")
    sleeps = Sleeps()
    report = mp.fetch_dataset(plan("lcs6", page_size=2), tmp_path / "out", mp_client, sleep=sleeps, backoff=1.5)
    assert sleeps == [1.5, 3.0]  # 504, then a dropped connection, then the page
    assert rester.pages() == [1, 1, 1, 2] and report.kept == 3


def test_persistent_errors_are_reported_then_the_fetch_resumes_without_downloading_again(tmp_path):
    def page_two_down(recording):
        recording["responses"][1]["replies"] = [{"error": "REST query returned with error status code 503 on URL x"}]

    broken, rester = client("lcs6.json", edit=page_two_down)
    sleeps = Sleeps()
    with pytest.raises(UserError, match="did not answer .* after 3 attempts.*run the same command again"):
        mp.fetch_dataset(plan("lcs6", page_size=3), tmp_path / "out", broken, retries=2, sleep=sleeps)
    assert rester.pages() == [1, 2, 2, 2] and sleeps == [2.0, 4.0]
    assert not (tmp_path / "out").exists()  # never a half-written dataset

    healthy, resumed = client("lcs6.json")
    report = mp.fetch_dataset(plan("lcs6", page_size=3), tmp_path / "out", healthy)
    assert resumed.pages() == [2, 3] and (report.pages_cached, report.pages_downloaded) == (1, 2)
    assert report.kept == 6


def test_an_interrupted_fetch_leaves_no_dataset_and_continues_where_it_stopped(tmp_path):
    def interrupt_page_three(recording):
        recording["responses"][2]["replies"] = [{"interrupt": True}]

    interrupted, rester = client("lcs6.json", edit=interrupt_page_three)
    search = rester.search

    def ctrl_c_on_page_three(**kwargs):
        if kwargs["_page"] == 3:
            raise KeyboardInterrupt
        return search(**kwargs)

    rester.search = ctrl_c_on_page_three
    with pytest.raises(KeyboardInterrupt):
        mp.fetch_dataset(plan("lcs6", page_size=3), tmp_path / "out", interrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mp-cache"]  # no dataset, no staging folder

    healthy, resumed = client("lcs6.json")
    report = mp.fetch_dataset(plan("lcs6", page_size=3), tmp_path / "out", healthy)
    assert resumed.pages() == [3] and report.kept == 6
    clean, _ = client("lcs6.json")
    fresh = mp.fetch_dataset(plan("lcs6", page_size=3, cache=tmp_path / "fresh"), tmp_path / "fresh-out", clean)
    assert report.datasets[0].content_hash == fresh.datasets[0].content_hash


def test_the_key_never_appears_in_messages_logs_files_or_reprs(tmp_path, caplog):
    def echo_key(recording):  # a server error whose message carries the key, and a retried 500
        recording["responses"][0]["replies"].insert(0, {"error": f"status code 500 on URL x?api_key={KEY}"})

    caplog.set_level(logging.DEBUG)
    mp_client, _ = client("lcs6.json", edit=echo_key)
    report = mp.fetch_dataset(plan("lcs6", page_size=3), tmp_path / "out", mp_client, sleep=Sleeps())
    assert "<api key>" in caplog.text and KEY not in caplog.text
    assert KEY not in repr(mp_client) and KEY not in repr(report)
    error = mp.classify_error(MPRestError(f"status code 403 for key {KEY}"), KEY)
    assert isinstance(error, mp.KeyRejected) and KEY not in str(error)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in files) and any(p.name.startswith("page-") for p in files)
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path


def test_an_existing_output_is_refused_before_any_request(tmp_path):
    (tmp_path / "out").mkdir()
    mp_client, rester = client("lcs6.json")
    with pytest.raises(UserError, match="already exists"):
        mp.fetch_dataset(plan("lcs6", page_size=3), tmp_path / "out", mp_client)
    assert rester.calls == [] and not (tmp_path / ".mp-cache").exists()


def test_icsg3d_asks_for_cubic_ab_abc2_abc3(tmp_path):
    mp_client, rester = client("icsg3d.json")
    report = mp.fetch_dataset(plan("icsg3d", page_size=3), tmp_path / "icsg3d", mp_client)
    assert [(c["formula"], c["crystal_system"]) for c in rester.calls] == [
        ("AB", "Cubic"),
        ("ABC2", "Cubic"),
        ("ABC3", "Cubic"),
    ]
    assert sorted(all_ids(report.datasets[0])) == sorted(["mp-1265", "mp-22865", "mp-3574", "mp-5229"])


def test_ybco_like_keeps_narrow_13_atom_cells_nearest_to_ybco_in_folds(tmp_path):
    mp_client, rester = client("ybco.json")
    report = mp.fetch_dataset(plan("ybco-like", page_size=10, limit=3, folds=3), tmp_path / "ybco", mp_client)
    assert rester.calls[0]["num_sites"] == (13, 13)
    assert report.filtered == {"a or b above 4.5 Å": 1}
    assert [d.name for d in report.datasets] == ["ybco-fold0", "ybco-fold1", "ybco-fold2"]
    nearest = {"mp-20674", "mp-1214571", "mp-22719"}  # mp-21451 is the fourth nearest: beyond limit=3
    tests = [d.manifest["splits"]["test"]["ids"] for d in report.datasets]
    assert sorted(i for t in tests for i in t) == sorted(nearest)  # the test splits partition the structures
    for dataset in report.datasets:
        assert set(all_ids(dataset)) == nearest and len(dataset.manifest["splits"]["val"]["ids"]) == 1
    assert report.datasets[1].manifest["provenance"]["split"] == {"seed": 0, "fold": 1, "folds": 3}


def test_ybco_like_from_a_candidate_list_keeps_its_order_and_stops_early(tmp_path):
    candidates = mp.read_candidates(RECORDINGS / "ybco_candidates.csv")
    assert candidates == ["mp-20674", "mp-1220304", "mp-21451", "mp-1214571", "mp-22719"]
    selection = mp.ybco_selection(candidates, limit=2, batch=2)
    mp_client, rester = client("ybco_candidates.json")
    report = mp.fetch_dataset(mp.FetchPlan(selection, page_size=10), tmp_path / "ybco", mp_client)
    assert [c["material_ids"] for c in rester.calls] == [["mp-20674", "mp-1220304"], ["mp-21451", "mp-1214571"]]
    assert sorted(all_ids(report.datasets[0])) == ["mp-20674", "mp-21451"]  # the first two that pass, in list order
    assert report.notes[0].startswith("kept the first 2 of the 3 fetched")


def test_fold_splits_follow_the_papers_layout(tiny_crystals):
    crystals = [tiny_crystals["NaCl"].with_id(f"id{k}") for k in range(100)]
    folds = _fold_splits(crystals, 20, seed=0)
    tests = [[c.id for c in f["test"]] for f in folds]
    assert sorted(i for t in tests for i in t) == sorted(c.id for c in crystals)
    for fold in folds:
        counts = {split: len(items) for split, items in fold.items()}
        assert counts == {"train": 90, "val": 5, "test": 5}
        assert not {c.id for c in fold["val"]} & {c.id for c in fold["test"]}
    assert [[c.id for c in f["test"]] for f in _fold_splits(crystals, 20, seed=0)] == tests


# --- parsing, the client, the key --------------------------------------------------------------------------------------


def test_plan_fetch_parses_queries_and_refuses_mistakes():
    query = plan(
        "query",
        elements="Fe,O",
        formation_energy="-3:0",
        energy_above_hull=":0.05",
        num_sites="13",
        spacegroup="221,225",
        crystal_system="cubic",
        stable="true",
        max_length=7,
    )
    queries = query.selection.queries
    assert [(q["spacegroup_number"], q["crystal_system"]) for q in queries] == [(221, "Cubic"), (225, "Cubic")]
    assert queries[0]["formation_energy"] == [-3.0, 0.0] and queries[0]["energy_above_hull"] == [None, 0.05]
    assert queries[0]["num_sites"] == [13, 13] and queries[0]["is_stable"] is True
    assert queries[0]["elements"] == ["Fe", "O"] and query.selection.max_length == 7.0 and query.folds == 1
    ybco = plan("ybco-like")
    assert (ybco.folds, ybco.selection.limit, ybco.selection.order) == (20, 100, "ybco")
    assert plan("lcs6").fractions == mp.PAPER_FRACTIONS
    for name, options, message in [
        ("lcs6s", {}, "unknown selection"),
        ("lcs6", {"candidates": "x.csv"}, "does not take candidates"),
        ("query", {}, "at least one criterion"),
        ("query", {"elements": "Fe,Xx"}, "Xx is not an element"),
        ("query", {"band_gap": "3:1"}, "above the maximum"),
        ("query", {"band_gap": "a:b"}, "expects MIN:MAX"),
        ("query", {"spacegroup": "231"}, "between 1 and 230"),
        ("query", {"crystal_system": "cubbic"}, "unknown crystal system"),
        ("lcs6", {"split": "0.5,0.5,0.5"}, "summing to 1"),
        ("lcs6", {"page_size": "5000"}, "between 1 and 1000"),
        ("ybco-like", {"candidates": "/no/such.csv"}, "cannot read the candidate list"),
    ]:
        with pytest.raises(UserError, match=message):
            mp.plan_fetch(name, options)


def test_errors_are_sorted_into_retry_key_and_query_errors():
    def kind(error):
        return type(mp.classify_error(error, KEY)).__name__

    assert kind(MPRestError("REST query returned with error status code 401 on URL u")) == "KeyRejected"
    assert kind(MPRestError("REST query returned with error status code 503 on URL u")) == "TransientError"
    assert kind(MPRestError("REST query returned with error status code 429 on URL u")) == "TransientError"
    assert kind(MPRestError("REST query returned with error status code 422 on URL u")) == "QueryRejected"
    assert kind(requests.ConnectionError("Network is unreachable")) == "TransientError"
    assert kind(MPRestError("REST query timed out on URL u. Try again with a smaller request.")) == "TransientError"
    assert kind(MPRestError("invalid fields requested: ['nope']")) == "QueryRejected"


def test_every_selection_calls_mp_apis_summary_search_with_arguments_it_takes():
    from inspect import signature

    from mp_api.client.routes.materials.summary import SummaryRester

    search = signature(SummaryRester.search)
    selections = [
        plan("lcs6").selection,
        plan("icsg3d").selection,
        plan("ybco-like").selection,
        mp.ybco_selection(["mp-20674", "mp-1214571"]),
        plan("query", **{key: value for key, value in QUERY_EXAMPLE.items()}).selection,
    ]
    for selection in selections:
        for criteria in selection.queries:
            search.bind(None, **mp.search_arguments(criteria, mp.FIELDS, 1, 500))  # raises TypeError if not


QUERY_EXAMPLE = {
    "elements": "Fe,O",
    "exclude_elements": "H",
    "chemsys": "Fe-O",
    "formula": "Fe2O3",
    "num_sites": "1:40",
    "num_elements": "2",
    "spacegroup": "167",
    "crystal_system": "trigonal",
    "energy_above_hull": ":0.1",
    "formation_energy": "-3:0",
    "band_gap": "0:",
    "volume": ":500",
    "density": "1:10",
    "stable": "true",
    "is_metal": "false",
    "theoretical": "false",
}


def test_the_real_mp_api_refuses_a_malformed_key_before_any_request(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tests never reach the Materials Project")

    monkeypatch.setattr(requests.Session, "request", no_network)
    with pytest.raises(mp.KeyRejected, match="32 characters"):
        mp.MPResterClient("not-a-valid-key").search({"num_sites": [13, 13]}, mp.FIELDS, 1, 10)


def test_the_key_comes_from_the_environment_or_mp_api_configuration(monkeypatch):
    from pymatgen.core import SETTINGS

    monkeypatch.setenv("MP_API_KEY", KEY)
    assert mp.api_key() == KEY
    monkeypatch.delenv("MP_API_KEY")
    monkeypatch.setitem(SETTINGS, "PMG_MAPI_KEY", "from-pmgrc-" + "x" * 21)
    assert mp.api_key() == "from-pmgrc-" + "x" * 21
    monkeypatch.delitem(SETTINGS, "PMG_MAPI_KEY")
    with pytest.raises(UserError, match="MP_API_KEY"):
        mp.api_key()


def test_cli_fetch_without_a_key_fails_cleanly(cli, tmp_path, monkeypatch):
    for name in ("MP_API_KEY", "PMG_MAPI_KEY", "MAPI_KEY", "PMG_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NESFGEN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "home").mkdir()
    for args, message in [
        (["data", "fetch", "lcs6"], "no Materials Project API key"),
        (["data", "fetch", "lcs7"], "unknown selection 'lcs7'"),
    ]:
        result = cli(*args, timeout=120)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


# --- the paper's datasets ----------------------------------------------------------------------------------------------


@pytest.mark.paper_data
def test_the_papers_structures_pass_the_selections(paper_data):
    from nesfgen.data.importers import load_paper_folder

    ybco = [
        c for split in ("train", "val", "test") for c in load_paper_folder(paper_data / f"dataset_YBCO13_fold0_{split}")
    ]
    assert len(ybco) == 100 and all(mp.ybco_selection().rejects(c) is None for c in ybco)
    lcs6 = [c for split in ("val", "test") for c in load_paper_folder(paper_data / f"dataset_lim_l6_{split}")]
    assert all(mp.lcs6_selection().rejects(c) is None for c in lcs6)
    candidates = mp.read_candidates(paper_data / "retrieved_neighbours_mp-20674_YBCO.csv")
    assert len(candidates) == 10000 and candidates[0] == "mp-20674"
    assert {c.id for c in ybco} <= set(candidates)
