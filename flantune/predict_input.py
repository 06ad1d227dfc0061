"""The rows `flantune predict` reads: a .jsonl, .csv or .parquet file of rows with the template's columns, or plain
text, one example a line, from a .txt file or standard input, which fills the one column the template reads.

Files are streamed, never read whole: parquet by row groups (pyarrow's iter_batches), CSV by blocks (pyarrow's
streaming reader), JSON lines and text line by line. `open_rows` checks a file in one streaming pass before any
model loads (it exists, has rows, every row has every column the template reads); rows are then read again,
chunk by chunk, as they are predicted. Standard input can be read once: only its first line is checked.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from flantune.errors import FlantuneError, first_line

STDIN = "-"
TEXT, JSONL, CSV, PARQUET = ".txt", ".jsonl", ".csv", ".parquet"
SUFFIXES = (JSONL, CSV, PARQUET, TEXT)


@dataclass
class Rows:
    """An input, checked: its rows in chunks, in order."""

    name: str  # for messages: the file, or "standard input"
    total: int | None  # rows, where known before reading them (not for standard input)
    _chunks: Callable[[int], Iterator[list[dict[str, Any]]]]

    def chunks(self, size: int) -> Iterator[list[dict[str, Any]]]:
        return self._chunks(size)


def open_rows(spec: str | None, columns: list[str], *, reads: str, stdin: TextIO | None = None) -> Rows:
    """The input `spec` (a path, or '-' / None for standard input), checked for `columns`; `reads` says what reads
    them in messages ("template 'x' of task 'y'")."""
    if spec in (None, "", STDIN):
        return _stdin_rows(stdin if stdin is not None else sys.stdin, _text_column(columns, reads, "standard input"))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FlantuneError(f"input={spec}: {'a folder, not a file' if path.is_dir() else 'no such file'}. Give a "
                            f"{', '.join(SUFFIXES)} file, or '-' (or no input=) to read text from standard input.")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise FlantuneError(f"input={spec}: flantune predict reads {', '.join(SUFFIXES[:-1])} files of rows, or "
                            f"{TEXT} files of plain text (one example a line); '{path.suffix}' is none of them.")
    if suffix == TEXT:
        return _text_rows(path, _text_column(columns, reads, str(path)))
    opened = {JSONL: _jsonl_rows, CSV: _csv_rows, PARQUET: _parquet_rows}[suffix](path, columns, reads)
    if not opened.total:
        raise FlantuneError(f"input={spec} holds no rows. Give a file with one row per example to predict.")
    return opened


def _text_column(columns: list[str], reads: str, name: str) -> str:
    if len(columns) != 1:
        raise FlantuneError(
            f"Plain text ({name}) fills one column, and {reads} reads {len(columns)}: {', '.join(columns)}. Give "
            f"rows with these columns in a {JSONL}, {CSV} or {PARQUET} file, or pick a template that reads one column "
            "(template=NAME), or send the text as it is with template=none."
        )
    return columns[0]


def _missing(name: str, row: int, column: str, columns: list[str], reads: str, line: int | None = None) -> FlantuneError:
    where = f"row {row}" + (f" (line {line})" if line is not None and line != row else "")
    return FlantuneError(
        f"{where} of {name} has no value for column '{column}', which {reads} reads. Every row needs "
        f"{', '.join(repr(c) for c in columns)}: add the column, or drop the row."
    )


def chunked(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    rows = iter(rows)
    while chunk := list(itertools.islice(rows, size)):
        yield chunk


# ---- plain text -----------------------------------------------------------------------------------------------


def _lines(stream: Iterable[str]) -> Iterator[str]:
    """The non-blank lines, without their line ends."""
    return (line.rstrip("\r\n") for line in stream if line.strip())


def _stdin_rows(stream: TextIO, column: str) -> Rows:
    if stream.isatty():  # nothing piped in: reading would wait for typing
        raise FlantuneError("No input: give input=FILE (.jsonl, .csv, .parquet or .txt), or pipe text in, one example "
                            "a line (`... | flantune predict model=RUN`; input=- reads a terminal until Ctrl-D).")
    lines = _lines(stream)
    first = next(lines, None)  # read before the model loads: an empty input is an error now
    if first is None:
        raise FlantuneError("Standard input is empty: pipe in text, one example a line, or give input=FILE.")
    rows = ({column: line} for line in itertools.chain([first], lines))
    return Rows("standard input", None, lambda size: chunked(rows, size))


def _text_rows(path: Path, column: str) -> Rows:
    with open(path, encoding="utf-8") as f:
        total = sum(1 for _ in _lines(f))
    if not total:
        raise FlantuneError(f"input={path} is empty: give one example a line.")

    def chunks(size: int) -> Iterator[list[dict[str, Any]]]:
        with open(path, encoding="utf-8") as f:
            yield from chunked(({column: line} for line in _lines(f)), size)

    return Rows(str(path), total, chunks)


# ---- JSON lines ---------------------------------------------------------------------------------------------------


def _json_rows(path: Path) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(row number, line number, row) of each non-blank line, a JSON object."""
    with open(path, encoding="utf-8") as f:
        rows = 0
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FlantuneError(f"Line {line_no} of {path} is not valid JSON ({exc}). A {JSONL} file holds one "
                                    "JSON object a line, e.g. {\"text\": \"...\"}.") from exc
            if not isinstance(row, dict):
                raise FlantuneError(f"Line {line_no} of {path} is a JSON {type(row).__name__}, not an object: a "
                                    f"{JSONL} file holds one JSON object a line, e.g. {{\"text\": \"...\"}}.")
            rows += 1
            yield rows, line_no, row


