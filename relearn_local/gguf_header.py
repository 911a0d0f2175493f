"""Read a few metadata keys from a GGUF header without parsing the whole file.

``gguf.GGUFReader`` builds Python objects for every tensor and every
vocabulary entry when it opens a file, which took close to a minute for
Gemma 3's 262,144-token vocabulary on a loaded 2-core machine. Resolving a
model only needs the architecture and whether a few special tokens exist, so
this reader walks the key/value section and stops there.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any, Iterable

from gguf.constants import GGUF_MAGIC, GGUFValueType

from .errors import ModelError

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


class _Cursor:
    def __init__(self, buffer: Any):
        self.buffer = buffer
        self.offset = 0

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.offset + size > len(self.buffer):
            raise ModelError("GGUF header ends early; the file is truncated")
        (value,) = struct.unpack_from(fmt, self.buffer, self.offset)
        self.offset += size
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        end = self.offset + length
        if end > len(self.buffer):
            raise ModelError("GGUF header ends early; the file is truncated")
        text = bytes(self.buffer[self.offset:end]).decode("utf-8", errors="replace")
        self.offset = end
        return text

    def skip_string(self) -> None:
        length = self.unpack("<Q")
        self.offset += length


def _read_value(cursor: _Cursor, value_type: int, keep: bool, probe: set[str]) -> Any:
    if value_type == GGUFValueType.STRING:
        return cursor.string() if keep else cursor.skip_string()
    if value_type == GGUFValueType.ARRAY:
        item_type = cursor.unpack("<I")
        count = cursor.unpack("<Q")
        if item_type == GGUFValueType.STRING and probe:
            found = set()
            for _ in range(count):
                text = cursor.string()
                if text in probe:
                    found.add(text)
            return found
        if item_type in _SCALAR_FORMATS:
            cursor.offset += struct.calcsize(_SCALAR_FORMATS[GGUFValueType(item_type)]) * count
            return None
        for _ in range(count):
            _read_value(cursor, item_type, False, set())
        return None
    try:
        return cursor.unpack(_SCALAR_FORMATS[GGUFValueType(value_type)])
    except (KeyError, ValueError):
        raise ModelError(f"GGUF header has an unknown value type {value_type}") from None


def read_gguf_metadata(path: Path, keys: Iterable[str], token_probe: Iterable[str] = ()) -> dict[str, Any]:
    """Return the values of ``keys`` found in the header of ``path``.

    With ``token_probe``, the result also maps ``"tokenizer.ggml.tokens"`` to
    the subset of those token strings that the vocabulary contains.
    """
    wanted = set(keys)
    probe = set(token_probe)
    result: dict[str, Any] = {}
    with Path(path).open("rb") as stream:
        try:
            buffer = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:
            raise ModelError(f"{path}: is empty, not a GGUF file") from None
        with buffer:
            cursor = _Cursor(buffer)
            if cursor.unpack("<I") != GGUF_MAGIC:
                raise ModelError(f"{path}: is not a GGUF file (bad magic number)")
            cursor.unpack("<I")  # format version
            cursor.unpack("<Q")  # tensor count
            key_count = cursor.unpack("<Q")
            for _ in range(key_count):
                key = cursor.string()
                value_type = cursor.unpack("<I")
                is_tokens = key == "tokenizer.ggml.tokens" and bool(probe)
                value = _read_value(cursor, value_type, key in wanted, probe if is_tokens else set())
                if key in wanted or is_tokens:
                    result[key] = value
    return result
