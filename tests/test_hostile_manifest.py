"""Hostile manifests: an unclosed quote, ids that collide once derived, byte-order marks, upper-case
schemes, a misnamed url column, and a truncated JPEG in a folder. Each has its stated outcome."""

from __future__ import annotations

import io
import json
import logging

import polars as pl
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.errors import ManifestError
from pipeline.manifest import derive_id, inspect_manifest, iter_chunks
from tests.conftest import FAST_CONFIG, run_args, write_config

BOM = "\ufeff"


@pytest.fixture(autouse=True)
def _restore_cli_logging():
    """main() points the 'caption' logger at this test's captured stderr; later tests get theirs back."""
    logger = logging.getLogger("caption")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def _all(path, **kw):
    return [item for chunk in iter_chunks(path, **kw) for item in chunk]


def _run(manifest, tmp_path, base_url, *extra: str) -> int:
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    return main(run_args(manifest, tmp_path / "out", config, base_url, *extra))


@pytest.mark.parametrize(("name", "sep"), [("m.csv", ","), ("m.tsv", "\t")])
def test_an_unclosed_quote_is_refused_naming_its_line(tmp_path, name, sep):
    """A stray quote no longer swallows the rows after it: ManifestError naming the line it opened on."""
    path = tmp_path / name
    path.write_text(f'id{sep}url\na{sep}https://x/1\nb{sep}"https://x/2\nc{sep}https://x/3\nd{sep}https://x/4\n')
    with pytest.raises(ManifestError) as info:
        inspect_manifest(path)
    assert str(path) in str(info.value) and "line 3" in str(info.value) and "never closed" in str(info.value)
    # Well-formed quoting still reads: a separator and a newline inside quotes stay in one cell.
    good = tmp_path / f"good{path.suffix}"
    good.write_text(f'id{sep}url{sep}note\na{sep}https://x/1{sep}"one{sep} two"\nb{sep}https://x/2{sep}"line\nbreak"\n')
    assert [i.fields["note"] for i in _all(good)] == [f"one{sep} two", "line\nbreak"]


@pytest.mark.parametrize("derived_first", [True, False])
def test_a_given_id_equal_to_a_derived_id_is_refused_naming_both_rows(tmp_path, derived_first):
    """Row 'given' has the id that row 'derived' gets from its url: refused before sending, both rows named."""
    clash = derive_id("https://x/derived.jpg")
    rows = [f"{clash},https://x/given.jpg", ",https://x/derived.jpg"]
    if derived_first:
        rows.reverse()
    path = tmp_path / "m.csv"
    path.write_text("id,url\nz,https://x/other.jpg\n" + "\n".join(rows) + "\n")
    with pytest.raises(ManifestError) as info:
        inspect_manifest(path)
    given_row, derived_row = (3, 2) if derived_first else (2, 3)
    message = str(info.value)
    assert f"id '{clash}' of row {given_row}" in message and f"url of row {derived_row}" in message
    assert "https://x/derived.jpg" in message
    _repeated_urls_still_collapse_and_given_dupes_are_still_refused(tmp_path)


def _repeated_urls_still_collapse_and_given_dupes_are_still_refused(tmp_path):
    """Two rows of one url and no id are one image (not a clash); a given id twice is still refused."""
    same = tmp_path / "same.csv"
    same.write_text("id,url\n,https://x/1\n,https://x/1\nk,https://x/2\n")
    assert inspect_manifest(same).rows == 3 and len(_all(same)) == 2
    dupes = tmp_path / "dupes.csv"
    dupes.write_text(f"id,url\n,https://x/1\nk,https://x/2\nk,https://x/3\n{derive_id('https://x/9')},https://x/4\n")
    with pytest.raises(ManifestError, match="id 'k' appears 2 times"):
        inspect_manifest(dupes)


