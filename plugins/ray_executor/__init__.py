"""The ``ray`` executor: the same plan on a Ray cluster (``kalm-bench run SUITE --executor ray``).

Install with ``pip install 'kalm-bench[ray]'``. Jobs go to the cluster named by ``$RAY_ADDRESS`` (e.g.
``auto`` after ``ray start --head``), or to a local Ray instance with ``--jobs`` CPUs when it is unset.
Workers rebuild the plugin registry from installed entry points (``KALM_BENCH_*`` variables are passed
on), and must see the same ``KALM_BENCH_CACHE`` path: on several machines, a shared filesystem.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from kalm_bench import hookimpl
from kalm_bench.api import TRUST_PICKLE_ENV, Executor, ItemLost, StrictConfig
from kalm_bench.api import UserError

_FORWARDED = ("KALM_BENCH_CACHE", "KALM_BENCH_LOAD_PLUGINS", "KALM_BENCH_PLUGIN_MODULES", "KALM_BENCH_STRICT_PLUGINS",
              TRUST_PICKLE_ENV, "PYTHONPATH")


class RayExecutor(Executor):
    name = "ray"
    version = "1"
    description = "a Ray cluster ($RAY_ADDRESS) or a local Ray instance with --jobs CPUs"

    class Config(StrictConfig):
        cpus_per_job: float = 1.0

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], jobs: int) -> Iterator[Any]:
        try:
            import ray
        except ImportError:
            raise UserError("the ray executor needs Ray: pip install 'kalm-bench[ray]'", field="--executor") from None
        items = list(items)
        if not items:
            return
        env_vars = {k: os.environ[k] for k in _FORWARDED if k in os.environ}
        threads = str(max(1, int(self.config.cpus_per_job)))
        env_vars.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        started_here = False
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS")
            kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env_vars}, "include_dashboard": False,
                                      "log_to_driver": False}
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=max(1, jobs), object_store_memory=200 * 1024**2, **kwargs)
            started_here = True
        try:
            remote = ray.remote(num_cpus=self.config.cpus_per_job, max_retries=0)(fn)
            pending = {remote.remote(item): item for item in items}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    item = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # the task raised, or its worker died: this item fails, the rest go on
                        text = " ".join(str(exc).split())[:300]
                        result = ItemLost(item, f"the Ray task failed ({type(exc).__name__}: {text})")
                    yield result
        finally:
            if started_here:
                ray.shutdown()


@hookimpl
def register_executors(register):
    register(RayExecutor)
