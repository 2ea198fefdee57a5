"""CSV files read by pyarrow for the record loop's sift (the ``arrow`` extra).

A rerun of a pure mapping reads every row only to recognise it unchanged (docs/change-tracking.md,
"Unchanged records skip the mapping"). Python's :mod:`csv` reader costs about 3 us a row of a
thirteen-column export; pyarrow's parser reads the same file into text columns in a fraction of it,
and the raw hashes are made from the columns (:func:`row_hashes`) without a list per row.

It is used only where it reads exactly what :mod:`csv` reads (:func:`columnar_refusal` says why not
otherwise):

* the file holds **no quote character at all** (a scan for the byte before the read). Without
  quotes both parsers only split lines (``\\n``, ``\\r\\n``, ``\\r``) and fields (the delimiter);
  with quotes they differ on malformed text (``"x"y`` is an error for ``csv`` in strict mode and
  ``xy`` for Arrow), and a scan cannot tell every closing quote from an opening one;
* the encoding is UTF-8 (``utf-8-sig``, the default, or ``utf-8``; a byte-order mark with plain
  ``utf-8`` leaves the Python reader's header as it reads it, so that file takes the Python reader);
* the header has at least two columns (a one-column file's ``""`` line is a row for Arrow and an
  empty line for the Python reader).

Whatever Arrow refuses later in a file (a row of another width, text that is not UTF-8, a field
over :func:`csv.field_size_limit`) hands the rest of the file, from the first row not yet given
out, to the Python reader, which reports it exactly as without the extra.
"""

from __future__ import annotations

import codecs
import csv
import logging
from collections.abc import Callable, Iterator
from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as arrow_compute
    import pyarrow.csv as arrow_csv
else:  # imported on first use: pyarrow's import costs about 0.3 s and 35 MB, which a run without it must not pay
    pa = arrow_compute = arrow_csv = None


def _load() -> None:
    """Import pyarrow (the first columnar read of the process)."""
    global pa, arrow_compute, arrow_csv
    if pa is None:
        import pyarrow
        import pyarrow.compute
        import pyarrow.csv

        pa, arrow_compute, arrow_csv = pyarrow, pyarrow.compute, pyarrow.csv


def is_arrow_error(exc: BaseException) -> bool:
    """Whether an exception is Arrow's (a read it cannot go on with)."""
    return pa is not None and isinstance(exc, pa.ArrowException)


log = logging.getLogger("syncengine")

BLOCK_BYTES = 1 << 18
"""Bytes Arrow parses at a time (about 2,000 rows of a thirteen-column export). Arrow's memory pool grows to
about forty times this during a read; 256 KiB keeps that near 10 MB at no cost in speed."""

SEPARATOR = "\x1f"
SCAN_BYTES = 1 << 20
"""Bytes read at a time when a file is scanned for quote characters."""


@cache
def available() -> bool:
    """Whether pyarrow is installed and usable (imported on this first question, not before)."""
    if find_spec("pyarrow") is None:
        return False
    try:
        _load()
        return all(hasattr(arrow_compute, name) for name in _KERNELS) and hasattr(arrow_csv, "open_csv")
    except Exception:  # noqa: BLE001 - a broken install reads row by row, as without the extra
        log.warning("pyarrow is installed but cannot be used; CSV files are read row by row", exc_info=True)
        return False


_KERNELS = ("binary_join_element_wise", "count_substring", "equal", "all", "indices_nonzero", "invert",
            "max", "binary_length", "match_substring", "any")


def columnar_refusal(path: Path, *, encoding: str, delimiter: str, quotechar: str,
                     width: int) -> str | None:
    """Why this file is read by the Python reader, or ``None`` when Arrow reads it exactly as it would."""
    if not available():
        return "pyarrow is not installed (pip install 'syncengine[arrow]')"
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        return f"the encoding {encoding} is unknown"
    if name not in ("utf-8", "utf-8-sig"):
        return f"the encoding is {encoding}, not UTF-8"
    if width < 2:
        return "the file has a single column"
    if delimiter in "\r\n" or quotechar in "\r\n":
        return "the delimiter or quote character is a line break"
    if not delimiter.isascii() or delimiter == "\x00":
        return "the delimiter is not an ASCII character other than NUL (Arrow takes no other)"
    if quotechar == SEPARATOR:
        return "the quote character is \\x1f, which the read joins fields with"
    quote = quotechar.encode("utf-8")
    try:
        with path.open("rb") as handle:
            # Read in blocks, not mapped: mapped pages that were scanned count as the process's memory.
            block = handle.read(SCAN_BYTES)
            if not block:
                return "the file is empty"
            if name == "utf-8" and block.startswith(codecs.BOM_UTF8):
                return "the file starts with a byte-order mark and the encoding is utf-8"
            carry = b""
            while block:
                if quote in carry + block:  # a quote character of several bytes may straddle two blocks
                    return "the file holds quote characters"
                carry = block[len(block) - len(quote) + 1:] if len(quote) > 1 else b""
                block = handle.read(SCAN_BYTES)
    except OSError as exc:
        return f"the file cannot be read ({exc})"
    return None