def test_a_byte_order_mark_is_accepted_in_every_text_format(tmp_path):
    """CSV, TSV, JSONL and plain text lists that start with a UTF-8 BOM read the same as without."""
    files = {
        "m.csv": "id,url\na,https://x/1.jpg\n",
        "m.tsv": "id\turl\na\thttps://x/1.jpg\n",
        "m.jsonl": json.dumps({"id": "a", "url": "https://x/1.jpg"}) + "\n",
        "m.txt": "https://x/1.jpg\n",
    }
    for name, text in files.items():
        path = tmp_path / name
        path.write_text(BOM + text, encoding="utf-8")
        assert inspect_manifest(path).rows == 1, name
        (item,) = _all(path)
        assert item.url == "https://x/1.jpg", name
        assert item.id == ("a" if name != "m.txt" else derive_id("https://x/1.jpg")), name


@pytest.mark.parametrize(
    ("name", "content", "guess"),
    [
        ("m.csv", "id,image_url\n1,https://x/1\n", "image_url"),
        ("m.tsv", "id\tpath\n1\ta.jpg\n", "path"),
        ("m.jsonl", '{"id": "1", "Image": "https://x/1"}\n', "Image"),
        ("n.csv", "id,urls\n1,https://x/1\n", "urls"),
    ],
)
def test_no_url_column_suggests_a_likely_one(tmp_path, name, content, guess):
    """The refusal names the column that looks like the images' and how to point url_column at it."""
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ManifestError) as info:
        inspect_manifest(path)
    assert f"did you mean '{guess}'" in str(info.value) and f'url_column = "{guess}"' in str(info.value)
    plain = tmp_path / "plain.csv"  # nothing image-like: the plain message, no wild guess
    plain.write_text("id,colour\n1,red\n")
    with pytest.raises(ManifestError) as info:
        inspect_manifest(plain)
    assert "no 'url' column" in str(info.value) and "did you mean" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('id,url\na,https://x/1\nb,"https://x/2\nc,https://x/3\n', "line 3 opens a quoted field"),
        (f"id,url\n{derive_id('https://x/2')},https://x/1\n,https://x/2\n", "is also the id derived"),
    ],
)
def test_cli_refuses_these_manifests_with_exit_2_and_sends_nothing(simulator, tmp_path, capsys, content, words):
    """An unclosed quote and a given/derived id clash: exit 2, one line, no request reaches the endpoint."""
    path = tmp_path / "m.csv"
    path.write_text(content)
    assert _run(path, tmp_path, simulator.base_url) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]
    assert simulator.app.stats()["requests"] == 0


def test_upper_case_schemes_are_sent_as_remote_urls(simulator, tmp_path):
    """HTTP:// and Https:// rows are captioned like http:// ones, not refused as unsupported schemes."""
    path = tmp_path / "m.csv"
    path.write_text("id,url\na,HTTP://images.example.com/a.jpg\nb,Https://images.example.com/b.jpg\n")
    assert _run(path, tmp_path, simulator.base_url) == 0
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert sorted(frame["status"].to_list()) == ["ok", "ok"]
    assert simulator.app.stats()["requests"] == 2


def test_a_truncated_jpeg_in_a_folder_is_image_unreadable_and_not_sent(simulator, tmp_path):
    """In a folder manifest the first half of a JPEG ends image_unreadable with no request; the whole one is sent."""
    folder = tmp_path / "images"
    folder.mkdir()
    out = io.BytesIO()
    Image.effect_noise((320, 240), 60).convert("RGB").save(out, format="JPEG", quality=90)
    (folder / "whole.jpg").write_bytes(out.getvalue())
    (folder / "half.jpg").write_bytes(out.getvalue()[: len(out.getvalue()) // 2])
    assert _run(folder, tmp_path, simulator.base_url) == 1
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
    by_name = {url.rsplit("/", 1)[-1]: row for url, row in zip(frame["url"], frame.iter_rows(named=True), strict=True)}
    assert by_name["half.jpg"]["error_type"] == "image_unreadable" and by_name["half.jpg"]["attempts"] == 0
    assert by_name["whole.jpg"]["status"] == "ok"
    assert simulator.app.stats()["requests"] == 1
