"""Test-only algorithm that crashes on purpose, and resumes from its own training state.

``crash-bc`` learns like ``tabular-bc`` (kb_testplugins) but keeps its training state (counts, sampler RNG,
steps done) in ``ctx.workdir`` at every checkpoint and continues from it when a killed build is resumed.
``crash`` picks what happens after the checkpoint of step ``at_step`` (0 = before training):
``exit`` calls ``sys.exit(3)``, ``segv`` sends itself SIGSEGV, ``os_exit`` calls ``os._exit(7)`` and ``hang``
writes ``<KB_CRASH_DIR>/hanging-<seed>`` and sleeps (for a test to kill the whole run). With ``once``, only
the first attempt crashes (a marker in ``$KB_CRASH_DIR``). Every start appends ``<seed> <step>`` to
``$KB_CRASH_DIR/starts`` (the step it continues from). Loaded with
``KALM_BENCH_PLUGIN_MODULES=kb_testplugins,kb_crashplugins``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np

from kalm_bench import hookimpl
from kalm_bench.api import TrainContext
from kb_testplugins import TablePolicy, TabularBC

STATE = "crash-bc-state.json"


class CrashBC(TabularBC):
    name = "crash-bc"
    version = "1"
    description = "test algorithm: tabular-bc that crashes on purpose and resumes from its checkpoints"

    class Config(TabularBC.Config):
        crash: Literal["none", "exit", "segv", "os_exit", "hang"] = "none"
        at_step: int = 0
        once: bool = False

    def _crash(self, ctx: TrainContext) -> None:
        cfg = self.config
        folder = Path(os.environ.get("KB_CRASH_DIR", "."))
        marker = folder / f"crashed-{ctx.seed}"
        if cfg.once and marker.exists():
            return
        marker.write_text("1")
        if cfg.crash == "exit":
            sys.exit(3)
        if cfg.crash == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        if cfg.crash == "os_exit":
            os._exit(7)
        if cfg.crash == "hang":
            (folder / f"hanging-{ctx.seed}").write_text(str(os.getpid()))
            time.sleep(300)

    def train(self, ctx: TrainContext) -> None:
        cfg = self.config
        rng = np.random.default_rng(ctx.seed)
        counts: dict[str, list[float]] = {}
        done = 0
        state_file = ctx.workdir / STATE
        if state_file.is_file():
            state = json.loads(state_file.read_text())
            counts, done = state["counts"], state["done"]
            rng.bit_generator.state = state["rng"]
        folder = Path(os.environ.get("KB_CRASH_DIR", "."))
        with open(folder / "starts", "a") as f:
            f.write(f"{ctx.seed} {done}\n")
        if cfg.crash != "none" and cfg.at_step == 0:
            self._crash(ctx)
        obs, acts = ctx.real.observations, ctx.real.actions
        for step in ctx.checkpoint_steps():
            if step <= done:
                continue
            while done < step:
                for i in rng.integers(0, len(obs), cfg.batch_size):
                    counts.setdefault(TablePolicy.key(obs[i]), [0.0] * ctx.action_size)[int(acts[i])] += 1
                done += 1
            ctx.log(step, {"table_size": len(counts)})
            ctx.save_checkpoint(step, TablePolicy({k: int(np.argmax(v)) for k, v in counts.items()}))
            tmp = state_file.with_name(state_file.name + ".tmp")
            tmp.write_text(json.dumps({"counts": counts, "done": done, "rng": rng.bit_generator.state}))
            os.replace(tmp, state_file)
            if cfg.crash != "none" and step == cfg.at_step:
                self._crash(ctx)


@hookimpl
def register_algorithms(register):
    register(CrashBC)


def executor_item(i: int) -> int:
    """An item for the local executor's tests: 2 segfaults, 3 calls os._exit, 4 calls sys.exit, 5 raises."""
    if i == 2:
        os.kill(os.getpid(), signal.SIGSEGV)
    if i == 3:
        os._exit(5)
    if i == 4:
        sys.exit(3)
    if i == 5:
        raise ValueError("bad item")
    return i * i
