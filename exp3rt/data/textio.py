"""Fast line-oriented reading shared by the loaders: gzip or plain, binary, in blocks of lines.

Reading in binary and splitting big blocks ourselves is several times faster than iterating a text
file object line by line, and it keeps each line's bytes so a loader can tell bad encoding (the
bytes do not decode) apart from bad syntax (they decode but do not parse), with the line number.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson

from exp3rt.data.problems import DataError

GZIP_MAGIC = b"\x1f\x8b"
BLOCK_BYTES = 8 << 20  # 8 MiB of (decompressed) text per read
UTF8_BOM = b"\xef\xbb\xbf"


def open_binary(path: str | Path):
    """Open ``path`` for binary reading, transparently decompressing gzip (detected by its magic
    bytes, so a misnamed file still works)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == GZIP_MAGIC else open(path, "rb")


def iter_line_blocks(
    path: str | Path, block_bytes: int = BLOCK_BYTES, problems=None
) -> Iterator[tuple[int, list[bytes]]]:
    """Yield ``(first_line_number, lines)`` with 1-based physical line numbers.

    Lines are split on ``\\n`` only (a ``\\r`` before it is left in place: JSON parsers treat it as
    whitespace). A final line without a newline is yielded too; the empty string after a trailing
    newline is not. A UTF-8 byte-order mark at the start of the file is dropped.

    A gzip file that ends early (a cut download) or is corrupt is bad input named by file and line:
    ``problems.bad`` raises in strict mode; in lenient mode the complete lines before the damage are
    yielded, the cut-off line is dropped and the damage counted. Without ``problems`` it raises
    :class:`~exp3rt.data.problems.DataError`.
    """
    line_no = 1
    rest = b""
    first = True
    done = 0  # decompressed bytes read so far
    damage = None
    with open_binary(path) as fh:
        while True:
            try:
                block = fh.read(block_bytes)
            except (EOFError, gzip.BadGzipFile, zlib.error) as e:
                block, damage = _salvage(path, done), e  # the readable bytes of the failed read
            done += len(block)
            if first:
                first = False
                if block.startswith(UTF8_BOM):
                    block = block[len(UTF8_BOM) :]
            if not block:
                break
            if rest:
                block = rest + block
            lines = block.split(b"\n")
            rest = lines.pop()
            if lines:
                yield line_no, lines
                line_no += len(lines)
            if damage is not None:
                break
        if damage is not None:
            _damaged_gzip(path, line_no, bool(rest), damage, problems)
            return
        if rest:
            yield line_no, [rest]


def _salvage(path, skip: int, chunk: int = 1 << 20) -> bytes:
    """The decompressed bytes after the first ``skip`` of a damaged gzip file, up to the damage (read
    with zlib directly: :mod:`gzip` drops the last block it had decompressed when the stream fails)."""
    out = bytearray()
    pos = 0
    inflate = zlib.decompressobj(31)
    with open(path, "rb") as fh:
        try:
            while True:
                raw = fh.read(chunk)
                if not raw:
                    break
                while raw:
                    data = inflate.decompress(raw)
                    if pos + len(data) > skip:
                        out += data[max(0, skip - pos) :]
                    pos += len(data)
                    raw = b""
                    if inflate.eof:  # the next gzip member, if any
                        raw = inflate.unused_data
                        inflate = zlib.decompressobj(31)
        except zlib.error:
            pass
    return bytes(out)


def _damaged_gzip(path, line_no: int, partial: bool, error: Exception, problems) -> None:
    where = f"line {line_no} is cut off" if partial else f"the data stops after line {line_no - 1}"
    reason = (f"the gzip file ends early or is corrupt ({error}): {where} and nothing after it can be read; "
              "download or copy the file again")  # fmt: skip
    if problems is None:
        raise DataError(path, line_no, None, reason)
    problems.bad(path, line_no, None, reason, kind="gzip file truncated or corrupt", lines=0)


def parse_json_line(raw: bytes, encoding: str):
    """Parse one JSON line. Returns ``(obj, None)`` or ``(None, (field, reason))`` for bad input.

    UTF-8 bytes go straight to orjson (no decode step); on failure the bytes are decoded to tell
    bad encoding from bad JSON. Other encodings are decoded first.
    """
    try:
        if is_utf8(encoding):
            return orjson.loads(raw), None
        text = raw.decode(encoding)
    except orjson.JSONDecodeError as e:
        try:
            raw.decode(encoding)
        except UnicodeDecodeError as ue:
            return None, (None, f"bad encoding: bytes at offset {ue.start} are not valid {encoding}")
        return None, (None, f"not valid JSON: {e}")
    except UnicodeDecodeError as ue:
        return None, (None, f"bad encoding: bytes at offset {ue.start} are not valid {encoding}")
    try:
        return orjson.loads(text), None
    except orjson.JSONDecodeError as e:
        return None, (None, f"not valid JSON: {e}")


def bad_json_reason(raw: bytes, encoding: str) -> str:
    """Why ``raw`` failed to parse as a JSON line: bad encoding (with the byte offset) or bad JSON."""
    obj, problem = parse_json_line(raw, encoding)
    if problem is not None:
        return problem[1]
    return f"not a JSON object (got {type(obj).__name__})"


def is_utf8(encoding: str) -> bool:
    return encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig")
