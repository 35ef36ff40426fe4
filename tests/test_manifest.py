"""Manifest reading: every format, stable ids, chunking, and refusal of unusable manifests."""

from __future__ import annotations

import json
import os

import polars as pl
import pytest

from pipeline.errors import ManifestError
from pipeline.manifest import derive_id, inspect_manifest, iter_chunks


def _all(path, **kw):
    return [item for chunk in iter_chunks(path, **kw) for item in chunk]


def test_each_format_yields_the_same_items(tmp_path):
    """CSV, TSV, JSONL and Parquet with the same rows give the same ids, urls and fields."""
    rows = [{"id": f"r{i}", "url": f"https://x/{i}.jpg", "tag": f"t{i}"} for i in range(7)]
    frame = pl.DataFrame(rows)
    frame.write_csv(tmp_path / "m.csv")
    frame.write_csv(tmp_path / "m.tsv", separator="\t")
    frame.write_parquet(tmp_path / "m.parquet")
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for name in ("m.csv", "m.tsv", "m.jsonl", "m.parquet"):
        path = tmp_path / name
        assert inspect_manifest(path).rows == 7
        items = _all(path, chunk_size=3)
        assert [i.id for i in items] == [r["id"] for r in rows], name
        assert items[2].url == "https://x/2.jpg" and items[2].fields == {"tag": "t2"}


def test_chunks_are_bounded(tmp_path):
    """Chunks hold at most chunk_size items."""
    pl.DataFrame({"url": [f"https://x/{i}" for i in range(10)]}).write_csv(tmp_path / "m.csv")
    sizes = [len(c) for c in iter_chunks(tmp_path / "m.csv", chunk_size=4)]
    assert sizes == [4, 4, 2]


def test_text_list_derives_stable_ids_and_skips_comments(tmp_path):
    """A plain list: one image per line; ids are a stable hash; blank and # lines ignored."""
    path = tmp_path / "list.txt"
    path.write_text("# my images\nhttps://x/a.jpg\n\nhttps://x/b.jpg\nhttps://x/a.jpg\n")
    items = _all(path)
    assert [i.url for i in items] == ["https://x/a.jpg", "https://x/b.jpg"]
    assert items[0].id == derive_id("https://x/a.jpg") == "".join(derive_id("https://x/a.jpg"))
    assert len(items[0].id) == 16


def test_ids_given_as_numbers_stay_text(tmp_path):
    """An id column of numbers is read as text ('007' keeps its zeros)."""
    (tmp_path / "m.csv").write_text("id,url\n007,https://x/1\n8,https://x/2\n")
    assert [i.id for i in _all(tmp_path / "m.csv")] == ["007", "8"]


def test_empty_id_cells_fall_back_to_the_url_hash(tmp_path):
    """A row with an empty id gets the derived id."""
    (tmp_path / "m.csv").write_text("id,url\n,https://x/1\nb,https://x/2\n")
    assert [i.id for i in _all(tmp_path / "m.csv")] == [derive_id("https://x/1"), "b"]


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("no_url.csv", "id,image\n1,https://x/1\n", "no 'url' column"),
        ("dupes.csv", "id,url\na,https://x/1\nb,https://x/2\na,https://x/3\n", "id 'a' appears 2 times"),
        ("dupes.jsonl", '{"id": "a", "url": "u1"}\n{"id": "a", "url": "u2"}\n', "id 'a' appears 2 times"),
        ("ragged.csv", "id,url\na,https://x/1\nb,https://x/2,extra\n", "line 3 has 3 fields, the header has 2"),
        ("empty.csv", "", "the file is empty"),
        ("header_only.csv", "id,url\n", "the manifest has no rows"),
        ("empty.txt", "\n# nothing\n", "the manifest has no rows"),
        ("bad.jsonl", '{"url": "u1"}\nnot json\n', "line 2 is not valid JSON"),
        ("nourl.jsonl", '{"id": "a"}\n', "no 'url' field"),
    ],
)
def test_unusable_manifests_are_refused(tmp_path, name, content, problem):
    """Each kind of bad manifest raises ManifestError naming the file and the problem."""
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ManifestError) as info:
        inspect_manifest(path)
    assert str(path) in str(info.value) and problem in str(info.value)


def test_missing_and_unreadable_and_binary_files_are_refused(tmp_path):
    """A missing file, a file without read permission and a binary 'text list' are refused."""
    with pytest.raises(ManifestError, match="file not found"):
        inspect_manifest(tmp_path / "nope.csv")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 100)
    with pytest.raises(ManifestError, match="not a text file"):
        inspect_manifest(binary)
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.csv"
        locked.write_text("url\nx\n")
        locked.chmod(0)
        with pytest.raises(ManifestError, match="permission denied"):
            inspect_manifest(locked)


def test_custom_url_and_id_columns(tmp_path):
    """url_column / id_column name the columns to use."""
    (tmp_path / "m.csv").write_text("key,image\nk1,https://x/1\n")
    info = inspect_manifest(tmp_path / "m.csv", url_column="image", id_column="key")
    assert info.rows == 1
    assert _all(tmp_path / "m.csv", url_column="image", id_column="key")[0].id == "k1"


def test_folder_manifest_lists_images(tmp_path):
    """A folder means every image file in it, sorted."""
    (tmp_path / "b.png").write_bytes(b"x")
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert inspect_manifest(tmp_path).rows == 2
    assert [os.path.basename(i.url) for i in _all(tmp_path)] == ["a.jpg", "b.png"]


def test_large_manifests_are_streamed_not_loaded(tmp_path):
    """Taking the first chunk of a 60 MB CSV, and checking all its ids, stay far below the file's size in memory."""
    import psutil

    path = tmp_path / "big.csv"
    with open(path, "w") as fh:
        fh.write("id,url,note\n")
        for i in range(1_000_000):
            fh.write(f"id{i:08d},https://images.example.com/big/{i:08d}.jpg,some words here\n")
    size_mb = path.stat().st_size / 2**20
    process = psutil.Process()
    before = process.memory_info().rss
    chunks = iter_chunks(path, chunk_size=256)
    first = next(chunks)
    grown_mb = (process.memory_info().rss - before) / 2**20
    assert len(first) == 256 and grown_mb < size_mb / 4, (grown_mb, size_mb)
    assert inspect_manifest(path).rows == 1_000_000
    assert (process.memory_info().rss - before) / 2**20 < size_mb / 2


def test_duplicate_ids_are_found_among_a_million_rows(tmp_path):
    """The hash-based check finds one repeated id among a million and names it."""
    path = tmp_path / "big.csv"
    with open(path, "w") as fh:
        fh.write("id,url\n")
        for i in range(1_000_000):
            fh.write(f"id{i},https://x/{i}\n")
        fh.write("id424242,https://x/again\n")
    with pytest.raises(ManifestError, match="id 'id424242' appears 2 times"):
        inspect_manifest(path)
