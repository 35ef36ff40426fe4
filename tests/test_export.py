"""`caption export`: caption .txt files, JSONL/CSV rows and WebDataset shards from a run folder."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import UTC, datetime

import polars as pl
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.journal import Journal
from pipeline.models import ResultRow
from tests.conftest import FAST_CONFIG, remote_rows, run_args, write_config, write_csv


def _images(folder):
    """Four good images (one in a sub-folder) and one truncated JPEG, which ends as an error row."""
    (folder / "sub").mkdir(parents=True)
    for name in ("a.jpg", "b.png", "sub/c.jpg", "sub/d.jpg"):
        Image.new("RGB", (16, 16), (len(name) * 40, 90, 160)).save(folder / name)
    whole = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(whole, format="JPEG")
    (folder / "broken.jpg").write_bytes(whole.getvalue()[:200])
    return folder


def _run(manifest, tmp_path, base_url) -> tuple:
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    assert main(run_args(manifest, out, config, base_url)) in (0, 1)
    return out, pl.read_parquet(out / "results.parquet")


@pytest.fixture
def folder_run(simulator, tmp_path):
    images = _images(tmp_path / "imgs")
    out, frame = _run(images, tmp_path, simulator.base_url)
    return images, out, frame


def _export(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["export", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_txt_writes_one_caption_file_beside_each_ok_image(folder_run, capsys):
    """photo.jpg → photo.txt holding its caption; the error row gets none and is counted as left out."""
    images, out, frame = folder_run
    code, said, _ = _export(capsys, out, "--format", "txt")
    assert code == 0
    ok = frame.filter(pl.col("status") == "ok")
    assert ok.height == 4
    for path, caption in ok.select("path", "caption").iter_rows():
        assert (images / path).with_suffix(".txt").read_text(encoding="utf-8") == caption + "\n"
    assert sorted(p.relative_to(images).as_posix() for p in images.rglob("*.txt")) == [
        "a.txt",
        "b.txt",
        "sub/c.txt",
        "sub/d.txt",
    ]
    assert "wrote 4 caption files" in said and "left out 1 row not ok (error 1)" in said


def test_txt_to_a_folder_mirrors_sub_folders(folder_run, tmp_path, capsys):
    """--to writes the same names under FOLDER, sub-folders kept, nothing beside the images."""
    images, out, _ = folder_run
    target = tmp_path / "captions"
    assert _export(capsys, out, "--format", "txt", "--to", target)[0] == 0
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == [
        "a.txt",
        "b.txt",
        "sub/c.txt",
        "sub/d.txt",
    ]
    assert not list(images.rglob("*.txt"))


def test_overwriting_is_refused_without_force(folder_run, capsys):
    """A second export exits 2 naming the first existing file, changes nothing; --force overwrites."""
    images, out, _ = folder_run
    assert _export(capsys, out, "--format", "txt")[0] == 0
    (images / "a.txt").write_text("edited by hand")
    code, said, err = _export(capsys, out, "--format", "txt")
    assert code == 2 and said == ""
    assert err.strip() == f"caption: error: {images / 'a.txt'} already exists (and 3 more); add --force to overwrite"
    assert (images / "a.txt").read_text() == "edited by hand"
    assert _export(capsys, out, "--format", "txt", "--force")[0] == 0
    assert (images / "a.txt").read_text() != "edited by hand"


def test_hostile_ids_stay_inside_to(simulator, tmp_path, capsys):
    """Remote images are named by id; ../, absolute, NUL, dot and over-long ids all land as files inside --to."""
    hostile = ["../../escape", "/etc/passwd", "a\x00b", "..", ".hidden", "x" * 1000, "ok-id", "a/b\\c"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"id": i, "url": f"https://images.example.com/{n}.jpg"}) + "\n" for n, i in enumerate(hostile)
        )
    )
    out, frame = _run(manifest, tmp_path, simulator.base_url)
    assert frame.filter(pl.col("status") == "ok").height == len(hostile)
    target = tmp_path / "deep" / "captions"
    code, said, _ = _export(capsys, out, "--format", "txt", "--to", target)
    assert code == 0 and f"wrote {len(hostile)} caption files" in said
    written = [p for p in (tmp_path).rglob("*.txt")]
    assert len(written) == len(hostile)
    assert all(p.parent == target and len(p.name.encode()) <= 255 for p in written)
    assert (target / "ok-id.txt").exists()


def test_a_symlink_inside_to_cannot_send_captions_elsewhere(folder_run, tmp_path, capsys):
    """--to/sub pointing outside: its captions are skipped (said why), nothing is written through it."""
    _, out, _ = folder_run
    target, elsewhere = tmp_path / "captions", tmp_path / "elsewhere"
    target.mkdir()
    elsewhere.mkdir()
    (target / "sub").symlink_to(elsewhere, target_is_directory=True)
    (target / "a.txt").symlink_to(elsewhere / "a-link.txt")
    code, said, _ = _export(capsys, out, "--format", "txt", "--to", target, "--force")
    assert code == 0 and "wrote 1 caption files" in said and "skipped 3: 3 a symlink on the way" in said
    assert list(elsewhere.iterdir()) == [] and (target / "b.txt").exists()


def test_remote_images_without_to_are_skipped_with_the_reason(simulator, tmp_path, capsys):
    """Beside-the-image needs a local image: remote rows are counted as skipped, naming --to."""
    out, _ = _run(write_csv(tmp_path / "m.csv", remote_rows(3)), tmp_path, simulator.base_url)
    code, said, _ = _export(capsys, out, "--format", "txt")
    assert code == 0 and "wrote 0 caption files" in said
    assert "skipped 3: 3 remote image (give --to" in said


def test_jsonl_round_trips_the_ok_rows(folder_run, tmp_path, capsys):
    """Read back, results.jsonl equals results.parquet's ok rows, column for column."""
    _, out, frame = folder_run
    assert _export(capsys, out, "--format", "jsonl", "--to", tmp_path / "x")[0] == 0
    back = pl.read_ndjson(tmp_path / "x" / "results.jsonl", schema=frame.schema | {"finished_at": pl.String})
    back = back.with_columns(pl.col("finished_at").str.to_datetime(time_unit="us", time_zone="UTC"))
    assert back.equals(frame.filter(pl.col("status") == "ok"))


