"""The run raises the collector's young-generation threshold and puts it back, even on an error."""

from __future__ import annotations

import gc

import pytest

from pipeline.gc_tuning import RUN_GEN0_THRESHOLD, fewer_collections


def test_the_threshold_is_raised_inside_and_restored_after() -> None:
    before = gc.get_threshold()
    with fewer_collections():
        assert gc.get_threshold() == (max(before[0], RUN_GEN0_THRESHOLD), *before[1:])
    assert gc.get_threshold() == before


def test_restored_when_the_block_raises() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), fewer_collections():
        raise RuntimeError("the run failed")
    assert gc.get_threshold() == before


def test_a_higher_threshold_already_set_is_kept() -> None:
    before = gc.get_threshold()
    gc.set_threshold(RUN_GEN0_THRESHOLD * 2, *before[1:])
    try:
        with fewer_collections():
            assert gc.get_threshold()[0] == RUN_GEN0_THRESHOLD * 2
    finally:
        gc.set_threshold(*before)


def test_a_run_collects_less_often_while_it_runs_and_as_before_after(simulator, tmp_path) -> None:
    from pipeline.manifest import chunk_source
    from tests.conftest import remote_rows, write_csv
    from tests.test_runner import make_config, run_once

    manifest = write_csv(tmp_path / "m.csv", remote_rows(20))
    seen: list[int] = []

    def chunks():  # read by the run (in a worker thread: the threshold is the process's)
        seen.append(gc.get_threshold()[0])
        yield from chunk_source(manifest, chunk_size=10, url_column="url", id_column="id")()

    before = gc.get_threshold()
    totals, frame = run_once(make_config(simulator.base_url), manifest, tmp_path / "out", chunks=chunks)
    assert totals.ok == 20 and frame.height == 20
    assert seen and seen[0] >= RUN_GEN0_THRESHOLD
    assert gc.get_threshold() == before


def test_collection_turned_off_stays_off() -> None:
    before = gc.get_threshold()
    gc.set_threshold(0, *before[1:])
    try:
        with fewer_collections():
            assert gc.get_threshold()[0] == 0
        assert gc.get_threshold()[0] == 0
    finally:
        gc.set_threshold(*before)
