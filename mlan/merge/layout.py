"""Where the tensors are: model folders, weight files, and the key layouts of LLaVA checkpoints.

A LLaVA checkpoint names its language-model tensors in one of two on-disk layouts:

- old (transformers' default `save_pretrained`, and hub checkpoints): `language_model.model.*`,
  `language_model.lm_head.weight`, with `vision_tower.*` and `multi_modal_projector.*` beside them;
- new (`save_original_format=False`, the in-memory names): `model.language_model.*`, `lm_head.weight`,
  `model.vision_tower.*`, `model.multi_modal_projector.*`.

Both map to the causal-LM names of the original LLM (`model.*`, `lm_head.weight`). Everything that
is not a language-model tensor is copied unchanged.

Weights are read by file offset from a parsed safetensors header rather than through
`safetensors.safe_open`: safe_open memory-maps the whole file, and every page it touches stays
resident (and counted against the process) until the kernel reclaims it, so a streaming merge
through it shows both models in its peak memory. Reading each tensor into its own buffer keeps
resident memory at the tensors in flight. `.bin` checkpoints (a fallback) are opened with
`torch.load(mmap=True)`, which pages tensors in lazily.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlan import kinds
from mlan.errors import MlanError
from mlan.hub import hub_unreachable_reason, require_hub

log = logging.getLogger(__name__)

# Prefix maps from a LLaVA key to the original LLM's (causal LM) key, per layout; "old" is the
# legacy llava-hf names, renamed to the current ones by mlan.kinds' table first.
LAYOUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "old": tuple(
        (old, new.replace(cur, causal, 1))
        for old, new in kinds.LEGACY_PREFIXES
        for cur, causal in kinds.CURRENT_TO_CAUSAL_LM
        if new.startswith(cur)
    ),
    "new": kinds.CURRENT_TO_CAUSAL_LM,
    "qwen": (("model.", "model."), ("lm_head.", "lm_head.")),
}
# The text config's model_type of a multimodal family, as its original LLM's config names it.
TEXT_MODEL_TYPES = {"qwen2_5_vl_text": "qwen2", "qwen2_5_vl": "qwen2"}
# Tensors with one row per vocabulary entry: a multimodal model may have more rows (added `<image>`).
VOCAB_SUFFIXES = ("embed_tokens.weight", "lm_head.weight", "lm_head.bias")
ARCH_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
ARCH_FIELDS += ("intermediate_size", "head_dim")

SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
}
DTYPE_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
COPY_CHUNK = 16 << 20


@dataclass(frozen=True)
class TensorInfo:
    """One stored tensor: its key, safetensors dtype code, shape, size and the file that holds it."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    file: WeightFile

    @property
    def is_float(self) -> bool:
        return self.dtype in ("F64", "F32", "F16", "BF16")


class WeightFile:
    """One weight file whose tensors can be listed without reading them and read one at a time."""

    path: Path

    def tensors(self) -> dict[str, TensorInfo]:
        raise NotImplementedError

    def read(self, key: str):
        """The tensor as a torch tensor in its stored dtype (a fresh buffer or a lazily paged map)."""
        raise NotImplementedError

    def read_rows(self, key: str, start: int, stop: int):
        """Rows `start:stop` of the tensor (along its first dimension), without reading the rest."""
        raise NotImplementedError

    def raw_chunks(self, key: str) -> Iterator[bytes | memoryview]:
        """The tensor's bytes as stored, in chunks (for copying bit for bit)."""
        raise NotImplementedError


