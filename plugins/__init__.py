"""First-party kalm-bench plugins; each subpackage is registered through the kalm_bench entry-point group.

Importing this package also registers the environments' Gymnasium ids (see :mod:`.gym_ids`)."""

from . import gym_ids

gym_ids.register()
