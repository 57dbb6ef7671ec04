"""Stage helpers: instruction embeddings are computed once and remembered in the artifact store."""

from __future__ import annotations

import numpy as np

from kalm_bench.cache import ArtifactStore
from kalm_bench.stages import Encoded


def test_embeddings_are_cached_on_disk_per_encoder_config(core_env, tmp_path):
    from kb_testplugins import HashEncoder

    calls = []

    class Counting(HashEncoder):
        def encode(self, texts):
            calls.append(list(texts))
            return super().encode(texts)

    store = ArtifactStore(tmp_path / "store")
    spec = {"name": "hash", "config": {"size": 16}, "version": "1"}
    first = Encoded(Counting(), store, spec)
    a = first(["go left", "go right", "go left"])
    assert calls == [["go left", "go right"]]
    second = Encoded(Counting(), store, spec)
    b = second(["go right", "go left", "stay"])
    assert calls[1:] == [["stay"]]  # only the new string reached the encoder
    np.testing.assert_array_equal(a[1], b[0])
    other = Encoded(Counting(), store, {**spec, "config": {"size": 8}})
    other(["go left"])
    assert calls[-1] == ["go left"]  # another config never reads these vectors
    (store.root / "encodings").joinpath(first.path.name).write_bytes(b"garbage")
    assert Encoded(Counting(), store, spec)(["go left"]).shape == (1, 16)  # corrupt cache: recomputed
