"""Numeric I/O: normalisation round trips, slot packing / target alignment, projection and head shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kalm_bench_plugins.kalm import tasks as T
from kalm_bench_plugins.kalm.normalise import Normalizer, Normalizers
from test_kalm_tasks import toy_dataset


def test_normalizer_round_trip_and_statistics(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, [0.1, 5.0, 1.0], size=(500, 3)).astype(np.float32)
    n = Normalizer.fit(x)
    z = n.encode(x)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-3)
    np.testing.assert_allclose(n.decode(z), x, rtol=1e-5, atol=1e-5)
    off = Normalizer.fit(x, enabled=False)  # KALM's raw numbers
    np.testing.assert_array_equal(off.encode(x), x)
    const = Normalizer.fit(np.ones((10, 2)))  # zero variance must not divide by zero
    assert np.isfinite(const.encode(np.ones((1, 2)))).all()
    for kind in ("discrete", "continuous"):
        ds = toy_dataset(kind)
        norms = Normalizers.fit(ds, True)
        norms.save(tmp_path / f"{kind}.npz")
        back = Normalizers.load(tmp_path / f"{kind}.npz")
        np.testing.assert_array_equal(back.state.mean, norms.state.mean)
        assert (back.action is None) == (kind == "discrete")
        if kind == "continuous":
            np.testing.assert_allclose(back.action.decode(back.action.encode(ds.actions)), ds.actions, atol=1e-5)


def _packer(ds, texts=()):
    from kalm_bench_plugins.kalm.embedded import Packer

    norms = Normalizers.fit(ds, True)
    all_texts = sorted({s["text"] for t in T.TASKS for e in t().examples(ds, np.random.default_rng(0))
                        for s in e["segments"] if s["kind"] == "text"} | set(texts))
    return Packer(norms, ds.action_kind, {t: i for i, t in enumerate(all_texts)},
                  {g: i for i, g in enumerate(sorted(set(ds.goals.tolist())))}), norms


def test_embedded_packing_aligns_targets_one_slot_earlier():
    from kalm_bench_plugins.kalm.embedded import ACTION, STATE, TEXT

    ds = toy_dataset()
    packer, norms = _packer(ds)
    ex = T.RolloutGeneration().examples(ds, np.random.default_rng(0))[0]
    it = packer.pack(ex)
    assert it["kind"] == [TEXT, TEXT, TEXT] + [STATE, ACTION] * 3 + [STATE]
    # s_0 (slot 3) is predicted from the last prompt slot, a_0 (slot 4) from s_0, ...
    assert it["st_m"] == [0, 0, 1, 0, 1, 0, 1, 0, 1, 0] and it["ac_m"] == [0, 0, 0, 1, 0, 1, 0, 1, 0, 0]
    np.testing.assert_allclose(it["st_t"][2], ds.states[0])
    assert it["ac_t"][3] == ds.actions[0]
    assert it["dn_m"][9] == 1 and it["dn_t"][9] == 1.0 and it["rw_m"][9] == 1 and it["rw_t"][9] == 2.0
    batch = packer.collate([it, packer.pack(T.DynamicsPrediction().examples(ds, np.random.default_rng(0))[0])])
    assert batch["kind"].shape == (2, 10) and batch["st"].shape == (2, 10, 4)
    assert not batch["valid"][1, 7:].any()
    # Targets are normalised with the dataset statistics.
    np.testing.assert_allclose(batch["st_t"][0, 2].numpy(), norms.state.encode(ds.states[0]), rtol=1e-5)
    exp = packer.pack(T.RolloutExplanation().examples(ds, np.random.default_rng(0))[0])
    assert exp["ex_t"][-1] == packer.goal_index[ds.goals[0]] and sum(np.array(exp["ex_t"]) >= 0) == 1
    assert sum(exp["st_m"]) == 0 and sum(exp["ac_m"]) == 0


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_slot_decoder_heads_shapes(kind):
    from kalm_bench_plugins.kalm.embedded import SlotDecoder, losses

    ds = toy_dataset(kind)
    packer, _ = _packer(ds)
    items = [packer.pack(e) for t in T.TASKS for e in t().examples(ds, np.random.default_rng(0))]
    batch = packer.collate(items)
    model = SlotDecoder(4, kind, ds.action_size, 32, 2, 2, 64)
    table = torch.randn(len(packer.text_index), 384)
    cands = torch.nn.functional.normalize(torch.randn(3, 384), dim=-1)
    loss, parts = losses(model, batch, table, cands, torch.arange(3), 0.1,
                         {"state": 1, "action": 1, "explain": 1, "done": 1, "reward": 1})
    assert set(parts) == {"state", "action", "explain", "done", "reward"} and torch.isfinite(loss)
    loss.backward()
    assert model.state_in.weight.grad is not None and model.action_in.weight.grad is not None
    b, n = batch["kind"].shape
    h, cache = model(model.embed(batch["kind"], table[batch["tid"]], batch["st"], batch["ac"],
                                 torch.arange(n).expand(b, n)))
    assert h.shape == (b, n, 32) and len(cache) == 2
    assert model.action_out(h).shape == (b, n, ds.action_size) and model.state_out(h).shape == (b, n, 4)


def test_token_packing_and_numeric_io_shapes():
    from kalm_bench_plugins.kalm.hf import ACTION, STATE, NumericIO, TokenPacker

    class Tok:  # character-level stand-in: one token per character
        bos_token_id, eos_token_id = 1, 2

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [3 + (ord(c) % 50) for c in text]}

    ds = toy_dataset()
    norms = Normalizers.fit(ds, True)
    p = TokenPacker(Tok(), norms, "discrete")
    exp = p.pack(T.RolloutExplanation().examples(ds, np.random.default_rng(0))[0])
    assert exp["ids"][0] == 1 and exp["ids"][-1] == 2  # BOS ... EOS
    tgt = [t for t in exp["tok_t"] if t != -100]
    assert tgt == [3 + (ord(c) % 50) for c in "push ball 0."] + [2]  # instruction, '.', EOS
    assert sum(k == STATE for k in exp["kind"]) == 4 and sum(k == ACTION for k in exp["kind"]) == 3
    gen = p.pack(T.RolloutGeneration().examples(ds, np.random.default_rng(0))[0])
    first_state = gen["kind"].index(STATE)
    assert gen["st_m"][first_state - 1] == 1 and gen["ac_m"][first_state] == 1
    assert all(t == -100 for t in gen["tok_t"])
    left = p.collate([gen, exp], left=True)
    assert left["valid"][0, -1] and not left["valid"][0, 0]  # shorter row is padded on the left
    io = NumericIO(16, 4, "discrete", 5)
    assert io.embed_action(torch.tensor([[0, 4]])).shape == (1, 2, 16)
    assert io.state_out(torch.zeros(3, 16)).shape == (3, 4) and io.action_out(torch.zeros(3, 16)).shape == (3, 5)
    cont = NumericIO(16, 4, "continuous", 2)
    assert cont.embed_action(torch.zeros(1, 2, 2)).shape == (1, 2, 16)
