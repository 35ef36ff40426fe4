"""``@value_type`` classes behave as the frozen dataclasses they replaced: equal and hashed by value,
copied with ``dataclasses.replace``, pickled across the image pool's processes."""

from __future__ import annotations

import dataclasses
import pickle

from pipeline.images import PreparedImage
from pipeline.models import Completion, FilterVerdict, Item, Usage


def test_value_types_compare_hash_replace_and_pickle_by_value():
    usage = Usage(prompt_tokens=779, completion_tokens=12, total_tokens=791)
    completion = Completion("a cat", "gpt-4o", "stop", usage, FilterVerdict(), "id-1", captions=("a cat",))
    assert usage == Usage(779, 12, 791) and hash(usage) == hash(Usage(779, 12, 791))
    assert {usage, Usage(779, 12, 791)} == {usage}
    assert dataclasses.replace(completion, caption="a dog").caption == "a dog" and completion.caption == "a cat"
    assert pickle.loads(pickle.dumps(completion)) == completion
    image = PreparedImage(url="data:image/jpeg;base64,AAAA", width=64, height=48, inlined=True)
    assert pickle.loads(pickle.dumps(image)) == image
    assert not hasattr(Item("a", "u"), "__dict__")  # slots, as before