def test_csv_holds_the_ok_rows_with_lists_as_json(folder_run, capsys):
    """results.csv in DIR: the ok rows in manifest order, list columns as JSON text."""
    _, out, frame = folder_run
    assert _export(capsys, out, "--format", "csv")[0] == 0
    back = pl.read_csv(out / "results.csv", infer_schema=False)
    ok = frame.filter(pl.col("status") == "ok")
    assert back["id"].to_list() == ok["id"].to_list() and back["caption"].to_list() == ok["caption"].to_list()
    assert [json.loads(v) for v in back["flagged_categories"]] == ok["flagged_categories"].to_list()


def test_webdataset_shards_pair_each_image_with_its_caption(folder_run, tmp_path, capsys):
    """Shards of --shard-size samples open with tarfile; key.<ext> holds the image's bytes, key.txt its caption."""
    images, out, frame = folder_run
    code, said, _ = _export(capsys, out, "--format", "webdataset", "--to", tmp_path / "wds", "--shard-size", "3")
    assert code == 0 and "wrote 2 shards" in said and "(4 image + caption samples)" in said
    members: dict[str, bytes] = {}
    for shard in ("shard-000000.tar", "shard-000001.tar"):
        with tarfile.open(tmp_path / "wds" / shard) as tar:
            for info in tar.getmembers():
                members[info.name] = tar.extractfile(info).read()  # type: ignore[union-attr]
    ok = frame.filter(pl.col("status") == "ok")
    assert len(members) == 2 * ok.height
    for item_id, path, caption in ok.select("id", "path", "caption").iter_rows():
        ext = path.rsplit(".", 1)[1]
        assert members[f"{item_id}.{ext}"] == (images / path).read_bytes()
        assert members[f"{item_id}.txt"].decode() == caption


