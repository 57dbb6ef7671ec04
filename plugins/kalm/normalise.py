"""Per-dimension normalisation of states, actions and rewards, fitted on the grounding data (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from kalm_bench.api import TrajectoryDataset


@dataclass
class Normalizer:
    """Per-dimension affine map fitted on the grounding data; identity when disabled (KALM fed raw numbers)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, enabled: bool = True, min_std: float = 1e-6) -> Normalizer:
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        if not enabled or len(x) == 0:
            d = x.shape[1]
            return cls(np.zeros(d, np.float32), np.ones(d, np.float32))
        return cls(x.mean(0).astype(np.float32), np.maximum(x.std(0), min_std).astype(np.float32))

    def encode(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float32) - self.mean) / self.std).astype(np.float32)

    def decode(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, np.float32) * self.std + self.mean).astype(np.float32)

    def to_dict(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}_mean": self.mean, f"{prefix}_std": self.std}

    @classmethod
    def from_dict(cls, d: Any, prefix: str) -> Normalizer:
        return cls(np.asarray(d[f"{prefix}_mean"], np.float32), np.asarray(d[f"{prefix}_std"], np.float32))


@dataclass
class Normalizers:
    state: Normalizer
    action: Normalizer | None  # continuous actions only
    reward: Normalizer

    @classmethod
    def fit(cls, dataset: TrajectoryDataset, enabled: bool) -> Normalizers:
        states = np.concatenate([dataset.states, dataset.next_states]) if dataset.n_transitions else \
            np.zeros((0, dataset.state_dim), np.float32)
        act = Normalizer.fit(dataset.actions, enabled) if dataset.action_kind == "continuous" else None
        # Rewards only feed the model-label head; they are always scaled so that loss weights mean the same
        # thing across environments.
        return cls(Normalizer.fit(states, enabled), act, Normalizer.fit(dataset.rewards[:, None], True))

    def save(self, path: Path) -> None:
        arrays = {**self.state.to_dict("state"), **self.reward.to_dict("reward")}
        if self.action is not None:
            arrays.update(self.action.to_dict("action"))
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> Normalizers:
        with np.load(path, allow_pickle=False) as z:
            act = Normalizer.from_dict(z, "action") if "action_mean" in z else None
            return cls(Normalizer.from_dict(z, "state"), act, Normalizer.from_dict(z, "reward"))
