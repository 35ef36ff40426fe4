"""`caption run` goes on uvloop where it is installed; CAPTION_EVENT_LOOP=asyncio turns it off."""

from __future__ import annotations

import asyncio

import pytest

from pipeline import event_loop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_runs_the_pipeline_where_installed() -> None:
    pytest.importorskip("uvloop")
    assert event_loop.backend_options({}) == {"use_uvloop": True}
    assert event_loop.run(_loop_module).startswith("uvloop")


def test_the_standard_loop_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    assert event_loop.backend_options({"CAPTION_EVENT_LOOP": "asyncio"}) == {}
    monkeypatch.setenv("CAPTION_EVENT_LOOP", "asyncio")
    assert event_loop.run(_loop_module).startswith("asyncio")