def test_webdataset_skips_remote_images_with_a_count(simulator, tmp_path, capsys):
    """A shard holds local images only: remote rows are counted, no empty shard is written."""
    out, _ = _run(write_csv(tmp_path / "m.csv", remote_rows(2)), tmp_path, simulator.base_url)
    code, said, _ = _export(capsys, out, "--format", "webdataset")
    assert code == 0 and "wrote 0 shards" in said and "skipped 2: 2 remote image" in said
    assert not list((out / "webdataset").glob("*.tar"))


def test_an_unfinished_folder_exports_what_is_ok_so_far_and_says_so(tmp_path, capsys):
    """Parts only (a stopped run, no results.parquet): the ok rows are exported, a label column by --field,
    and the report names the run as unfinished."""
    out = tmp_path / "out"
    now = datetime.now(UTC)
    with Journal(out) as journal:
        journal.write_rows(
            [
                ResultRow(
                    id="a",
                    url="https://x/a.jpg",
                    status="ok",
                    caption="A",
                    labels='{"tags": ["cat", "sofa"]}',
                    row=0,
                    finished_at=now,
                ),
                ResultRow(id="b", url="https://x/b.jpg", status="filtered", row=1, finished_at=now),
            ]
        )
        schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}}}
        journal.write_meta(
            {
                "status": "stopped",
                "request": {"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}},
            }
        )
    code, said, _ = _export(capsys, out, "--format", "txt", "--to", tmp_path / "t", "--field", "tags")
    assert code == 0
    assert (tmp_path / "t" / "a.txt").read_text() == "cat, sofa\n"
    assert "left out 1 row not ok (filtered 1)" in said
    assert "unfinished (run.json says stopped)" in said


def test_an_unknown_field_is_a_one_line_usage_error(folder_run, capsys):
    """--field naming no column: exit 2, the choices named."""
    _, out, _ = folder_run
    code, _, err = _export(capsys, out, "--format", "txt", "--field", "tagz")
    assert code == 2 and err.count("\n") == 1 and "no such column (choose from: caption" in err


def test_two_rows_of_one_caption_file_write_it_once_and_say_why(simulator, tmp_path, capsys):
    """photo.jpg listed twice: captioned once (same image); photo.png beside it: skipped (name taken)."""
    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (16, 16), "red").save(images / "photo.jpg")
    Image.new("RGB", (16, 16), "blue").save(images / "photo.png")
    rows = [
        {"id": "a", "url": "imgs/photo.jpg"},
        {"id": "b", "url": "imgs/photo.jpg"},
        {"id": "c", "url": "imgs/photo.png"},
    ]
    out, frame = _run(write_csv(tmp_path / "m.csv", rows), tmp_path, simulator.base_url)
    code, said, _ = _export(capsys, out, "--format", "txt")
    assert code == 0 and "wrote 1 caption files" in said
    assert "1 same image file as an earlier row" in said and "1 same caption file name as an earlier, different" in said
    assert (images / "photo.txt").read_text() == frame.filter(pl.col("id") == "a")["caption"].item() + "\n"


def test_webdataset_force_removes_an_earlier_exports_extra_shards(folder_run, capsys):
    """--force with fewer shards than last time: the old shard-00000N.tar beyond the new ones are removed
    (a loader globbing shard-*.tar would read every sample twice) and counted; other files are kept."""
    _, out, frame = folder_run
    to = out / "wds"
    assert _export(capsys, out, "--format", "webdataset", "--to", to, "--shard-size", "1")[0] == 0
    assert len(list(to.glob("shard-*.tar"))) == 4
    (to / "shard-notes.tar").write_text("mine")  # not a name the export makes: never touched
    code, said, _ = _export(capsys, out, "--format", "webdataset", "--to", to, "--shard-size", "10", "--force")
    assert code == 0 and "wrote 1 shards" in said and "removed 3 older shards beyond these" in said
    assert sorted(p.name for p in to.iterdir()) == ["shard-000000.tar", "shard-notes.tar"]
    with tarfile.open(to / "shard-000000.tar") as tar:
        assert len(tar.getnames()) == 2 * frame.filter(pl.col("status") == "ok").height


