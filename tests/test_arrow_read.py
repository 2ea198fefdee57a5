"""The columnar read (pyarrow) gives the record loop exactly what Python's csv reader gives it, or leaves the
file (or its rest) to that reader and says why; a sync reads the same with it and without it (``arrow: false``).

Each file is read both ways by the CSV source's own stream: ``read_rows`` (Python's csv module) and
``read_columns`` (Arrow where it may); the rows, their errors and their raw hashes must be equal.
"""

from __future__ import annotations

import csv
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import apply_json, counts, rows, syncengine
from test_raw_skip import pipeline as raw_skip_pipeline

from engine import arrow_read
from engine.adapters import register_builtins
from engine.adapters.csv_file import CsvConfig, CsvStream
from engine.config import load_pipeline
from engine.errors import RecordError, RunFailed
from engine.purity import RawSkip
from engine.runner import Engine, RunOptions

register_builtins()

HEADER = ["id", "name", "amount", "note"]
SKIP = RawSkip(b"v" * 16, "id")


def _plain(item: Any) -> Any:
    return ("error", str(item)) if isinstance(item, RecordError) else item


def read_both(path: Path, **config: Any) -> tuple[list[Any], list[Any], CsvStream]:
    """The file's records by the Python reader and by the columnar read (rows zipped with their header)."""
    settings = CsvConfig(path=str(path), **config)
    by_rows = []
    for header, block in CsvStream(settings, [path]).read_rows(None):
        by_rows.extend(_plain(r) if isinstance(r, RecordError) else dict(zip(header, r, strict=True)) for r in block)
    stream = CsvStream(settings, [path])
    by_columns = []
    for header, block in stream.read_columns(None):
        if arrow_read.is_batch(block):
            got = list(arrow_read.records(header, block.batch))
            by_columns.extend(got)
            # The raw hashes made from the columns are the row path's own.
            hasher = SKIP.row_hasher(header)
            assert arrow_read.row_hashes(block, SKIP.keyed_hash(header), hasher) == [
                hasher([r[h] for h in header]) for r in got]
        else:
            by_columns.extend(_plain(r) if isinstance(r, RecordError) else dict(zip(header, r, strict=True))
                              for r in block)
    return by_rows, by_columns, stream


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding, "surrogatepass"))
    return path


def many(n: int, start: int = 0, changed_every: int = 0) -> str:
    return "".join(f"L{i:07d},name {i} Zoë,{i}.{75 if changed_every and i % changed_every == 0 else 25},"
                   f"note {i % 7}\n" for i in range(start, start + n))


CLEAN = {
    "unicode and empty fields": "id,name,amount,note\nL1,Zoë ß 東京 \U0001f69a,,\nL2,,1.5,x\n",
    "crlf": "id,name,amount,note\r\nL1,a,1,x\r\nL2,b,2,y\r\n",
    "bare cr": "id,name,amount,note\rL1,a,1,x\rL2,b,2,y\r",
    "mixed endings and blank lines": "id,name,amount,note\n\nL1,a,1,x\r\n\r\nL2,b,2,y\rL3,c,3,z",
    "unit separator and nul inside fields": "id,name,amount,note\nL1,a\x1fb,1,\x00\nL2,\x1f,2,y\n",
    "spaces kept, header names stripped": " id , name ,amount,note\nL1,  padded  ,1, x \n",
    "byte-order mark (utf-8-sig)": "\ufeffid,name,amount,note\nL1,a,1,x\n",
    "apostrophes and backslashes": "id,name,amount,note\nL1,O'Brien,1,C:\\path\\x\n",
    "several blocks": "id,name,amount,note\n" + many(40000),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(CLEAN))
def test_arrow_reads_exactly_what_the_csv_module_reads(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / "in.csv", CLEAN[name])
    by_rows, by_columns, stream = read_both(path)
    assert by_columns == by_rows
    assert stream.columnar == {"in.csv": None}
    assert stream.arrow_rows == len(by_rows) > 0


