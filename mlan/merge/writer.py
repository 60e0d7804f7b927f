"""Writing a safetensors file tensor by tensor.

The file is written by hand (8-byte header length, JSON header, then each tensor's bytes) because
`safetensors.torch.save_file` needs every tensor of a file in memory at once; all shapes and dtypes
are known before the first byte is written, so the header can go first and the data can stream
after it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any


class SafetensorsWriter:
    """Writes one safetensors file whose tensors are declared up front and then streamed in order."""

    def __init__(self, path: Path, entries: list[tuple[str, str, tuple[int, ...], int]]):
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for key, dtype, shape, nbytes in entries:
            header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        self.path = path
        self.expected = [(key, nbytes) for key, _, _, nbytes in entries]
        self.total = offset
        self._i = 0
        self._f = open(path, "wb")  # noqa: SIM115 (closed in close(), after every tensor is streamed)
        self._f.write(struct.pack("<Q", len(raw)))
        self._f.write(raw)

    def write(self, key: str, chunks) -> None:
        """Append the next declared tensor from an iterable of byte chunks."""
        want_key, want = self.expected[self._i]
        if key != want_key:
            raise RuntimeError(f"{self.path}: expected tensor {want_key}, got {key}")
        n = 0
        for chunk in chunks:
            self._f.write(chunk)
            n += len(chunk)
        if n != want:
            raise RuntimeError(f"{self.path}: tensor {key}: wrote {n} bytes, declared {want}")
        self._i += 1

    def close(self) -> None:
        """Finish the file; every declared tensor must have been written."""
        self._f.close()
        if self._i != len(self.expected):
            raise RuntimeError(f"{self.path}: {len(self.expected) - self._i} declared tensors not written")


def _tensor_bytes(t) -> list[memoryview]:
    import torch

    t = t.contiguous().view(-1)
    return [memoryview(t.view(torch.uint8).numpy())] if t.numel() else []
