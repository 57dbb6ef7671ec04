"""kalm-bench: a plugin-based benchmark harness for LLM-grounded offline reinforcement learning.

Plugin authors import from here::

    from kalm_bench import hookimpl
    from kalm_bench.api import Algorithm, Policy, TrainContext
"""

from .hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
