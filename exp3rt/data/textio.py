"""Fast line-oriented reading shared by the loaders: gzip or plain, binary, in blocks of lines.

Reading in binary and splitting big blocks ourselves is several times faster than iterating a text
file object line by line, and it keeps each line's bytes so a loader can tell bad encoding (the
bytes do not decode) apart from bad syntax (they decode but do not parse), with the line number.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import orjson

GZIP_MAGIC = b"\x1f\x8b"
BLOCK_BYTES = 8 << 20  # 8 MiB of (decompressed) text per read
UTF8_BOM = b"\xef\xbb\xbf"


def open_binary(path: str | Path):
    """Open ``path`` for binary reading, transparently decompressing gzip (detected by its magic
    bytes, so a misnamed file still works)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == GZIP_MAGIC else open(path, "rb")


def iter_line_blocks(path: str | Path, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, list[bytes]]]:
    """Yield ``(first_line_number, lines)`` with 1-based physical line numbers.

    Lines are split on ``\\n`` only (a ``\\r`` before it is left in place: JSON parsers treat it as
    whitespace). A final line without a newline is yielded too; the empty string after a trailing
    newline is not. A UTF-8 byte-order mark at the start of the file is dropped.
    """
    line_no = 1
    rest = b""
    first = True
    with open_binary(path) as fh:
        while True:
            block = fh.read(block_bytes)
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
        if rest:
            yield line_no, [rest]


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
