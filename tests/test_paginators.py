"""The Apify paginators on hand-made pages: no I/O, so every position rule is checked exactly."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from worker.jsontext import NonFinite
from worker.model import Checkpoint, typed
from worker.sources import apify
from worker.sources.apify import NewestFirst, OldestFirst, read_item
from worker.sources.common import PageError, isoformat

NOW = datetime(2026, 5, 1, tzinfo=UTC)
T = datetime(2026, 4, 1, tzinfo=UTC)


def item(run_id: str, minute: int, status: str = "SUCCEEDED") -> dict:
    return {"id": run_id, "status": status, "startedAt": isoformat(T + timedelta(minutes=minute))}


def page(*items, limit: int = 3) -> dict:
    return {
        "data": {
            "total": 99,
            "offset": 0,
            "limit": limit,
            "count": len(items),
            "items": list(items),
        }
    }


def at(minute: int) -> datetime:
    return T + timedelta(minutes=minute)


def test_oldest_first_seeks_on_the_newest_instant():
    walk = OldestFirst("/v2/actor-runs", Checkpoint(), page_size=3)
    assert walk.next_request().params == {"limit": "3", "offset": "0"}
    walk.advance(page(item("a", 1), item("b", 2), item("c", 2)), NOW)
    assert walk.next_request().params == {
        "limit": "3", "offset": "2", "startedAfter": isoformat(at(2))
    }  # fmt: skip
    assert walk.checkpoint == Checkpoint(at(2), {"offset": 2})


def test_a_page_of_one_instant_moves_the_offset_not_the_watermark():
    walk = OldestFirst("/v2/actor-runs", Checkpoint(at(2), {"offset": 2}), page_size=3)
    walk.advance(page(item("d", 2), item("e", 2), item("f", 2)), NOW)
    assert walk.checkpoint == Checkpoint(at(2), {"offset": 5})


def test_unreadable_items_after_the_newest_instant_are_read_again_not_skipped():
    walk = OldestFirst("/v2/actor-runs", Checkpoint(), page_size=4)
    walk.advance(page(item("a", 1), item("b", 2), {"oops": 1}, ["x"], limit=4), NOW)
    assert walk.checkpoint == Checkpoint(at(2), {"offset": 1})


def test_unreadable_items_between_runs_of_one_instant_count_for_it():
    walk = OldestFirst("/v2/actor-runs", Checkpoint(), page_size=4)
    walk.advance(page(item("a", 1), item("b", 2), {"oops": 1}, item("c", 2), limit=4), NOW)
    assert walk.checkpoint == Checkpoint(at(2), {"offset": 3})


def test_a_page_of_unreadable_items_moves_the_offset_exactly():
    walk = OldestFirst("/v2/actor-runs", Checkpoint(at(2), {"offset": 1}), page_size=3)
    result = walk.advance(page({"x": 1}, {"x": 2}, {"x": 3}), NOW)
    assert len(result.rejected) == 3
    assert walk.checkpoint == Checkpoint(at(2), {"offset": 4})
    assert walk.next_request() is not None


def test_a_short_page_ends_the_walk_even_when_the_server_clamps():
    walk = OldestFirst("/v2/actor-runs", Checkpoint(), page_size=1000)
    walk.advance(page(item("a", 1), item("b", 2), limit=1000), NOW)
    assert walk.next_request() is None
    clamped = OldestFirst("/v2/actor-runs", Checkpoint(), page_size=1000)
    clamped.advance(page(item("a", 1), item("b", 2), limit=2), NOW)  # served 2 of at most 2
    assert clamped.next_request() is not None


def test_the_same_page_twice_is_an_error_not_a_loop():
    walk = OldestFirst("/v2/actor-runs", Checkpoint(at(2)), page_size=3)
    same = page(item("a", 2), item("b", 2), item("c", 2))
    walk.advance(same, NOW)
    with pytest.raises(PageError, match="same page twice"):
        walk.advance(same, NOW)


@pytest.mark.parametrize("body", [{}, {"data": {}}, {"data": {"items": "x"}}, [], "text"])
def test_a_list_answer_without_items_is_a_page_error(body):
    with pytest.raises(PageError):
        OldestFirst("/v2/actor-runs", Checkpoint(), page_size=3).advance(body, NOW)


def test_newest_first_moves_the_watermark_only_when_it_reaches_it():
    walk = NewestFirst("/v2/actor-tasks/t/runs", Checkpoint(at(2)), page_size=2)
    assert walk.next_request().params == {"desc": "1", "limit": "2", "offset": "0"}
    walk.advance(page(item("z", 9), item("y", 8), limit=2), NOW)
    assert walk.checkpoint == Checkpoint(at(2), {"top": isoformat(at(9)), "offset": 2})
    walk.advance(page(item("x", 3), item("w", 1), limit=2), NOW)  # 1 < 2: reached
    assert walk.next_request() is None
    assert walk.checkpoint == Checkpoint(at(9), None)


def test_newest_first_resumes_from_its_cursor():
    saved = Checkpoint(at(2), {"top": isoformat(at(9)), "offset": 4})
    walk = NewestFirst("/v2/actor-tasks/t/runs", saved, page_size=2)
    assert walk.next_request().params["offset"] == "4"
    walk.advance(page(item("v", 1), limit=2), NOW)
    assert walk.checkpoint == Checkpoint(at(9), None)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"status": "RUNNING", "startedAt": "2026-01-01T00:00:00Z"}, "id is missing, not a string"),
        ({"id": 5, "status": "RUNNING"}, "id is int '5', not a string"),
        ({"id": "r", "startedAt": "2026-01-01T00:00:00Z"}, "run r: status is missing"),
        ({"id": "r", "status": "RUNNING", "startedAt": "2026-01-01"}, "has no time zone"),
        ({"id": "r", "status": "RUNNING", "startedAt": "2099-01-01T00:00:00Z"}, "in the future"),
        ({"id": "r", "status": "SUCCEEDED", "startedAt": "2026-01-01T00:00:00Z", "usageTotalUsd": "1"}, "usageTotalUsd is str"),
        ({"id": "r", "status": "SUCCEEDED", "startedAt": "2026-01-01T00:00:00Z", "meta": []}, "meta is a list"),
    ],
)  # fmt: skip
def test_unreadable_items_say_why(raw, reason):
    rejected = read_item(raw, NOW)
    assert reason in rejected.reason


def test_a_just_finished_run_is_due_for_another_look():
    finished = NOW - timedelta(seconds=3)
    run = read_item({**item("r", 0), "finishedAt": isoformat(finished)}, NOW)
    assert run.is_terminal and run.recheck_at == finished + timedelta(seconds=15)
    settled = read_item({**item("r", 0), "finishedAt": isoformat(NOW - timedelta(minutes=1))}, NOW)
    assert settled.recheck_at is None
    running = read_item({**item("r", 0, "RUNNING"), "finishedAt": None}, NOW)
    assert not running.is_terminal and running.recheck_at is None


FULL_ITEM = {
    "id": "HG7ML7M8z78YcAPEB", "actId": "HDSasDasz78YcAPEB", "userId": "7sT5jcggjjA9fNcxF",
    "actorTaskId": "KJHSKHausidyaJKHs", "startedAt": "2026-04-01T10:00:00.000Z",
    "finishedAt": "2026-04-01T10:05:00.000Z", "status": "SUCCEEDED",
    "meta": {"origin": "WEB", "userAgent": "Mozilla/5.0"}, "buildId": "HG7ML7M8z78YcAPEB",
    "buildNumber": "0.0.2", "usageTotalUsd": 0.2, "defaultKeyValueStoreId": "sfAjeR4QmeJCQzTfe",
    "defaultDatasetId": "3ZojQDdFTsyE7Moy4", "defaultRequestQueueId": "so93g2shcDzK3pA85",
}  # fmt: skip


@pytest.mark.parametrize(
    "change",
    [
        {}, {"status": "RUNNING", "finishedAt": None}, {"finishedAt": isoformat(NOW)},
        {"meta": {}}, {"meta": None}, {"meta": {"origin": ""}}, {"meta": {"origin": 7}},
        {"meta": "WEB"}, {"buildNumber": 2}, {"buildNumber": 2.5}, {"buildNumber": True},
        {"usageTotalUsd": 3}, {"usageTotalUsd": None}, {"usageTotalUsd": True},
        {"usageTotalUsd": "0.2"}, {"usageTotalUsd": 10**30},
        {"startedAt": "2026-04-01T12:00:00+02:00"}, {"finishedAt": "2026-04-01T10:05:00"},
        {"startedAt": "2099-01-01T00:00:00Z"}, {"startedAt": "yesterday"}, {"finishedAt": 5},
        {"actId": 5}, {"defaultDatasetId": ["x"]}, {"id": ""}, {"status": ""}, {"status": None},
        {"note": "caf\u00e9 \u2603"}, {"note": "\x00"}, {"note": "\ud800"}, {"note": NonFinite("NaN")},
        {"usageTotalUsd": NonFinite("NaN")}, {"usageTotalUsd": NonFinite("1e999")}, {"startedAt": None},
        {"actId": "a\x00b"}, {"id": "r\ud800"},
    ],
)  # fmt: skip
def test_the_fast_reading_of_an_item_is_the_careful_one(change):
    """Items of the documented shape take a fast path; it must read them exactly as the careful,
    field-by-field path does, and leave every other item to it."""
    from worker.sources.apify import source as apify

    if change == {}:
        assert apify._read_common(dict(FULL_ITEM), NOW, True) is not None  # the fast path is taken
    raw = {**FULL_ITEM, **change}
    fast, careful = apify._read_common(raw, NOW, False), apify._read_carefully(raw, NOW, False)
    assert fast is None or fast == careful
    assert read_item(raw, NOW) == careful


def raker_page(*items, next_cursor=None) -> dict:
    return {"runs": list(items), "nextCursor": next_cursor}


def keyset(checkpoint: Checkpoint | None = None, **options):
    from worker.sources.rakerone import KeysetWalk, read_item

    def reader(item, observed_at):
        return read_item(item, observed_at, project="p", terminal=frozenset({"completed"}))

    path = "/api/projects/p/action-runs"
    return KeysetWalk(path, checkpoint or Checkpoint(), reader, page_size=2, **options)


def test_keyset_walk_keeps_the_watermark_until_it_reaches_it():
    walk = keyset(Checkpoint(at(2)), floor=at(2) - timedelta(seconds=5))
    assert walk.next_request().params == {"limit": "2"}
    walk.advance(raker_page(item("z", 9), item("y", 8), next_cursor="c1"), NOW)
    assert walk.checkpoint == Checkpoint(at(2), {"cursor": "c1", "top": isoformat(at(9))})
    assert walk.next_request().params == {"limit": "2", "cursor": "c1"}
    walk.advance(raker_page(item("x", 2), item("w", 1), next_cursor="c2"), NOW)  # below the floor
    assert walk.next_request() is None
    assert walk.checkpoint == Checkpoint(at(9), None)


def test_keyset_walk_resumes_from_its_cursor_and_restarts_a_bounded_number_of_times():
    walk = keyset(Checkpoint(at(2), {"cursor": "c7", "top": isoformat(at(9))}), floor=at(2))
    assert walk.next_request().params["cursor"] == "c7"
    for _ in range(3):
        assert walk.restart() and "cursor" not in walk.next_request().params
        walk.advance(raker_page(item("z", 9), item("y", 8), next_cursor="c1"), NOW)
    assert not walk.restart()  # a server refusing every cursor fails the pass instead
    assert walk.checkpoint.cursor["top"] == isoformat(at(9))


def test_keyset_walk_refuses_a_cursor_that_comes_back():
    walk = keyset()
    walk.advance(raker_page(item("z", 9), item("y", 8), next_cursor="c1"), NOW)
    walk.advance(raker_page(item("x", 7), item("w", 6), next_cursor="c2"), NOW)
    with pytest.raises(PageError, match="same cursor twice"):
        walk.advance(raker_page(item("v", 5), item("u", 4), next_cursor="c1"), NOW)


@pytest.mark.parametrize(
    "body", [{}, {"runs": {}}, {"runs": [], "nextCursor": 5}, {"runs": [], "nextCursor": ""}, []]
)
def test_a_keyset_answer_of_the_wrong_shape_is_a_page_error(body):
    with pytest.raises(PageError):
        keyset().advance(body, NOW)


def test_rakerone_statuses_are_kept_as_received_and_terminal_in_any_case():
    from worker.sources.rakerone import read_item

    terminal = frozenset({"completed", "failed", "cancelled"})
    for status, done in (("Completed", True), ("FAILED", True), ("Needs review", False)):
        run = read_item({**item("r", 0), "status": status}, NOW, project="p", terminal=terminal)
        assert (run.status, run.is_terminal) == (status, done)


def test_json_is_read_fast_and_stored_exactly():
    from worker import jsontext

    assert jsontext.loads(b'{"n": 123456789012345678901234567890}') == {
        "n": 123456789012345678901234567890
    }  # orjson would round it to a float
    run = read_item({**item("r", 0), "cost": 123456789012345678901234567890}, NOW)
    assert '"cost":123456789012345678901234567890' in run.raw
    nan = read_item(
        jsontext.loads(b'{"id": "r", "status": "RUNNING", "x": NaN, "y": [-Infinity]}'), NOW
    )
    assert json.loads(nan.raw) == {"id": "r", "status": "RUNNING", "x": "NaN", "y": ["-Infinity"]}
    assert nan.notes == "escaped NaN in x; -Infinity in y[0]"


@pytest.mark.parametrize(
    ("field", "value", "stored", "note"),
    [
        ("statusMessage", "a\x00b", "a\\u0000b", "escaped NUL in statusMessage"),
        ("statusMessage", "C:\\u0000dir", "C:\\u0000dir", None),  # the text, not a NUL
        ("statusMessage", "\\\x00", "\\\\u0000", "escaped NUL in statusMessage"),
        ("statusMessage", "x\ud800y", "x\\ud800y", "escaped lone surrogate in statusMessage"),
        ("stats", {"k\x00": ["\udfff"]}, {"k\\u0000": ["\\udfff"]},
         "escaped NUL in a key of stats; lone surrogate in stats.k\\u0000[0]"),
    ],
)  # fmt: skip
def test_text_postgres_cannot_store_is_escaped_and_noted(field, value, stored, note):
    """A NUL or a lone surrogate costs a run nothing: raw keeps it escaped, and says so."""
    run = read_item({**item("r", 0), field: value}, NOW)
    assert run.status == "SUCCEEDED" and json.loads(run.raw)[field] == stored
    assert run.notes == note


def test_a_keyset_page_read_again_may_hand_out_the_same_cursor_again():
    """undo() forgets the cursors the undone page handed out: reading a page again (its items
    were garbled on the way) is no cursor loop."""
    walk = keyset()
    garbled = raker_page({"id": 7, "status": "completed"}, item("y", 8), next_cursor="c1")
    walk.advance(garbled, NOW)
    walk.undo()
    walk.advance(raker_page(item("z", 9), item("y", 8), next_cursor="c1"), NOW)
    assert walk.checkpoint.cursor["cursor"] == "c1"
    with pytest.raises(PageError, match="same cursor twice"):  # a real loop is still caught
        walk.advance(raker_page(item("x", 7), item("w", 6), next_cursor="c1"), NOW)


def test_newest_first_with_an_upper_bound_keeps_the_runs_up_to_it_and_those_without_a_start():
    walk = NewestFirst("/v2/actor-tasks/t/runs", Checkpoint(at(1)), page_size=4, until=at(5))
    unstarted = {"id": "q", "status": "READY"}
    result = walk.advance(page(item("z", 6), item("y", 5), unstarted, item("x", 4), limit=4), NOW)
    assert [run.run_id for run in result.runs] == ["y", "q", "x"]  # 5 is the bound: kept
    assert result.total == 99 and walk.checkpoint.cursor["top"] == isoformat(at(5))


def test_newest_first_goes_on_past_runs_at_the_floor_itself():
    """Runs at the watermark's own instant may go on on the next page: only a run older than it
    says the walk has reached it."""
    walk = NewestFirst("/v2/actor-tasks/t/runs", Checkpoint(at(2)), page_size=2)
    walk.advance(page(item("z", 3), item("y", 2), limit=2), NOW)
    assert walk.next_request() is not None
    walk.advance(page(item("x", 2), item("w", 1), limit=2), NOW)
    assert walk.next_request() is None


def test_a_cursor_top_that_is_not_a_time_names_the_field():
    with pytest.raises(ValueError, match=r"^top 'soon' is not an ISO 8601 time"):
        NewestFirst("/v2/actor-tasks/t/runs", Checkpoint(None, {"top": "soon"}), page_size=2)


def test_pages_shrink_by_half_down_to_one_item():
    walk = OldestFirst("/v2/actor-runs", Checkpoint(), page_size=5)
    sizes = []
    while walk.shrink():
        sizes.append(walk.page_size)
    assert sizes == [2, 1] and walk.page_size == 1
    assert walk.next_request().params["limit"] == "1"


def test_an_apify_list_refusing_its_position_is_an_error_not_a_restart():
    assert not OldestFirst("/v2/actor-runs", Checkpoint(), page_size=3).restart()
    assert not NewestFirst("/v2/actor-tasks/t/runs", Checkpoint(), page_size=3).restart()


def test_a_keyset_walk_refused_at_the_top_does_not_restart():
    """A restart goes back to the top; a 400 there is a real error, not another restart."""
    walk = keyset(Checkpoint(None, {"cursor": "c7"}))
    assert walk.restart() and walk.checkpoint.cursor["cursor"] is None
    assert not walk.restart()


def test_a_keyset_page_read_again_forgets_only_its_own_cursor():
    walk = keyset()
    walk.advance(raker_page(item("z", 9), item("y", 8), next_cursor="c1"), NOW)
    walk.advance(raker_page({"id": 7, "status": "completed"}, item("w", 6), next_cursor="c2"), NOW)
    walk.undo()
    walk.advance(raker_page(item("x", 7), item("w", 6), next_cursor="c2"), NOW)
    with pytest.raises(PageError, match="same cursor twice"):  # c1 is still remembered
        walk.advance(raker_page(item("v", 5), item("u", 4), next_cursor="c1"), NOW)


def test_numbers_stay_numbers_beside_text_that_had_to_be_escaped():
    run = read_item({**item("r", 0), "statusMessage": "a\x00b", "usageTotalUsd": 0.25}, NOW)
    usage = typed(run, apify.COLUMNS)["usage_total_usd"]
    assert json.loads(run.raw)["usageTotalUsd"] == 0.25 and usage == 0.25
    assert run.notes == "escaped NUL in statusMessage"


def test_a_key_of_the_item_itself_is_named_in_the_note():
    run = read_item({**item("r", 0), "k\x00": 1}, NOW)
    assert json.loads(run.raw)["k\\u0000"] == 1
    assert run.notes == "escaped NUL in a key of the item"


def test_an_outcome_is_its_text_wherever_it_goes():
    """Outcomes are an enum in the code and text in the table, the log and the metrics' labels:
    the same words, so the README's and the dashboards' queries stay right."""
    from worker.model import Outcome

    assert [o.value for o in Outcome] == [
        "running", "succeeded", "failed", "interrupted", "skipped", "abandoned"
    ]  # fmt: skip
    assert str(Outcome.FAILED) == "failed" and f"{Outcome.SKIPPED}" == "skipped"
    assert Outcome("succeeded") is Outcome.SUCCEEDED
    assert json.dumps({"outcome": Outcome.INTERRUPTED}) == '{"outcome": "interrupted"}'


def configured(kind: str):
    """A source of each kind, as its config would give it."""
    from worker.config import Secret
    from worker.sources import upstream

    keys = {"rakerone": {"projects": ("p",)}, "github": {"repository": "o/r"}}.get(kind, {})
    return upstream(kind).config(name=kind, kind=kind, token_env="T", token=Secret("t"),
                                 base_url="https://example.com", **keys)  # fmt: skip


def test_every_source_names_a_refresh_strategy_that_exists():
    """refresh.open_runs takes the source's word for how to read its open runs again; an
    unknown word is an error, not the open-list way by default."""
    from worker import refresh, sources

    for upstream in sources.UPSTREAMS.values():
        for source in upstream.streams(configured(upstream.kind)):
            assert source.refresh in refresh.STRATEGIES, upstream.kind


async def test_a_source_with_an_unknown_refresh_strategy_is_an_error():
    from types import SimpleNamespace

    from worker import refresh

    runtime = SimpleNamespace(name="new", source=SimpleNamespace(refresh="by_magic"))
    state = SimpleNamespace(runtime=runtime)
    with pytest.raises(ValueError, match="new: unknown refresh strategy 'by_magic'"):
        await refresh.open_runs(state, refresh.Pending([]))


def test_a_windowed_source_has_what_a_backfill_in_windows_needs():
    """backfill.py asks a source whose `windowed` is true for the members of the Windowed
    protocol; a source that says windowed without them would fail mid-backfill."""
    from worker.sources import UPSTREAMS, build
    from worker.sources.contract import Windowed

    members = {name for name in vars(Windowed) if not name.startswith("_")}
    members |= set(Windowed.__annotations__)
    assert {"probe", "read_probe", "window", "page_size"} <= members

    sources = [source for kind in UPSTREAMS for source in build(configured(kind))]
    windowed = [s for s in sources if s.windowed]
    # RakerOne's keyset walk cannot be cut; GitHub asks for one request at a time.
    assert [s.upstream for s in windowed] == ["apify"]
    for source in windowed:
        assert not {m for m in members if not hasattr(source, m)}, source


def test_a_stream_name_is_made_from_its_parts_and_read_back_whole():
    from worker.model import Stream

    window = Stream("backfill", "proj_a").window_of(2)
    assert window == "backfill/proj_a#2" and isinstance(window, str)
    assert (window.kind, window.part, window.window) == ("backfill", "proj_a", 2)
    assert Stream.parse(window) is window and Stream.parse("backfill/proj_a#2") == window
    assert Stream("incremental") == "incremental" and Stream("incremental", "").part is None
    assert Stream("backfill", "p").of_kind("reconcile") == "reconcile/p"
    assert json.dumps({"stream": window}) == '{"stream": "backfill/proj_a#2"}'
    with pytest.raises(ValueError, match="not a stream"):
        Stream("back fill")


def test_the_cursor_keys_queries_read_are_fields_of_a_position():
    """A checkpoint's cursor is a Position as JSON (model.Checkpoint.at and .position are the
    one place that turns one into the other); the keys sql/queries.sql reads must be fields of
    one, or a renamed field would silently read as null there."""
    import dataclasses
    import re

    from worker import backfill, sqlfiles
    from worker.model import Position

    def subclasses(kind: type) -> set[type]:
        return {kind} | {s for sub in kind.__subclasses__() for s in subclasses(sub)}

    assert backfill.Plan in subclasses(Position)  # and every upstream's positions, imported
    fields = {f.name for kind in subclasses(Position) for f in dataclasses.fields(kind)}
    text = (sqlfiles.sql_dir() / "queries.sql").read_text()
    read = set(re.findall(r"cursor\s*(?:->>?|\?)\s*'([a-z_]+)'", text))
    assert read and read <= fields, read - fields
    assert {"top", "done", "range", "windows", "total", "pass_id"} <= read


def test_a_position_is_its_cursor_and_back():
    from worker.backfill import Plan
    from worker.sources.github.source import Ranges

    plan = Plan(range=(None, "2026-01-01T00:00:00.000Z"), windows=(("a", None),), total=3)
    cursor = Checkpoint.at(None, plan).cursor
    assert cursor == {"range": [None, "2026-01-01T00:00:00.000Z"], "windows": [["a", None]],
                      "total": 3}  # fmt: skip
    assert Checkpoint(None, cursor).position(Plan) == plan
    in_flight = Checkpoint.at(None, Ranges(ranges=((None, None),))).cursor
    assert in_flight == {"ranges": [[None, None]], "page": 1, "top": None}  # in flight: kept
