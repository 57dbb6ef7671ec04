"""CLEVR-Robot check of the offline-RL plugin (not collected by pytest; run by hand).

Does what the stage graph does for one (algorithm, seed) run: generate seen-level data with the env plugin,
encode instructions with ``minilm``, train with checkpoints, evaluate every checkpoint on the seen level's
fixed test cases, report the mean over the last five, and compare with a uniformly random policy::

    OMP_NUM_THREADS=1 python tests/offline_rl/clevr_experiment.py --episodes 2000 --steps 3000 \
        --algos discrete-bc discrete-cql --repeat 2 --out /tmp/clevr_orl.json

``--repeat 2`` trains every algorithm twice with the same seed and checks the records are identical.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from orl_helpers import make_ctx, to_transitions  # noqa: E402

from kalm_bench.plugins import build_registry  # noqa: E402


class RandomPolicy:
    def __init__(self, n_actions: int, seed: int):
        self.rng = np.random.default_rng(seed)
        self.n = n_actions

    def act(self, batch):
        return self.rng.integers(0, self.n, len(batch.states))

    def save(self, path):  # pragma: no cover - never checkpointed
        raise NotImplementedError


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--algos", nargs="+", default=["discrete-bc", "discrete-cql"])
    ap.add_argument("--overrides", type=json.loads, default={},
                    help='JSON, e.g. {"discrete-cql": {"learning_rate": 3e-4}}')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--epsilon", type=float, default=0.0, help="the expert's random-push probability")
    ap.add_argument("--cases", type=int, default=111)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--dataset", type=Path, help="dataset directory: reused if it exists, else written")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    reg = build_registry()
    env = reg.get("envs", "clevr-robot")()
    t0 = time.perf_counter()
    if args.dataset is not None and (args.dataset / "manifest.json").is_file():
        from kalm_bench.datasets import TrajectoryDataset

        ds = TrajectoryDataset.load(args.dataset)
    else:
        ds = env.generate_dataset(args.episodes, args.data_seed, epsilon=args.epsilon)
        if args.dataset is not None:
            ds.save(args.dataset)
    gen_s = time.perf_counter() - t0
    encoder = reg.get("encoders", "minilm")({"cache_dir": str(args.dataset.parent / "emb-cache")}
                                            if args.dataset is not None else None)
    t0 = time.perf_counter()
    data = to_transitions(ds, encoder.encode)
    enc_s = time.perf_counter() - t0
    cases = env.test_cases("seen", args.cases, 7)
    out = {"episodes": ds.n_episodes, "epsilon": args.epsilon, "transitions": ds.n_transitions, "data_success": float(ds.success.mean()),
           "unique_instructions": len(data.instructions), "generate_s": gen_s, "encode_s": enc_s,
           "threads": args.threads, "n_cases": len(cases), "runs": {}}
    res = env.evaluate(RandomPolicy(40, 0), "seen", cases, 7, embed=encoder.encode)
    out["random_success"] = res.success_rate
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}), flush=True)

    for name in args.algos:
        cls = reg.get("algorithms", name)
        records = []
        for rep in range(args.repeat):
            algo = cls(cls.make_config(overrides=args.overrides.get(name, {})))
            with tempfile.TemporaryDirectory() as tmp:
                ctx, saved, _ = make_ctx(algo, data, Path(tmp), steps=args.steps, every=args.every, seed=args.seed,
                                         kind="discrete", action_size=40)
                c0, w0 = time.process_time(), time.perf_counter()
                algo.train(ctx)
                train_cpu, train_wall = time.process_time() - c0, time.perf_counter() - w0
                c0 = time.process_time()
                curve = []
                for step in sorted(saved):
                    policy = algo.load_policy(saved[step], ctx)
                    r = env.evaluate(policy, "seen", cases, 7, embed=encoder.encode)
                    loss = json.loads((saved[step] / "policy.json").read_text())["loss"]
                    curve.append({"step": step, "success_rate": r.success_rate,
                                  "length_mean": float(np.mean(r.lengths)), "loss": loss,
                                  "success": r.success.astype(int).tolist()})
                eval_cpu = time.process_time() - c0
            last5 = float(np.mean([c["success_rate"] for c in curve[-5:]]))
            rec = {"success_last5": last5, "curve": [{k: v for k, v in c.items() if k != "success"} for c in curve],
                   "train_cpu_s": train_cpu, "train_wall_s": train_wall, "eval_cpu_s": eval_cpu,
                   "updates_per_s": args.steps / train_wall}
            records.append((rec, [c["success"] for c in curve], [c["loss"] for c in curve]))
            print(name, rep, json.dumps(rec), flush=True)
        entry = records[0][0]
        if args.repeat > 1:
            entry["identical_repeats"] = all(r[1] == records[0][1] and r[2] == records[0][2] for r in records[1:])
        out["runs"][name] = entry
    print(json.dumps({k: {"success_last5": v["success_last5"], "identical": v.get("identical_repeats")}
                      for k, v in out["runs"].items()}))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