def _jsonl_rows(path: Path, columns: list[str], reads: str) -> Rows:
    total = 0
    for number, line_no, row in _json_rows(path):
        for column in columns:
            if row.get(column) is None:
                raise _missing(str(path), number, column, columns, reads, line_no)
        total = number

    def chunks(size: int) -> Iterator[list[dict[str, Any]]]:
        return chunked((row for _, _, row in _json_rows(path)), size)

    return Rows(str(path), total, chunks)


# ---- CSV and parquet: Arrow record batches ------------------------------------------------------------------------


def _arrow_error(path: Path, exc: Exception, kind: str) -> FlantuneError:
    return FlantuneError(f"{path} can't be read as {kind} ({first_line(exc)}).")


def _csv_reader(path: Path):
    """pyarrow's streaming CSV reader, every column read as text (types inferred from the first block would fail
    on a later one) and empty cells as missing; quoted values may hold line breaks."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    parse = pacsv.ParseOptions(newlines_in_values=True)
    names = pacsv.open_csv(path, parse_options=parse).schema.names
    convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in names}, strings_can_be_null=True)
    return pacsv.open_csv(path, parse_options=parse, convert_options=convert)


def _check_batches(batches: Iterable, names: list[str], path: Path, columns: list[str], reads: str) -> int:
    """The number of rows in `batches` (Arrow record batches), each of which has a value in every column."""
    import pyarrow.compute as pc

    for column in columns:
        if column not in names:
            raise FlantuneError(
                f"{path} has no column '{column}', which {reads} reads. Its columns are: {', '.join(names)}. Every "
                f"row needs {', '.join(repr(c) for c in columns)}."
            )
    total = 0
    for batch in batches:
        for column in columns:
            values = batch.column(column)
            if values.null_count:
                raise _missing(str(path), total + pc.index(pc.is_null(values), True).as_py() + 1, column, columns,
                               reads)
        total += batch.num_rows
    return total


def _csv_rows(path: Path, columns: list[str], reads: str) -> Rows:
    import pyarrow as pa

    try:
        reader = _csv_reader(path)
        total = _check_batches(reader, reader.schema.names, path, columns, reads)
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            raise FlantuneError(f"input={path} is empty: give a header line and one row per example.") from exc
        raise _arrow_error(path, exc, "CSV") from exc

    def chunks(size: int) -> Iterator[list[dict[str, Any]]]:
        return chunked((row for batch in _csv_reader(path) for row in batch.to_pylist()), size)

    return Rows(str(path), total, chunks)


def _parquet_rows(path: Path, columns: list[str], reads: str) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
        read = [c for c in columns if c in names]
        total = _check_batches(pq.ParquetFile(path).iter_batches(columns=read), names, path, columns, reads)
    except (pa.ArrowInvalid, OSError) as exc:
        raise _arrow_error(path, exc, "parquet") from exc

    def chunks(size: int) -> Iterator[list[dict[str, Any]]]:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=size):
            yield batch.to_pylist()

    return Rows(str(path), total, chunks)
