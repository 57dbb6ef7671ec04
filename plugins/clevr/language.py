"""Natural-language goals of every level.

* seen: the dataset's 18 sentence frames × 3 wordings of the direction (54 per goal), so generated data and
  KALM's released data share the instruction strings.
* rephrase: the same 80 goals in other words — at least 20 phrasings per direction, none of which is a
  seen phrasing (the project's own wording; KALM's LLM paraphrases are not public beyond the toy file).
* easy, hard: at least 20 phrasings per goal type (move per direction / still; two and three relations;
  line; circle).

``{A}``/``{B}``/``{C}`` are colour names; ``{rel}`` is a relation clause inside hard goals.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .goals import STILL, goal_level_kind
from .physics import COLORS

SEEN_FRAMES = (
    "Push the {A} ball {DIR} the {B} ball",
    "Can you push the {A} ball {DIR} the {B} ball",
    "Can you help me push the {A} ball {DIR} the {B} ball",
    "Is the {A} ball {DIR} the {B} ball",
    "Is there any {A} ball {DIR} the {B} ball",
    "The {A} ball moves {DIR} the {B} ball",
    "The {A} ball is being pushed {DIR} the {B} ball",
    "The {A} ball is pushed {DIR} the {B} ball",
    "The {A} ball was moved {DIR} the {B} ball",
    "Move the {A} ball {DIR} the {B} ball",
    "Keep the {A} ball {DIR} the {B} ball",
    "Can you move the {A} ball {DIR} the {B} ball",
    "Can you keep the {A} ball {DIR} the {B} ball",
    "Can you help me move the {A} ball {DIR} the {B} ball",
    "Can you help me keep the {A} ball {DIR} the {B} ball",
    "The {A} ball was pushed {DIR} the {B} ball",
    "The {A} ball is being moved {DIR} the {B} ball",
    "The {A} ball is moved {DIR} the {B} ball",
)
SEEN_DIR_WORDS = {
    "behind": ("behind", "to the behind of", "in behind of"),
    "left": ("to the left of", "left", "in left of"),
    "front": ("in front of", "front", "to the front of"),
    "right": ("to the right of", "right", "in right of"),
}

# Phrases for "A is <dir> of B" that the seen frames never use.
_REL = {
    "behind": ("behind", "at the back of", "beyond", "further back than", "on the far side of"),
    "left": ("to the left of", "on the left-hand side of", "left of", "westward of", "on the left of"),
    "front": ("in front of", "ahead of", "before", "nearer the front than", "on the near side of"),
    "right": ("to the right of", "on the right-hand side of", "right of", "eastward of", "on the right of"),
}

REPHRASE_FRAMES = (
    "Please place the {A} ball {REL} the {B} ball.",
    "I would like the {A} ball to end up {REL} the {B} ball.",
    "Get the {A} sphere {REL} the {B} sphere.",
    "Nudge the {A} ball until it sits {REL} the {B} ball.",
    "Could you arrange things so the {A} ball is {REL} the {B} ball?",
    "Slide the {A} orb {REL} the {B} orb.",
    "It would make me happy to see the {A} ball {REL} the {B} ball.",
    "Your task: bring the {A} ball {REL} the {B} one.",
    "Shove the {A} ball over so that it rests {REL} the {B} ball.",
    "Reposition the {A} ball {REL} its {B} neighbour.",
    "Make sure the {A} ball ends {REL} the {B} ball.",
    "The {A} ball belongs {REL} the {B} ball; fix that.",
    "Roll the {A} ball to a spot {REL} the {B} ball.",
    "Gently guide the {A} ball {REL} the {B} ball.",
    "Set the {A} ball down {REL} the {B} ball, please.",
    "I need the {A} sphere positioned {REL} the {B} sphere.",
    "Quickly get the {A} ball {REL} the {B} ball.",
    "Let the {A} ball come to rest {REL} the {B} ball.",
    "Drive the {A} ball {REL} the {B} ball.",
    "Could the {A} ball go {REL} the {B} ball?",
    "Relocate the {A} ball so it lies {REL} the {B} ball.",
    "Steer the {A} ball {REL} the {B} ball.",
)

_SWAP = {"behind": "front", "front": "behind", "left": "right", "right": "left"}
# Indirect phrasings that name the opposite relation and ask to undo it (as KALM's "swap" complaints).
REPHRASE_INDIRECT = (
    "I can't stand the {A} ball {OPP} the {B} one. Could you switch them around?",
    "The {A} ball sits {OPP} the {B} ball and I dislike that; please reverse it.",
)

EASY_DIR_WORDS = {
    "behind": ("backward", "towards the back", "away from the front", "to the rear"),
    "left": ("to the left", "leftward", "towards the left side", "left"),
    "front": ("forward", "towards the front", "to the front", "frontward"),
    "right": ("to the right", "rightward", "towards the right side", "right"),
}
EASY_FRAMES = (
    "Push the {A} ball {D} once.",
    "Give the {A} ball a single push {D}.",
    "Move the {A} ball one step {D}.",
    "Nudge the {A} ball {D}.",
    "Shift the {A} sphere {D} a little.",
)
STILL_PHRASES = (
    "Leave the {A} ball where it is.",
    "Do not move the {A} ball.",
    "Keep every ball still.",
    "Don't disturb the {A} ball.",
    "Let the {A} ball stay put.",
    "Nothing should move, especially the {A} ball.",
    "Hold the {A} ball in place.",
    "The {A} ball must not move.",
    "Keep the scene unchanged.",
    "Make no change to where the {A} ball is.",
    "Please keep the {A} ball still.",
    "Avoid moving the {A} ball.",
    "The {A} sphere stays where it is.",
    "Don't push anything.",
    "Leave everything as it is.",
    "Keep the {A} orb stationary.",
    "Freeze the {A} ball in its spot.",
    "Do nothing to the {A} ball.",
    "Let all the balls rest.",
    "Stay away from the {A} ball.",
)

MULTI_FRAMES = (
    "{R}.",
    "Arrange the balls so that {R}.",
    "Make it so that {R}.",
    "I want a scene where {R}.",
    "Please ensure {R}.",
    "Set up the table such that {R}.",
    "Push the balls until {R}.",
    "Your goal: {R}.",
    "Rearrange things so {R}.",
    "Could you make sure that {R}?",
    "Move balls around so that {R}.",
    "Finish with a layout in which {R}.",
    "Build a configuration where {R}.",
    "Get to a state where {R}.",
    "At the end, {R}.",
    "Organise the balls such that {R}.",
    "Work the balls until {R}.",
    "Position the balls so that {R}.",
    "Produce an arrangement where {R}.",
    "Reach a layout where {R}.",
)
_CLAUSE = ("the {A} ball is {REL} the {B} ball", "the {A} one sits {REL} the {B} one",
           "the {A} sphere lies {REL} the {B} sphere")

ORDER_PHRASES = (
    "Arrange the balls in a line.",
    "Line the balls up from left to right in the order red, blue, green, purple, cyan.",
    "Put all five balls in a row, red on the left and cyan on the right.",
    "Form a horizontal line of balls ordered red, blue, green, purple, cyan.",
    "Line up the balls by colour from left to right.",
    "Make a row: red, then blue, then green, then purple, then cyan.",
    "Sort the balls into a left-to-right line in colour order.",
    "Place the balls side by side in a straight line, starting with red.",
    "Build a line of balls going from red on the left to cyan on the right.",
    "Can you put the balls in a row ordered red, blue, green, purple and cyan?",
    "Arrange the five spheres in a left-to-right line by colour.",
    "Please line up every ball, red first and cyan last, from left to right.",
    "Create a row of balls with red leftmost and cyan rightmost.",
    "Set the balls out in a line: red, blue, green, purple, cyan.",
    "Get the balls into a straight row in colour order.",
    "Order the balls along a line from left to right.",
    "Put the balls in a line, each one to the right of the previous colour.",
    "Lay the balls out horizontally in the order red, blue, green, purple, cyan.",
    "Make the balls form a line across the table, red to cyan.",
    "Arrange all the balls in one row from left to right.",
    "Line the orbs up in a row by colour.",
)
SORT_PHRASES = (
    "Arrange the balls in a circle.",
    "Gather all the balls around the {C} ball.",
    "Use the {C} ball as the nucleus of the circle.",
    "Put every other ball close around the {C} ball.",
    "Cluster the balls around the {C} one.",
    "Make a circle of balls with the {C} ball in the middle.",
    "Bring all the balls near the {C} ball.",
    "Surround the {C} ball with the other balls.",
    "Group the balls tightly around the {C} sphere.",
    "Can you collect the balls around the {C} ball?",
    "Place the other four balls around the {C} ball.",
    "Form a ring around the {C} ball.",
    "Huddle all balls around the {C} ball.",
    "Let the {C} ball be the centre and bring the rest close to it.",
    "Push the other balls so they encircle the {C} ball.",
    "Move everything next to the {C} ball.",
    "Arrange the spheres in a circle centred on the {C} one.",
    "Draw the balls together around the {C} ball.",
    "Crowd the balls around the {C} ball.",
    "Keep all the balls within reach of the {C} ball.",
    "Circle the {C} ball with the remaining balls.",
)


def seen_instructions(goal: dict[str, Any]) -> list[str]:
    a, b = COLORS[goal["src"]], COLORS[goal["dst"]]
    return [f.format(A=a, B=b, DIR=w) for f in SEEN_FRAMES for w in SEEN_DIR_WORDS[goal["dir"]]]


def _rephrase(goal: dict[str, Any]) -> list[str]:
    a, b, d = COLORS[goal["src"]], COLORS[goal["dst"]], goal["dir"]
    out = [f.format(A=a, B=b, REL=rel) for rel in _REL[d][:1] for f in REPHRASE_FRAMES]
    out += [f.format(A=a, B=b, REL=rel) for rel in _REL[d][1:] for f in REPHRASE_FRAMES[:4]]
    out += [f.format(A=a, B=b, OPP=_REL[_SWAP[d]][0]) for f in REPHRASE_INDIRECT]
    return out


def _easy(goal: dict[str, Any]) -> list[str]:
    a = COLORS[goal["ball"]]
    if goal["dir"] == STILL:
        return [f.format(A=a) for f in STILL_PHRASES]
    return [f.format(A=a, D=w) for f in EASY_FRAMES for w in EASY_DIR_WORDS[goal["dir"]]]


def _clauses(pair: dict[str, Any], k: int) -> str:
    return _CLAUSE[k % len(_CLAUSE)].format(A=COLORS[pair["src"]], B=COLORS[pair["dst"]],
                                            REL=_REL[pair["dir"]][0])


def _multi(goal: dict[str, Any]) -> list[str]:
    out = []
    for i, frame in enumerate(MULTI_FRAMES):
        parts = [_clauses(p, i + j) for j, p in enumerate(goal["pairs"])]
        rel = ", ".join(parts[:-1]) + " and " + parts[-1]
        text = frame.format(R=rel)
        out.append(text[0].upper() + text[1:])
    return out


def instructions(goal: dict[str, Any], level: str) -> list[str]:
    """Every phrasing of ``goal`` at ``level`` (the env draws one per episode)."""
    kind = goal_level_kind(goal)
    if level == "seen" and kind == "pair":
        return seen_instructions(goal)
    if kind == "pair":
        return _rephrase(goal)
    if kind == "move":
        return _easy(goal)
    if kind in ("tau2", "tau3"):
        return _multi(goal)
    if kind == "order":
        return list(ORDER_PHRASES)
    if kind == "sort":
        c = COLORS[goal.get("center", 2)]
        return [p.format(C=c) for p in SORT_PHRASES]
    raise ValueError(f"no phrasings for goal type {kind!r}")


def pick_instruction(goal: dict[str, Any], level: str, rng: np.random.Generator) -> str:
    options = instructions(goal, level)
    return options[int(rng.integers(len(options)))]

