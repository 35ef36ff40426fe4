"""export_names (PURE): safe caption file names, WebDataset keys and caption text from untrusted ids and paths."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from pipeline.export_names import (
    MAX_NAME_BYTES,
    caption_name,
    caption_text,
    id_caption_name,
    is_shard_name,
    safe_name,
    safe_relative,
    shard_name,
    webdataset_key,
)


@pytest.mark.parametrize(
    "hostile", ["..", ".", "../x", "/abs", "a/b", "a\\b", "a\x00b", ".hidden", "", "é" * 300, "\ud800x", "x\n"]
)
def test_a_hostile_id_becomes_one_safe_file_name(hostile):
    """No separator, NUL, control character, leading dot or surrogate; at most MAX_NAME_BYTES; hash-suffixed."""
    name = safe_name(hostile)
    assert name and not name.startswith(".") and name not in (".", "..")
    assert not set(name) & {"/", "\\", "\x00", "\n"} and len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert PurePosixPath(name).name == name and name != hostile


def test_safe_names_stay_as_they_are_and_changed_ones_never_collide():
    """A plain id keeps its name; a/b and a_b (the same once cleaned) get different names."""
    assert safe_name("img-0001.jpg") == "img-0001.jpg" and safe_name("фото") == "фото"
    assert safe_name("a/b") != safe_name("a_b") and safe_name("a/b") != safe_name("a\\b")


def test_relative_paths_keep_their_folders_and_lose_escapes():
    """Sub-folders are kept; '..', absolute roots and empty parts cannot climb out."""
    assert safe_relative("sub/dir/photo.jpg") == PurePosixPath("sub/dir/photo.jpg")
    escaped = safe_relative("../../etc/./passwd")
    assert escaped is not None and ".." not in escaped.parts and escaped.parts[-2:] == ("etc", "passwd")
    assert safe_relative("/") is None


def test_caption_names_follow_the_image():
    """photo.jpg → photo.txt beside it; an id names a remote image's file."""
    assert caption_name(PurePosixPath("sub/photo.jpg")) == PurePosixPath("sub/photo.txt")
    assert caption_name(PurePosixPath("README")) == PurePosixPath("README.txt")
    assert id_caption_name("img-3") == PurePosixPath("img-3.txt")


def test_webdataset_keys_hold_no_dot_or_separator():
    """WebDataset splits a member at its first dot: keys are [A-Za-z0-9_-] and distinct."""
    assert webdataset_key("img-0001") == "img-0001"
    keys = {webdataset_key(i) for i in ("a.b", "a_b", "a/b", "../a")}
    assert len(keys) == 4 and all(set(k) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-") for k in keys)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("A cat.", "A cat."),
        (["cat", "sofa"], "cat, sofa"),
        ({"a": 1}, '{"a": 1}'),
        (3, "3"),
        (None, None),
        ("  ", None),
        ([], None),
    ],
)
def test_caption_text_from_a_column_value(value, text):
    """Tags comma-separated (kohya style), objects as JSON, nothing for null or blank."""
    assert caption_text(value) == text


def test_is_shard_name_matches_only_the_names_shard_name_makes():
    """--force removes an earlier export's shards by name: only shard_name's own shape qualifies."""
    assert all(is_shard_name(shard_name(i)) for i in (0, 7, 999_999, 1_234_567))
    for other in (
        "shard-1.tar",
        "shard-000001.tar.gz",
        ".shard-000001.tar.tmp-12",
        "shard-00000a.tar",
        "Shard-000001.tar",
    ):
        assert not is_shard_name(other), other