class SafetensorsFile(WeightFile):
    """A safetensors file read by offsets from its JSON header."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except (OSError, struct.error, ValueError, UnicodeDecodeError) as e:
            raise MlanError(f"{path}: not a readable safetensors file ({e})") from None
        self.data_start = 8 + n
        self.header = header
        self._infos: dict[str, TensorInfo] = {}
        self._offsets: dict[str, tuple[int, int]] = {}
        for key, meta in header.items():
            if key == "__metadata__":
                continue
            start, end = meta["data_offsets"]
            self._offsets[key] = (start, end)
            self._infos[key] = TensorInfo(key, meta["dtype"], tuple(meta["shape"]), end - start, self)

    def tensors(self) -> dict[str, TensorInfo]:
        return self._infos

    def read(self, key: str):
        info = self._infos[key]
        if not info.shape:
            return self._read_bytes(key, *self._offsets[key]).reshape(())
        return self.read_rows(key, 0, info.shape[0])

    def read_rows(self, key: str, start: int, stop: int):
        info = self._infos[key]
        row_bytes = info.nbytes // info.shape[0] if info.shape and info.shape[0] else 0
        first = self._offsets[key][0]
        t = self._read_bytes(key, first + start * row_bytes, first + stop * row_bytes)
        return t.reshape(stop - start, *info.shape[1:])

    def _read_bytes(self, key: str, start: int, end: int):
        import torch

        buf = torch.empty(end - start, dtype=torch.uint8)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + start)
            got = f.readinto(memoryview(buf.numpy())) if end > start else 0
        if got != end - start:
            raise MlanError(f"{self.path}: truncated file (tensor {key})")
        return buf.view(getattr(torch, SAFETENSORS_DTYPES[self._infos[key].dtype]))

    def raw_chunks(self, key: str) -> Iterator[bytes]:
        start, end = self._offsets[key]
        with open(self.path, "rb") as f:
            f.seek(self.data_start + start)
            left = end - start
            while left > 0:
                chunk = f.read(min(COPY_CHUNK, left))
                if not chunk:
                    raise MlanError(f"{self.path}: truncated file (tensor {key})")
                left -= len(chunk)
                yield chunk


class TorchBinFile(WeightFile):
    """A `pytorch_model*.bin` state dict, memory-mapped when saved in the zip format."""

    def __init__(self, path: Path):
        import torch

        self.path = path
        try:
            self.state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:
            # Legacy (non-zip) pickles cannot be memory-mapped: read the whole file.
            self.state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise MlanError(f"{path}: not a readable PyTorch checkpoint ({e})") from None
        self._infos = {}
        for key, t in self.state.items():
            if not hasattr(t, "dtype"):
                continue
            code = DTYPE_CODES.get(str(t.dtype).removeprefix("torch."))
            if code is None:
                raise MlanError(f"{path}: tensor {key} has unsupported dtype {t.dtype}")
            self._infos[key] = TensorInfo(key, code, tuple(t.shape), t.numel() * t.element_size(), self)

    def tensors(self) -> dict[str, TensorInfo]:
        return self._infos

    def read(self, key: str):
        return self.state[key]

    def read_rows(self, key: str, start: int, stop: int):
        return self.state[key][start:stop]

    def raw_chunks(self, key: str) -> Iterator[memoryview]:
        import torch

        t = self.state[key].contiguous().view(-1)
        yield memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


@dataclass
class Checkpoint:
    """A model folder's config and weights: every tensor by key, and the files in order."""

    path: Path
    config: dict[str, Any]
    files: list[WeightFile]
    tensors: dict[str, TensorInfo]
    weight_names: set[str]

    @property
    def text_config(self) -> dict[str, Any]:
        return self.config.get("text_config") or {}


