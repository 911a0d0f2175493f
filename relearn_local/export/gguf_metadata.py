"""Read a GGUF's serving metadata back, and edit metadata without re-encoding the file.

Both work on a layout scanned with ``struct`` from a memory map: the key/value
pairs with their byte spans, the tensor infos and the data offset.
``gguf.GGUFReader`` builds one numpy view per array element, which took
about 40 s for the 262,144 tokens of Gemma 3 on a 2-core machine, and
``gguf.GGUFWriter`` re-encodes every value (45 s there). The editor copies
unchanged keys, the tensor infos and the tensor data byte for byte and
encodes only the keys it changes, so an edit costs about one file copy.
Tensor data offsets are relative to the start of the data section, so they
stay valid when the metadata before it changes length.
"""

from __future__ import annotations

import mmap
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import ExportError

# Token types as llama.cpp and SentencePiece number them.
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6
DEFAULT_ALIGNMENT = 32
# struct formats of GGUF's scalar value types, by GGUFValueType name.
_SCALAR_FORMATS = {
    "UINT8": "<B", "INT8": "<b", "UINT16": "<H", "INT16": "<h", "UINT32": "<I", "INT32": "<i",
    "FLOAT32": "<f", "BOOL": "<?", "UINT64": "<Q", "INT64": "<q", "FLOAT64": "<d",
}


@dataclass
class KeyValue:
    """One metadata pair: its byte span, its type and (for scalars and strings) its value.

    Arrays keep their element type, length and the offset of their first
    element instead of a decoded value.
    """

    key: str
    start: int
    end: int
    value_type: int
    value: Any = None
    element_type: Optional[int] = None
    length: int = 0
    data_start: int = 0


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    tensor_type: int


@dataclass
class GgufLayout:
    """Byte layout of a GGUF file: key/value spans, tensor infos and the data offset."""

    path: Path
    version: int
    pairs: dict[str, KeyValue]
    tensors: list[TensorInfo]
    tensor_info_span: tuple[int, int]
    alignment: int
    data_offset: int


class _Scanner:
    def __init__(self, buffer: Any, path: Path):
        self.buffer = buffer
        self.position = 0
        self.path = path

    def read(self, fmt: str) -> Any:
        try:
            value = struct.unpack_from(fmt, self.buffer, self.position)[0]
        except struct.error:
            raise ExportError(f"{self.path}: is truncated or not a GGUF file") from None
        self.position += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.read("<Q")
        end = self.position + length
        if end > len(self.buffer):
            raise ExportError(f"{self.path}: is truncated or not a GGUF file")
        text = bytes(self.buffer[self.position:end]).decode("utf-8", errors="replace")
        self.position = end
        return text

    def skip_string(self) -> None:
        length = self.read("<Q")
        self.position += length


