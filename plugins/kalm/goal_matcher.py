"""Free text → the goal of the most similar known instruction (explanation accuracy, paper Fig. 7)."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from kalm_bench.api import TrajectoryDataset

_WORD = re.compile(r"[a-z]+")


def words(s: str) -> list[str]:
    return _WORD.findall(s.lower())


@dataclass
class GoalMatcher:
    """Maps free text to the goal of the most similar known instruction (order-aware word matching).

    The paper's Fig. 7 scores explanations by keyword match against the goal label. Word order matters
    for CLEVR ("red behind blue" is not "blue behind red"), so the match is difflib's ratio over word
    sequences against known instructions, and the explanation counts as correct when the best match has
    the true goal.
    """

    texts: list[str]
    goals: list[str]
    _words: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._words = [words(t) for t in self.texts]

    @classmethod
    def from_dataset(cls, dataset: TrajectoryDataset, per_goal: int = 6) -> GoalMatcher:
        seen: dict[str, list[str]] = {}
        for inst, goal in zip(dataset.instructions, dataset.goals):
            lst = seen.setdefault(str(goal), [])
            inst = str(inst)
            if inst not in lst and len(lst) < per_goal:
                lst.append(inst)
        texts = [t for g in seen for t in seen[g]]
        goals = [g for g in seen for _ in seen[g]]
        return cls(texts, goals)

    def goal_of(self, text: str) -> str:
        w = words(text)
        if not w or not self.texts:
            return ""
        sm = difflib.SequenceMatcher(autojunk=False)
        sm.set_seq2(w)
        best, best_i = -1.0, 0
        for i, cw in enumerate(self._words):
            sm.set_seq1(cw)
            r = sm.ratio()
            if r > best:
                best, best_i = r, i
        return self.goals[best_i]
