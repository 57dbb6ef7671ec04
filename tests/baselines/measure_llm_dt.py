"""CLEVR-Robot seen-level success of ``llm-dt`` (embedded backbone) or ``discrete-dt`` after a fixed budget.

Not a test (pytest does not collect it); the figures in plugins/baselines/README.md come from::

    OMP_NUM_THREADS=1 python tests/baselines/measure_llm_dt.py ground --model /tmp/llm-dt/grounded
    OMP_NUM_THREADS=1 python tests/baselines/measure_llm_dt.py train llm-dt --model /tmp/llm-dt/grounded --steps 1200
    OMP_NUM_THREADS=1 python tests/baselines/measure_llm_dt.py train discrete-dt --steps 1200

Data: 300 generated episodes (seed 0), minilm instruction embeddings; evaluation: the seen level's default
test cases (seed 7), as tests/baselines/test_dt_clevr.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["ground", "train"])
    p.add_argument("algorithm", nargs="?", default="llm-dt")
    p.add_argument("--model", type=Path, default=Path("/tmp/llm-dt/grounded"))
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--config", default="{}", help="JSON overrides of the algorithm's cpu preset")
    a = p.parse_args()
    torch.set_num_threads(1)

    from kalm_bench.api import GroundingContext, LLMHandle
    from kalm_bench.plugins import build_registry
    from kalm_bench_plugins.kalm import tasks as T

    from dt_helpers import make_ctx, to_transitions

    reg = build_registry()
    env = reg.get("envs", "clevr-robot")()
    ds = env.generate_dataset(a.episodes, seed=0)
    backend = reg.get("llm_backends", "embedded")({"threads": 1})  # the default (cpu) configuration
    if a.what == "ground":
        a.model.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        backend.ground(GroundingContext(ds, env, [t() for t in T.TASKS], 0, a.model))
        print(json.dumps({"grounding_seconds": round(time.perf_counter() - t0, 1)}))
        return
    encoder = reg.get("encoders", "minilm")()
    data = to_transitions(ds, encoder.encode)
    if a.algorithm == "llm-dt":
        from kalm_bench_plugins.baselines.llm_dt import LLMDecisionTransformer as cls
    else:
        cls = reg.get("algorithms", a.algorithm)
    algo = cls(cls.make_config("cpu", json.loads(a.config)))
    work = Path(f"/tmp/llm-dt/run-{a.algorithm}-{time.time_ns()}")
    work.mkdir(parents=True)
    ctx, saved, _ = make_ctx(algo, data, work, steps=a.steps, every=a.steps, action_size=40, env=env)
    if cls.needs_llm:
        ctx.llm = LLMHandle(backend, a.model)
    t0 = time.perf_counter()
    algo.train(ctx)
    seconds = time.perf_counter() - t0
    cases = env.test_cases("seen", None, 7)
    res = env.evaluate(algo.load_policy(saved[a.steps], ctx), "seen", cases, 7, embed=encoder.encode)
    print(json.dumps({"algorithm": a.algorithm, "steps": a.steps, "train_seconds": round(seconds, 1),
                      "updates_per_s": round(a.steps / seconds, 2), "seen_success": res.success_rate,
                      "cases": len(cases)}))


if __name__ == "__main__":
    main()