def resolve_model_dir(name: str | Path, what: str) -> Path:
    """A local model folder, or a hub id downloaded (config, tokenizer, processor, weights) when online."""
    p = kinds.local_folder(name, what)
    if p is not None:
        return p
    s = str(name)
    require_hub(s, what, "download it first or pass a local model folder", model=True)
    patterns = ["*.json", "*.jinja", "*.model", "*.txt"]
    try:
        from huggingface_hub import list_repo_files, snapshot_download

        if hub_unreachable_reason():  # cached (require_hub passed): use the cache as it is
            return Path(snapshot_download(s, local_files_only=True))
        files = list_repo_files(s)
        weights = ["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["*.bin"]
        return Path(snapshot_download(s, allow_patterns=[*patterns, *weights]))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MlanError(f"{what} {name}: no model folder or reachable hub model of that name ({first})") from None


def weight_file_names(path: Path) -> list[str]:
    """The weight files of a folder, in order: safetensors preferred, `.bin` as a fallback."""
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = path / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise MlanError(f"{index}: invalid index ({e})") from None
            names = list(dict.fromkeys(weight_map.values()))
            for n in names:
                if not (path / n).is_file():
                    raise MlanError(f"{path / n}: weight file named in {index_name} is missing")
            return names
        if (path / single).is_file():
            return [single]
    raise MlanError(f"{path}: no model weights (expected model.safetensors or pytorch_model.bin, maybe sharded)")


def open_checkpoint(path: Path, what: str) -> Checkpoint:
    """Read a folder's config and the headers of its weight files (no tensor data)."""
    config = kinds.read_model_config(path, what=what)
    names = weight_file_names(path)
    files: list[WeightFile] = [
        SafetensorsFile(path / n) if n.endswith(".safetensors") else TorchBinFile(path / n) for n in names
    ]
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        for key, info in f.tensors().items():
            if key in tensors:
                raise MlanError(f"{f.path}: tensor {key} also stored in {tensors[key].file.path}")
            tensors[key] = info
    weight_names = set(names) | {"model.safetensors.index.json", "pytorch_model.bin.index.json"}
    return Checkpoint(path=path, config=config, files=files, tensors=tensors, weight_names=weight_names)


def detect_layout(keys: set[str] | dict) -> str | None:
    """ "old", "new" or "qwen" by the language-model keys present, None when there are none."""
    if any(k.startswith("model.language_model.") for k in keys):
        return "new"
    if any(k.startswith(("language_model.model.", "language_model.lm_head.")) for k in keys):
        return "old"
    if any(k.startswith("visual.") for k in keys) and any(k.startswith("model.layers.") for k in keys):
        return "qwen"
    return None


def lm_name(key: str, layout: str) -> str | None:
    """The original LLM's name for a LLaVA language-model key, None for vision/projector keys."""
    for prefix, target in LAYOUTS[layout]:
        if key.startswith(prefix):
            return target + key[len(prefix) :]
    return None


def causal_lm_names(keys: dict[str, TensorInfo]) -> dict[str, str]:
    """Map causal-LM names (`model.*`, `lm_head.*`) to a text model's stored keys.

    A bare decoder saved without its head (`embed_tokens.weight`, `layers.*`) gets the `model.` prefix.
    """
    if any(k.startswith(("model.", "lm_head.")) for k in keys):
        return {k: k for k in keys}
    return {f"model.{k}": k for k in keys}


def is_vocab_tensor(name: str) -> bool:
    """Whether a tensor has one row per vocabulary entry."""
    return name.endswith(VOCAB_SUFFIXES)


def check_architectures(mm: Checkpoint, llm: Checkpoint) -> None:
    """Refuse an original LLM whose architecture differs from the multimodal model's language model."""
    text = mm.text_config
    for field in ARCH_FIELDS:
        a, b = text.get(field), llm.config.get(field)
        if field == "model_type":
            a = TEXT_MODEL_TYPES.get(a, a)
        if a is not None and b is not None and a != b:
            raise MlanError(
                f"mismatched architectures: the multimodal model's text_config.{field} is {a!r} but the "
                f"original LLM's {field} is {b!r} ({mm.path} vs {llm.path})"
            )


def llm_ties_embeddings(llm: Checkpoint) -> bool:
    """Whether the original LLM's output layer is its input embedding (tied, so no `lm_head` is stored)."""
    value = llm.config.get("tie_word_embeddings")
    if value is None:
        value = (llm.config.get("text_config") or {}).get("tie_word_embeddings", False)
    return bool(value)


def _token_ids(path: Path) -> dict[int, str] | None:
    """id -> token of a folder's `tokenizer.json` (vocabulary and added tokens), None when unreadable."""
    f = path / "tokenizer.json"
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
        vocab = (data.get("model") or {}).get("vocab")
        if isinstance(vocab, dict):  # BPE, WordPiece, WordLevel
            ids = {int(i): tok for tok, i in vocab.items()}
        elif isinstance(vocab, list):  # Unigram: [piece, score] in id order
            ids = {i: entry[0] for i, entry in enumerate(vocab)}
        else:
            return None
        ids |= {int(t["id"]): t["content"] for t in data.get("added_tokens") or []}
        return ids
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def check_tokenizers(mm: Checkpoint, llm: Checkpoint, shared_rows: int) -> None:
    """Refuse merging embedding rows that belong to different tokens.

    Rows are merged by index, so the two tokenizers must agree on every shared id; added tokens
    (LLaVA's `<image>`, padding) may only come after them. Checked when both folders have a
    `tokenizer.json`; otherwise the shapes are all there is to go by.
    """
    a, b = _token_ids(mm.path), _token_ids(llm.path)
    if a is None or b is None:
        log.info("tokenizer.json missing in one of the models: shared vocabulary rows not checked token by token")
        return
    for i in range(shared_rows):
        if i in a and i in b and a[i] != b[i]:
            raise MlanError(
                f"tokenizers differ at id {i}: {a[i]!r} in the multimodal model, {b[i]!r} in the original LLM; "
                "embedding rows would be merged across different tokens (is this the LLM the model was built from?)"
            )