@pytest.mark.timeout(120)
def test_other_delimiters_and_a_header_from_the_config(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", "L1;a;1;x\nL2;b;2;y\n")
    by_rows, by_columns, stream = read_both(path, delimiter=";", header=HEADER)
    assert by_columns == by_rows and len(by_rows) == 2 and stream.arrow_rows == 2


REFUSED = {
    "quotes": ('id,name,amount,note\nL1,"a, b",1,x\n', {}, "quote"),
    "malformed quotes": ('id,name,amount,note\nL1,"x"y,1,x\n', {}, "quote"),
    "latin-1": ("id,name,amount,note\nL1,Zoë,1,x\n", {"encoding": "latin-1"}, "not UTF-8"),
    "mark with plain utf-8": ("\ufeffid,name,amount,note\nL1,a,1,x\n", {"encoding": "utf-8"}, "byte-order mark"),
    "one column": ("id\nL1\n\nL2\n", {}, "single column"),
    "a NUL delimiter": ("id\x00name\nL1\x00a\n", {"delimiter": "\x00"}, "other than NUL"),
    "a non-ASCII delimiter": ("id§name\nL1§a\n", {"delimiter": "§"}, "ASCII"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(REFUSED))
def test_files_arrow_might_read_differently_take_the_python_reader(tmp_path: Path, name: str) -> None:
    text, config, why = REFUSED[name]
    path = write(tmp_path / "in.csv", text, config.get("encoding", "utf-8"))
    by_rows, by_columns, stream = read_both(path, **config)
    assert by_columns == by_rows
    assert why in (stream.columnar["in.csv"] or "") and stream.arrow_rows == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bad", ["a row,too,wide,for,the,header\n", "   \n",
                                 "L9," + "x" * (csv.field_size_limit() + 1) + ",1,x\n"],
                         ids=["too wide", "white space only", "over the field size limit"])
def test_a_row_arrow_refuses_hands_the_rest_of_the_file_to_the_python_reader(tmp_path: Path, bad: str) -> None:
    # Far enough into the file that Arrow has given out whole batches before it.
    text = "id,name,amount,note\n" + many(30000) + bad + many(20, start=30000)
    path = write(tmp_path / "in.csv", text)
    by_rows, by_columns, stream = read_both(path)
    assert by_columns == by_rows
    assert sum(1 for r in by_rows if isinstance(r, tuple)) == 1  # the bad row's error, located, in its place
    assert 0 < stream.arrow_rows <= 30000  # the rows before the bad one, up to its batch
    assert (stream.columnar["in.csv"] or "").startswith(f"Arrow read {stream.arrow_rows} rows")