def scan_gguf(path: Path) -> GgufLayout:
    """Scan the header, metadata and tensor infos of a little-endian GGUF file."""
    from gguf import GGUFValueType

    path = Path(path)
    try:
        with path.open("rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            return _scan(_Scanner(buffer, path), GGUFValueType)
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: is not a readable GGUF file ({exc})") from exc


def _scan(scanner: _Scanner, value_types: Any) -> GgufLayout:
    if bytes(scanner.buffer[:4]) != b"GGUF":
        raise ExportError(f"{scanner.path}: is not a GGUF file (no GGUF magic)")
    scanner.position = 4
    version = scanner.read("<I")
    if version & 0xFFFF == 0:
        raise ExportError(f"{scanner.path}: is a big-endian GGUF, which is not supported")
    tensor_count, pair_count = scanner.read("<Q"), scanner.read("<Q")

    pairs: dict[str, KeyValue] = {}
    for _ in range(pair_count):
        start = scanner.position
        key = scanner.string()
        value_type = scanner.read("<I")
        pair = KeyValue(key, start, start, value_type)
        _scan_value(scanner, pair, value_types)
        pair.end = scanner.position
        pairs[key] = pair

    info_start = scanner.position
    tensors = []
    for _ in range(tensor_count):
        name = scanner.string()
        dimensions = scanner.read("<I")
        shape = tuple(scanner.read("<Q") for _ in range(dimensions))
        tensor_type = scanner.read("<I")
        scanner.read("<Q")
        tensors.append(TensorInfo(name, shape, tensor_type))
    info_end = scanner.position

    alignment_pair = pairs.get("general.alignment")
    alignment = int(alignment_pair.value) if alignment_pair is not None else DEFAULT_ALIGNMENT
    data_offset = info_end + (-info_end) % alignment
    return GgufLayout(scanner.path, version, pairs, tensors, (info_start, info_end), alignment, data_offset)


def _scan_value(scanner: _Scanner, pair: KeyValue, value_types: Any) -> None:
    kind = value_types(pair.value_type)
    if kind == value_types.STRING:
        pair.value = scanner.string()
    elif kind == value_types.ARRAY:
        pair.element_type = scanner.read("<I")
        pair.length = scanner.read("<Q")
        pair.data_start = scanner.position
        element = value_types(pair.element_type)
        if element == value_types.STRING:
            for _ in range(pair.length):
                scanner.skip_string()
        elif element.name in _SCALAR_FORMATS:
            scanner.position += pair.length * struct.calcsize(_SCALAR_FORMATS[element.name])
        else:
            raise ExportError(f"{scanner.path}: key {pair.key} contains nested arrays, which are not supported")
    else:
        pair.value = scanner.read(_SCALAR_FORMATS[kind.name])


def array_values(layout: GgufLayout, key: str) -> Any:
    """Return a numeric array's values as a numpy array (a copy)."""
    import numpy as np
    from gguf import GGUFValueType

    pair = layout.pairs[key]
    fmt = _SCALAR_FORMATS[GGUFValueType(pair.element_type).name]
    with layout.path.open("rb") as stream:
        stream.seek(pair.data_start)
        data = stream.read(pair.length * struct.calcsize(fmt))
    return np.frombuffer(data, dtype=fmt.replace("?", "b1")).copy()


def string_array_items(layout: GgufLayout, key: str, indexes: set[int]) -> dict[int, str]:
    """Return the strings at ``indexes`` of a string array."""
    pair = layout.pairs[key]
    wanted = {index for index in indexes if 0 <= index < pair.length}
    found: dict[int, str] = {}
    if not wanted:
        return found
    with layout.path.open("rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
        scanner = _Scanner(buffer, layout.path)
        scanner.position = pair.data_start
        for index in range(max(wanted) + 1):
            if index in wanted:
                found[index] = scanner.string()
            else:
                scanner.skip_string()
    return found


@dataclass
class GgufReport:
    """Metadata a server reads from a GGUF for tokenization, stopping and the chat format."""

    path: Path
    architecture: Optional[str]
    name: Optional[str]
    file_type: Optional[int]
    tensor_count: int
    size_bytes: int
    tokenizer_model: Optional[str]
    token_count: int
    embedding_rows: Optional[int]
    has_output_tensor: bool
    bos_id: Optional[int]
    eos_id: Optional[int]
    eot_id: Optional[int]
    add_bos: Optional[bool]
    chat_template: Optional[str]
    has_scores: bool
    token_types: dict[int, int] = field(default_factory=dict)
    token_texts: dict[int, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture, "name": self.name, "file_type": self.file_type,
            "tensor_count": self.tensor_count, "size_bytes": self.size_bytes,
            "tokenizer_model": self.tokenizer_model, "token_count": self.token_count,
            "embedding_rows": self.embedding_rows, "tied_output": not self.has_output_tensor,
            "bos_id": self.bos_id, "eos_id": self.eos_id, "eot_id": self.eot_id, "add_bos": self.add_bos,
            "chat_template_chars": len(self.chat_template) if self.chat_template else 0,
            "has_scores": self.has_scores,
            "token_types": {str(key): value for key, value in sorted(self.token_types.items())},
        }


def read_gguf_report(path: Path, token_ids: set[int] | frozenset[int] = frozenset()) -> GgufReport:
    """Read the serving metadata of ``path``, with the types and texts of ``token_ids``."""
    from gguf import Keys

    layout = scan_gguf(path)

    def scalar(key: str) -> Any:
        pair = layout.pairs.get(key)
        return None if pair is None or pair.element_type is not None else pair.value

    tokens = layout.pairs.get(Keys.Tokenizer.LIST)
    token_count = tokens.length if tokens is not None else 0
    types: dict[int, int] = {}
    if Keys.Tokenizer.TOKEN_TYPE in layout.pairs:
        all_types = array_values(layout, Keys.Tokenizer.TOKEN_TYPE)
        types = {token_id: int(all_types[token_id]) for token_id in token_ids if 0 <= token_id < len(all_types)}
    texts = string_array_items(layout, Keys.Tokenizer.LIST, set(token_ids)) if tokens is not None else {}
    embedding = next((tensor for tensor in layout.tensors if tensor.name == "token_embd.weight"), None)
    add_bos = scalar(Keys.Tokenizer.ADD_BOS)
    return GgufReport(
        path=Path(path), architecture=scalar(Keys.General.ARCHITECTURE), name=scalar(Keys.General.NAME),
        file_type=scalar(Keys.General.FILE_TYPE), tensor_count=len(layout.tensors),
        size_bytes=os.path.getsize(path), tokenizer_model=scalar(Keys.Tokenizer.MODEL), token_count=token_count,
        embedding_rows=int(embedding.shape[1]) if embedding is not None and len(embedding.shape) > 1 else None,
        has_output_tensor=any(tensor.name == "output.weight" for tensor in layout.tensors),
        bos_id=scalar(Keys.Tokenizer.BOS_ID), eos_id=scalar(Keys.Tokenizer.EOS_ID),
        eot_id=scalar(Keys.Tokenizer.EOT_ID), add_bos=None if add_bos is None else bool(add_bos),
        chat_template=scalar(Keys.Tokenizer.CHAT_TEMPLATE),
        has_scores=Keys.Tokenizer.SCORES in layout.pairs, token_types=types, token_texts=texts,
    )


# Editing ---------------------------------------------------------------------------------------------------


def _encode_string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def encode_kv(key: str, value_type: Any, value: Any) -> bytes:
    """Encode one key/value pair in GGUF's little-endian layout (scalars and strings)."""
    from gguf import GGUFValueType

    value_type = GGUFValueType(value_type)
    head = _encode_string(key) + struct.pack("<I", int(value_type))
    if value_type == GGUFValueType.STRING:
        return head + _encode_string(str(value))
    fmt = _SCALAR_FORMATS.get(value_type.name)
    if fmt is None:
        raise ExportError(f"editing GGUF values of type {value_type.name} is not supported")
    return head + struct.pack(fmt, value)


def _with_token_types(raw: bytes, pair: KeyValue, updates: dict[int, int]) -> bytes:
    """Return the raw bytes of the INT32 token-type array with ``updates`` applied (same length)."""
    import numpy as np

    header = pair.data_start - pair.start
    values = np.frombuffer(raw, dtype="<i4", offset=header, count=pair.length).copy()
    for token_id, token_type in updates.items():
        if not 0 <= token_id < len(values):
            raise ExportError(f"token id {token_id} is outside the GGUF vocabulary of {len(values)} tokens")
        values[token_id] = token_type
    return raw[:header] + values.tobytes()


def edit_gguf_metadata(source: Path, target: Path, values: dict[str, tuple[Any, Any]],
                       token_types: Optional[dict[int, int]] = None) -> None:
    """Write ``target``: ``source`` with keys set to ``values`` ({key: (GGUFValueType, value)}) and token types changed.

    Unchanged keys, tensor infos and tensor data are copied byte for byte.
    ``target`` is written through a temporary file and may equal ``source``.
    """
    from gguf import GGUFValueType, Keys

    layout = scan_gguf(source)
    if token_types:
        pair = layout.pairs.get(Keys.Tokenizer.TOKEN_TYPE)
        if pair is None or GGUFValueType(pair.element_type) != GGUFValueType.INT32:
            raise ExportError(f"{source}: has no INT32 token types to change")
    blocks: list[bytes] = []
    with open(source, "rb") as stream:
        for key, pair in layout.pairs.items():
            if key in values:
                blocks.append(encode_kv(key, *values[key]))
                continue
            stream.seek(pair.start)
            raw = stream.read(pair.end - pair.start)
            if key == Keys.Tokenizer.TOKEN_TYPE and token_types:
                raw = _with_token_types(raw, pair, token_types)
            blocks.append(raw)
        for key, (value_type, value) in values.items():
            if key not in layout.pairs:
                blocks.append(encode_kv(key, value_type, value))
        info_start, info_end = layout.tensor_info_span
        stream.seek(info_start)
        tensor_infos = stream.read(info_end - info_start)
    head = b"GGUF" + struct.pack("<IQQ", layout.version, len(layout.tensors), len(blocks))
    metadata = head + b"".join(blocks) + tensor_infos
    padding = (-len(metadata)) % layout.alignment
    _write_with_data(source, Path(target), metadata + b"\0" * padding, layout.data_offset)


def _write_with_data(source: Path, target: Path, metadata: bytes, data_offset: int) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as output, open(source, "rb") as original:
            output.write(metadata)
            original.seek(data_offset)
            shutil.copyfileobj(original, output, length=16 << 20)
        # mkstemp creates the file readable by its owner only; keep the source's permissions instead.
        os.chmod(temporary, os.stat(source).st_mode & 0o777)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
