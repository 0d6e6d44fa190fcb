"""The shard files of a user corpus and the documents in them, read one document at a time.

A `.txt` file is one document; each non-blank line of a `.jsonl` or `.jsonl.gz` file is one (its
string field `text`); each row of a Parquet file's `text` column is one. Every reader checks what
it reads and names the file (and line or row) of the first bad input in an LtmError.
"""
from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Iterator

from ..errors import LtmError

KINDS = ("txt", "jsonl", "jsonl.gz", "parquet")
PARQUET_EXTRA = "reading Parquet corpora needs the optional extra: pip install 'ltm-ppl[parquet]' (pyarrow)"


def shard_kind(path: Path) -> str | None:
    """The format of a shard in a directory, by its name (None: not a shard, ignored)."""
    name = path.name
    for kind in ("jsonl.gz", "jsonl", "parquet", "txt"):
        if name.endswith("." + kind):
            return kind
    return None


def file_kind(path: Path) -> str:
    """The format of a corpus given as one file: any name that is not a known shard is text."""
    return shard_kind(path) or "txt"


def list_shards(directory: Path) -> list[Path]:
    """Every shard under `directory` (recursively), in sorted path order."""
    return sorted(p for p in directory.rglob("*") if shard_kind(p) and p.is_file())


def check_text(path: Path, raw: bytes, where: str = "") -> str:
    if b"\x00" in raw:
        raise LtmError(f"corpus file {path}{where} is binary, not text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LtmError(f"corpus file {path}{where} is not UTF-8 text (byte {exc.start})") from None


def read_txt(path: Path, raw: bytes | None = None) -> str:
    raw = path.read_bytes() if raw is None else raw
    if not raw.strip():
        raise LtmError(f"corpus file {path} is empty")
    return check_text(path, raw)


def jsonl_text(path: Path, number: int, line: bytes) -> str:
    """The `text` of one non-blank JSON line (numbered from 1)."""
    where = f" line {number}"
    try:
        record = json.loads(check_text(path, line, where))
    except (ValueError, RecursionError):  # JSONDecodeError; over-long integers; deep nesting
        raise LtmError(f"corpus file {path}{where} is not JSON") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise LtmError(f"corpus file {path}{where} has no string field 'text'")
    return record["text"]


def open_jsonl(path: Path, kind: str):
    return gzip.open(path, "rb") if kind == "jsonl.gz" else open(path, "rb")


def jsonl_lines(path: Path, kind: str, start: int = 0, stop: int | None = None, first_line: int = 1):
    """(line number, byte offset, raw line) from byte `start` (a line start) to `stop`; a damaged
    gzip stream is one LtmError naming the file."""
    try:
        with open_jsonl(path, kind) as fh:
            if start:
                fh.seek(start)
            offset, number = start, first_line
            for line in fh:
                if stop is not None and offset >= stop:
                    return
                yield number, offset, line
                offset += len(line)
                number += 1
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise LtmError(f"corpus file {path} is not valid gzip data ({exc})") from None


def jsonl_documents(path: Path, kind: str, start: int = 0, stop: int | None = None, first_line: int = 1) -> Iterator[str]:
    for number, _, line in jsonl_lines(path, kind, start, stop, first_line):
        if line.strip():
            yield jsonl_text(path, number, line)


def parquet_file(path: Path):
    """An open pyarrow ParquetFile whose `text` column holds strings."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise LtmError(PARQUET_EXTRA) from None
    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise LtmError(f"corpus file {path} is not a Parquet file ({str(exc).splitlines()[0]})") from None
    schema = file.schema_arrow
    if "text" not in schema.names:
        raise LtmError(f"corpus file {path} has no column 'text' (columns: {', '.join(schema.names) or 'none'})")
    kind = schema.field("text").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise LtmError(f"corpus file {path}: column 'text' holds {kind}, not strings")
    return file


def parquet_documents(path: Path, start: int = 0, stop: int | None = None) -> Iterator[str]:
    """The `text` of every row in row groups [start, stop)."""
    import pyarrow as pa

    file = parquet_file(path)
    stop = file.num_row_groups if stop is None else stop
    row = sum(file.metadata.row_group(g).num_rows for g in range(start))
    for group in range(start, stop):
        try:
            column = file.read_row_group(group, columns=["text"]).column("text")
            values = column.to_pylist()
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise LtmError(f"corpus file {path} row group {group} cannot be read ({str(exc).splitlines()[0]})") from None
        for value in values:
            if value is None:
                raise LtmError(f"corpus file {path} row {row} (counted from 0) has no text (null)")
            yield value
            row += 1