def test_webdataset_without_force_refuses_a_folder_holding_an_earlier_exports_shards(folder_run, capsys):
    """Only shards beyond this export's exist (it now writes none): still refused without --force,
    else the folder would mix two exports."""
    _, out, _ = folder_run
    to = out / "wds"
    to.mkdir()
    (to / "shard-000007.tar").write_bytes(b"")
    code, said, err = _export(capsys, out, "--format", "webdataset", "--to", to)
    assert code == 2 and said == ""
    assert err == f"caption: error: {to / 'shard-000007.tar'} already exists; add --force to overwrite\n"
    assert (to / "shard-000007.tar").exists() and not (to / "shard-000000.tar").exists()


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv", "webdataset"])
@pytest.mark.parametrize("under", [False, True], ids=["to-is-a-file", "to-under-a-file"])
def test_export_to_an_existing_file_is_a_one_line_error(folder_run, capsys, fmt, under):
    """--to naming a file (a typo), or a folder under one: exit 2, one line naming it; nothing written."""
    _, out, _ = folder_run
    target = out.parent / "a-file"
    target.write_text("x")
    to = target / "sub" if under else target
    code, said, err = _export(capsys, out, "--format", fmt, "--to", to)
    assert code == 2 and said == ""
    assert err.count("\n") == 1 and err.startswith(f"caption: error: --to {to}: ")
    assert (f"{target} is a file" if under else "is a file, not a folder") in err
    assert target.read_text() == "x"


@pytest.mark.parametrize(
    ("fmt", "blocker"),
    [("txt", "sub"), ("jsonl", "results.jsonl"), ("csv", "results.csv"), ("webdataset", "shard-000000.tar")],
)
def test_a_failing_write_is_a_one_line_error_naming_the_file(folder_run, capsys, fmt, blocker):
    """An OSError while writing (here a folder where a file or a file where a folder goes; disk full,
    no permission alike): exit 2, one line naming the file, no traceback, no temp file left."""
    _, out, _ = folder_run
    to = out.parent / "to"
    to.mkdir()
    if fmt == "txt":
        (to / blocker).write_text("a file where the sub-folder's captions go")
    else:
        (to / blocker).mkdir()
    code, _, err = _export(capsys, out, "--format", fmt, "--to", to, "--force")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"caption: error: {to / blocker}") and "cannot be written (" in err
    assert not [p.name for p in to.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize(("fmt", "field"), [("txt", "id"), ("txt", "url"), ("txt", "path"), ("webdataset", "url")])
def test_export_field_naming_a_base_column_writes_that_column(folder_run, capsys, fmt, field):
    """--field id/url/path: columns the export reads itself anyway are still a caption's text."""
    _, out, frame = folder_run
    to = out.parent / f"to-{fmt}-{field}"
    code, said, err = _export(capsys, out, "--format", fmt, "--field", field, "--to", to)
    assert code == 0, err
    ok = frame.filter(pl.col("status") == "ok")
    if fmt == "txt":
        for path, value in ok.select("path", pl.col(field).alias("value")).iter_rows():
            assert (to / path).with_suffix(".txt").read_text(encoding="utf-8") == f"{value}\n"
        assert "wrote 4 caption files" in said
    else:
        with tarfile.open(to / "shard-000000.tar") as tar:
            texts = {tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".txt")}  # type: ignore[union-attr]
        assert texts == set(ok[field].to_list())
