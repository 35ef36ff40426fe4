"""A request body is serialized once: the bytes POSTed are the canonical JSON its dedup key hashes,
and a body without a dedup key is serialized by the client as before."""

from __future__ import annotations

import hashlib
import json

import polars as pl

from pipeline.dedup import canonical_json, request_key
from pipeline.models import Item
from tests.test_row_boundary import Endpoint, _config, run


def test_the_posted_bytes_are_the_canonical_json_the_request_key_hashes(tmp_path):
    endpoint = Endpoint()
    items = [Item(id=f"r{i}", url=f"https://img.test/{i}.png") for i in range(3)]
    totals, frame = run(_config(), items, tmp_path / "out", endpoint)
    assert not isinstance(totals, Exception), totals
    sent = {
        json.loads(r.content)["messages"][-1]["content"][1]["image_url"]["url"]: r.content for r in endpoint.requests
    }
    for row in frame.sort("id").to_dicts():
        content = sent[row["url"]]
        assert content == canonical_json(json.loads(content))  # keys sorted, nothing else changed
        assert row["request_key"] == request_key(content) == hashlib.blake2b(content, digest_size=16).hexdigest()


def test_without_dedup_the_body_is_still_sent_whole(tmp_path):
    endpoint = Endpoint()
    items = [Item(id="a", url="https://img.test/a.png"), Item(id="b", url="https://img.test/a.png")]
    totals, frame = run(_config(images={"dedup": False}), items, tmp_path / "out", endpoint)
    assert not isinstance(totals, Exception), totals
    assert len(endpoint.posts) == 2 and all(p["model"] and p["messages"] for p in endpoint.posts)
    assert frame.filter(pl.col("status") == "ok").height == 2