@pytest.mark.timeout(120)
def test_text_that_is_not_utf8_deep_in_the_file_is_named_as_without_arrow(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(("id,name,amount,note\n" + many(30000)).encode() + b"L9,\xe9t\xe9,1,x\n")
    for read in (lambda s: s.read_rows(None), lambda s: s.read_columns(None)):
        with pytest.raises(RunFailed, match="in.csv: not utf-8-sig text"):
            for _, block in read(CsvStream(CsvConfig(path=str(path)), [path])):
                list(block) if not arrow_read.is_batch(block) else None


# --- a sync, with the columnar read and without ----------------------------------------------------

def pipeline(folder: Path, arrow: bool) -> Path:
    """tests/test_raw_skip.py's pipeline (CSV to SQLite, a pure mapping), with the read chosen."""
    return raw_skip_pipeline(folder, sync_extra=f"    arrow: {str(arrow).lower()}\n")


def run(path: Path) -> dict[str, Any]:
    result, report = apply_json(path, env={"SYNCENGINE_LOG_FORMAT": "text"})
    assert result.code in (0, 1), result.text
    block = report["syncs"]["loads"]
    return {**counts(report, "loads"), **{k: block[k] for k in ("unmapped", "path", "arrow_rows", "columnar")}}


@pytest.mark.timeout(240)
def test_a_sync_writes_the_same_with_arrow_and_without(tmp_path: Path) -> None:
    files = ["id,name,amount,note\n" + many(12000),
             "id,name,amount,note\n" + many(11000, changed_every=10) + "L9999999,bad,abc,x\n",
             'id,name,amount,note\nL1,"quoted, so rows",1,x\n' + many(11000, changed_every=10)]
    results: dict[bool, list[dict[str, Any]]] = {}
    for arrow in (True, False):
        folder = tmp_path / f"arrow-{arrow}"
        folder.mkdir()
        path = pipeline(folder, arrow)
        results[arrow] = []
        for text in files:
            (folder / "in.csv").write_text(text, encoding="utf-8")
            results[arrow].append(run(path))
        results[arrow].append({"table": rows(folder / "out.db", "SELECT id, name, cents FROM loads ORDER BY id")})
    counted = ("creates", "updates", "deletes", "unchanged", "errors", "unmapped")
    for with_arrow, without in zip(results[True], results[False], strict=True):
        assert {k: with_arrow.get(k) for k in (*counted, "table")} == {k: without.get(k) for k in (*counted, "table")}
    assert [r["path"] for r in results[True][:3]] == ["arrow", "arrow", "row"]
    assert [r["path"] for r in results[False][:3]] == ["row", "row", "row"]
    assert results[True][2]["columnar"] == {"in.csv": "the file holds quote characters"}
    assert results[True][1]["unmapped"] == 11000 - 1100 and results[True][1]["errors"] == 1


@pytest.mark.timeout(120)
def test_switching_the_read_keeps_the_raw_hashes(tmp_path: Path) -> None:
    """Both reads hash a raw row alike: a rerun after switching maps nothing that did not change."""
    path = pipeline(tmp_path, True)
    (tmp_path / "in.csv").write_text("id,name,amount,note\n" + many(3000), encoding="utf-8")
    assert run(path)["creates"] == 3000
    path.write_text(path.read_text(encoding="utf-8").replace("arrow: true", "arrow: false"), encoding="utf-8")
    again = run(path)
    assert (again["path"], again["unchanged"], again["unmapped"]) == ("row", 3000, 3000)
    path.write_text(path.read_text(encoding="utf-8").replace("arrow: false", "arrow: true"), encoding="utf-8")
    third = run(path)
    assert (third["path"], third["unchanged"], third["unmapped"]) == ("arrow", 3000, 3000)


@pytest.mark.timeout(120)
def test_plan_and_the_summary_say_which_read_a_sync_took(tmp_path: Path) -> None:
    path = pipeline(tmp_path, True)
    (tmp_path / "in.csv").write_text("id,name,amount,note\n" + many(30), encoding="utf-8")
    planned = syncengine("plan", path, cwd=tmp_path, env={"SYNCENGINE_LOG_FORMAT": "text"})
    assert planned.code == 0 and "loads: read with Arrow (columnar): 30 rows" in planned.out, planned.text
    applied = syncengine("apply", path, cwd=tmp_path, env={"SYNCENGINE_LOG_FORMAT": "text"})
    assert applied.code == 0 and "loads: read with Arrow (columnar): 30 rows" in applied.out, applied.text
    (tmp_path / "in.csv").write_text('id,name,amount,note\nL1,"a, b",1,x\n', encoding="utf-8")
    planned = syncengine("plan", path, cwd=tmp_path, env={"SYNCENGINE_LOG_FORMAT": "text"})
    assert "loads: note: in.csv read row by row: the file holds quote characters" in planned.out, planned.text
    assert "read with Arrow" not in planned.out
    path.write_text(path.read_text(encoding="utf-8").replace("arrow: true", "arrow: false"), encoding="utf-8")
    (tmp_path / "in.csv").write_text("id,name,amount,note\n" + many(30), encoding="utf-8")
    planned = syncengine("plan", path, cwd=tmp_path, env={"SYNCENGINE_LOG_FORMAT": "text"})
    assert planned.code == 0 and "Arrow" not in planned.out, planned.text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("arrow", [True, False], ids=["arrow", "rows"])
def test_a_run_stopped_between_batches_keeps_no_raw_hash_of_a_row_it_did_not_send(tmp_path: Path, arrow: bool) -> None:
    """A key read twice in one run, stopped after the batch with its first row: its raw hash must be the sent row's,
    so the next run sees the later value as a change (not as unchanged, which would keep the stale one for good)."""
    path = pipeline(tmp_path, arrow)
    path.write_text(path.read_text(encoding="utf-8").replace("    arrow:", "    batch_size: 3\n    arrow:"),
                    encoding="utf-8")

    def apply(text: str, stop_after_first_batch: bool = False) -> dict[str, tuple[str, int]]:
        (tmp_path / "in.csv").write_text("id,name,amount,note\n" + text, encoding="utf-8")
        stop = threading.Event()
        options = RunOptions(stop=stop, progress=(lambda name, n: stop.set()) if stop_after_first_batch else None)
        report = Engine(load_pipeline(path)).run(options)
        assert report.syncs["loads"].status == ("interrupted" if stop_after_first_batch else "ok")
        table = rows(tmp_path / "out.db", "SELECT id, name, cents FROM loads")
        return {str(r[0]): (str(r[1]), int(str(r[2]))) for r in table}

    apply("X1,x,0,n\nK,k,1,n\nA,a,0,n\nB,b,0,n\n")
    # K comes twice; the run stops after the first batch (X1, K with 2, A), the later K (3) never sent.
    assert apply("X1,x,1,n\nK,k,2,n\nbad,row,too,wide,x\nA,a,1,n\nB,b,1,n\nK,k,3,n\n", True)["K"] == ("K", 200)
    assert apply("X1,x,1,n\nK,k,3,n\nA,a,1,n\nB,b,1,n\n")["K"] == ("K", 300)


def test_a_quote_arriving_after_the_scan_stops_arrow_before_its_batch_is_given_out(tmp_path: Path) -> None:
    """The scan found no quote, then the file was rewritten: the batch holding one is refused (the rest goes to
    the Python reader), rather than read the way Arrow reads unquoted text."""
    path = write(tmp_path / "in.csv", "id,name,amount,note\n" + many(5) + 'L9,"a,b",1\n')
    given = []
    with pytest.raises(Exception) as raised:  # noqa: PT011 - pyarrow's own error class, checked below
        for batch in arrow_read.batches(path, delimiter=",", width=4, has_header=True, quotechar='"'):
            given.append(batch)
    assert arrow_read.is_arrow_error(raised.value) and "quote character" in str(raised.value)
    assert given == []