def batches(path: Path, *, delimiter: str, width: int, has_header: bool,
            quotechar: str | None = None) -> Iterator[tuple[Any, Any]]:
    """The file's rows as ``pyarrow.RecordBatch`` es of ``width`` text columns named ``0``, ``1``, ..., each
    with its rows joined by ``\\x1f`` (one text array: the raw hashes are made from it).

    Raises ``pyarrow.ArrowInvalid`` where Arrow cannot read on (the caller goes on with the Python
    reader); a batch with a field longer than :func:`csv.field_size_limit` raises it too, before
    the batch is given out.
    """
    _load()
    names = [str(i) for i in range(width)]
    reader = arrow_csv.open_csv(
        str(path),
        read_options=arrow_csv.ReadOptions(column_names=names, skip_rows=1 if has_header else 0,
                                           block_size=BLOCK_BYTES, use_threads=False),
        parse_options=arrow_csv.ParseOptions(delimiter=delimiter, quote_char=False, double_quote=False,
                                             escape_char=False, newlines_in_values=False,
                                             ignore_empty_lines=True),
        convert_options=arrow_csv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False,
                                                 check_utf8=True))
    limit = csv.field_size_limit()
    with reader:
        for batch in reader:
            if batch.num_rows == 0:
                continue
            # The checks run on the rows joined (a handful of kernel calls a batch, not a few per column: each
            # call costs tens of microseconds); a row no longer than the limit holds no field that is.
            joined = arrow_compute.binary_join_element_wise(*batch.columns, SEPARATOR)
            if arrow_compute.max(arrow_compute.binary_length(joined)).as_py() > limit:
                for column in batch.columns:
                    if arrow_compute.max(arrow_compute.binary_length(column)).as_py() > limit:
                        raise pa.ArrowInvalid(f"a field is longer than {limit} bytes (csv.field_size_limit)")
            if quotechar is not None and arrow_compute.any(arrow_compute.match_substring(joined, quotechar)).as_py():
                # The scan found none: the file was rewritten since. Python's reader reads it from here.
                raise pa.ArrowInvalid("a quote character appeared after the file was scanned")
            yield batch, joined


def row_hashes(rows: ArrowRows, new_hash: Callable[[], Any], fallback: Callable[[list[str]], bytes]) -> list[bytes]:
    """Each row's raw hash, as :meth:`~engine.purity.RawSkip.row_hasher` makes it from the row's list.

    The row hasher joins a row's text with ``\\x1f`` and hashes the UTF-8 bytes when the row holds
    no ``\\x1f`` of its own; ``new_hash`` is that keyed hash, fresh. Arrow joins the columns; a row
    with a ``\\x1f`` in a field is hashed by ``fallback`` from its list.
    """
    batch, joined = rows.batch, rows.joined
    separators = batch.num_columns - 1
    clean = arrow_compute.equal(arrow_compute.count_substring(joined, SEPARATOR), separators)
    hashes: list[bytes] = []
    append = hashes.append
    for data in joined.cast(pa.binary()).to_pylist():
        h = new_hash()
        h.update(data)
        append(h.digest())
    if not arrow_compute.all(clean).as_py():
        for i in arrow_compute.indices_nonzero(arrow_compute.invert(clean)).to_pylist():
            hashes[i] = fallback([column[i].as_py() for column in batch.columns])
    return hashes


def is_batch(rows: Any) -> bool:
    """Whether a block's rows are Arrow's (:class:`ArrowRows`, a :data:`~engine.interfaces.ColumnBlock`)."""
    return rows.__class__ is ArrowRows


def records(header: list[str], batch: Any) -> Iterator[dict[str, Any]]:
    """A batch's rows as dicts keyed by the header, as the Python reader's rows zipped with it."""
    for values in zip(*(column.to_pylist() for column in batch.columns), strict=True):
        yield dict(zip(header, values, strict=True))


class ArrowRows:
    """One Arrow batch of a file's rows: the batch (text columns in the header's order), the header, and the
    rows joined by ``\\x1f`` (what the raw hashes are made from)."""

    __slots__ = ("batch", "header", "joined")

    def __init__(self, batch: Any, header: list[str], joined: Any) -> None:
        self.batch = batch
        self.header = header
        self.joined = joined


def taken(rows: ArrowRows, indices: list[int]) -> Iterator[dict[str, Any]]:
    """Rows of a batch by their places, as dicts (one ``take`` for all of them)."""
    yield from records(rows.header, rows.batch.take(pa.array(indices, pa.int64())))
