"""Suite-settable options of the CLEVR-Robot environment."""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from kalm_bench.api import StrictConfig, pickle_trusted

TRUST_PICKLE_HINT = ("trust it on the command line (only for a file from a source you trust): "
                     "kalm-bench --trust-pickle COMMAND ... or KALM_BENCH_TRUST_PICKLE=1")


def is_pickled_goal_file(path: str | PathLike[str]) -> bool:
    """KALM's ``.npy`` goal files are pickles; kalm-bench's ``.json`` ones are not."""
    return Path(path).suffix == ".npy"


def _invalid(loc: tuple[str, ...], message: str, value: Any) -> ValidationError:
    """A validation error at ``loc`` (relative to where it is raised), so the suite error names the field."""
    error = PydanticCustomError("clevr_config", "{message}", {"message": message})
    return ValidationError.from_exception_data("ClevrConfig", [InitErrorDetails(type=error, loc=loc, input=value)])


class ClevrConfig(StrictConfig):
    """Options of ``clevr-robot``. The defaults are the corrected behaviour; the ``original`` preset
    switches on KALM's evaluation quirks."""

    stale_scene: bool = Field(False, description=(
        "Reproduce KALM's evaluation reset: the first push of a test case aims at the balls of a discarded "
        "random scene (the env's cached scene graph is not refreshed when the case's positions are written)."))
    hard_obs: Literal["xy", "kalm15"] = Field("xy", description=(
        "Numbers the hard-level ORDER/SORT checks read: 'xy' = the 10 ball coordinates; 'kalm15' = "
        "ImagineBench's scrambled slice of the 15-number observation."))
    easy_check: Literal["action", "state", "state_any"] = Field("action", description=(
        "Easy-level success: 'action' = KALM's step_level_a (the push's ball and direction); 'state' = the "
        "goal ball moved >= 0.15 in the direction; 'state_any' = KALM's step_level_s (any ball did)."))
    easy_still: bool = Field(False, description="Include STILL ('do not move the X ball') goals in the easy level.")
    reward: Literal["kalm", "imaginebench"] = Field("kalm", description=(
        "'kalm' = KALM's data (10 x decrease of the distance to the target point, +100 on success); "
        "'imaginebench' = ImagineBench's BallEnv rewards."))
    goal_files: dict[str, str] = Field(default_factory=dict, description=(
        "Level -> goal file (.json in kalm-bench's format, or KALM's .npy prompt file) replacing the "
        "level's built-in goals. A .npy file is a pickle: it is accepted only when pickles are trusted on "
        "the command line (kalm-bench --trust-pickle, or KALM_BENCH_TRUST_PICKLE=1)."))
    compat_patches: bool = Field(True, description=(
        "Apply the two MuJoCo compatibility patches that reproduce KALM's dynamics (off = raw modern MuJoCo)."))
    expert_epsilon: float = Field(0.0, ge=0.0, le=1.0, description=(
        "Probability that the data-generating expert takes a uniformly random push."))

    @field_validator("goal_files")
    @classmethod
    def _known_levels(cls, value: dict[str, str]) -> dict[str, str]:
        levels = ("seen", "rephrase", "easy", "hard")
        bad = sorted(set(value) - set(levels))
        if bad:
            raise ValueError(f"goal_files has unknown level(s) {bad}; levels are {list(levels)}")
        if not pickle_trusted():
            for level, path in value.items():
                if is_pickled_goal_file(path):
                    raise _invalid((level,), f"{path} is a pickle, which can run code when loaded; to load "
                                   f"it, {TRUST_PICKLE_HINT}", path)
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_trust_from_files(cls, data: Any) -> Any:
        # Trusting a pickle is the choice of the person at the command line, never of a suite or include.
        if isinstance(data, dict) and "trust_pickle" in data:
            raise _invalid(("trust_pickle",), "not an env option: a suite cannot trust pickles; use the "
                           "command-line flag instead: kalm-bench --trust-pickle COMMAND ... (or "
                           "KALM_BENCH_TRUST_PICKLE=1)", data["trust_pickle"])
        return data
