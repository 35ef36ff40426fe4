"""PURE: where an export puts each row: caption file names, WebDataset keys, the caption text.

Ids and ``path`` values come from a results file, which anyone can edit: they are hostile
input. Every name made here is one safe component (no separator, no ``..``, no NUL or
control character, no leading dot, at most ``MAX_NAME_BYTES``), and one that had to be
changed carries a hash of the original, so two ids never share a file.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import PurePosixPath
from typing import Any

MAX_NAME_BYTES = 200  # under every common filesystem's 255, with room for a suffix
_HASH_CHARS = 12
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f\ud800-\udfff]")
# WebDataset splits a member name at its first dot (key.ext), so a key holds no dot at all.
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]


def _clip(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, never inside a character."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


def safe_name(text: str) -> str:
    """``text`` as one file name that stays where it is put; unchanged when already safe."""
    cleaned = _UNSAFE.sub("_", text).lstrip(".")
    if cleaned == text and cleaned and len(cleaned.encode("utf-8")) <= MAX_NAME_BYTES:
        return cleaned
    return f"{_clip(cleaned, MAX_NAME_BYTES - _HASH_CHARS - 1)}-{_digest(text)}"


def safe_relative(path: str) -> PurePosixPath | None:
    """A relative path made of safe names (empty and ``.`` parts dropped), or None when nothing is left."""
    parts = [safe_name(part) for part in re.split(r"[/\\]", path) if part not in ("", ".")]
    return PurePosixPath(*parts) if parts else None


def caption_name(relative: PurePosixPath) -> PurePosixPath:
    """``photo.jpg`` → ``photo.txt`` (the caption file kohya, OneTrainer and TagGUI look for)."""
    stem = relative.stem if relative.suffix else relative.name
    return relative.with_name(f"{stem or relative.name}.txt")


def id_caption_name(item_id: str) -> PurePosixPath:
    """The caption file of an image known only by its id (a remote one)."""
    return PurePosixPath(f"{safe_name(item_id)}.txt")


def webdataset_key(item_id: str) -> str:
    """The id as a WebDataset sample key: letters, digits, ``_`` and ``-`` only (hash-suffixed if changed)."""
    cleaned = _KEY_UNSAFE.sub("_", item_id)
    if cleaned == item_id and cleaned and len(cleaned) <= MAX_NAME_BYTES:
        return cleaned
    return f"{cleaned[: MAX_NAME_BYTES - _HASH_CHARS - 1]}-{_digest(item_id)}"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


_SHARD_NAME = re.compile(r"shard-[0-9]{6,}\.tar")


def is_shard_name(name: str) -> bool:
    """``name`` is one ``shard_name`` makes (so ``--force`` may remove it as an earlier export's)."""
    return _SHARD_NAME.fullmatch(name) is not None


def caption_text(value: Any) -> str | None:
    """A column's value as caption text: a list of tags comma-separated (the kohya convention),
    an object as JSON, None (nothing to write) for a null or empty value."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        text = ", ".join(str(v) for v in value if v is not None)
    elif isinstance(value, dict):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = str(value)
    return text if text.strip() else None
