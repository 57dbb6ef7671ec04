"""Meta-world v3 simulators for KALM's 24 tasks, including the two new composite tasks.

Imports mujoco and metaworld at module level: only import this module from inside functions.

* Every task is built from metaworld's *base* v3 class (not the ``-goal-observable`` wrapper class, whose
  ``__init__`` cannot be subclassed) with the goal made observable by hand, ``max_path_length`` lifted (our
  wrapper owns the horizon) and the random reset vector drawn from the env's own seeded ``np_random``.
* Compiling a task's MJCF costs 0.15–0.4 s; a copy of an already compiled ``MjModel`` costs ~15 ms, so
  models are compiled once per process and copied per env (each env gets its own copy because reset
  code writes ``model.body(...).pos``).
* ``make-coffee``: coffee-push scene; push the mug to its spot under the spout, then press the machine's
  button. Success needs the button pressed (within 0.02 m of the pressed position in y, the coffee-button
  criterion) *while the mug is in place* (within 0.07 m of its spot, the coffee-push criterion).
* ``locked-door-open``: door-lock scene with a door hinge added through ``mujoco.MjSpec`` (z axis, range
  −2..0 rad at the door's hinge barrels, light damping) and joints addressed by name; the lock starts
  locked and the door closed. The model has no bolt geometry that meets the frame, so the lock acts as a
  latch on the hinge's range until the lever is turned down to ``UNLOCK_ANGLE``. Success: the lock
  turned open (door-unlock criterion) and then the door swung open by at least ``OPEN_ANGLE`` rad.
"""

from __future__ import annotations

import copy
from typing import Any

import mujoco
import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS
from metaworld.envs.sawyer_coffee_push_v3 import SawyerCoffeePushEnvV3
from metaworld.envs.sawyer_door_unlock_v3 import SawyerDoorUnlockEnvV3
from metaworld.utils import reward_utils
from scipy.spatial.transform import Rotation

from .tasks import ALL_TASKS, COMPOSITE_TASKS

_MODEL_CACHE: dict[str, mujoco.MjModel] = {}

# make-coffee geometry (coffee-button-v3's own offsets from the machine body)
BUTTON_FROM_MACHINE = np.array([0.0, -0.22, 0.3])
BUTTON_TRAVEL = 0.03
MUG_SUCCESS = 0.07  # coffee-push criterion
BUTTON_SUCCESS = 0.02  # coffee-button criterion
# locked-door-open
UNLOCK_SUCCESS = 0.02  # door-unlock criterion on the lock site's x
UNLOCK_ANGLE = 0.6  # rad; the unlock criterion is met at 0.45-0.55 rad (fully locked: 1.57)
OPEN_ANGLE = 0.7  # rad (~40 deg) the door must swing towards the robot


class _CachedModel:
    """Mixin: compile each MJCF once per process, give every env its own copy."""

    def _compile(self) -> mujoco.MjModel:
        return mujoco.MjModel.from_xml_path(self.fullpath)

    def _initialize_simulation(self):  # overrides gymnasium's MujocoEnv
        key = f"{type(self).__qualname__}:{self.fullpath}"
        model = _MODEL_CACHE.get(key)
        if model is None:
            model = self._compile()
            _MODEL_CACHE[key] = model
        model = copy.copy(model)
        return model, mujoco.MjData(model)


def _widen_goal_space(env, low, high) -> None:
    # step() clips observations into a box built from goal_space; stage-2 goals must survive the clip
    from gymnasium.spaces import Box

    env.goal_space = Box(np.minimum(env.goal_space.low, low), np.maximum(env.goal_space.high, high),
                         dtype=np.float64)
    env.__dict__.pop("sawyer_observation_space", None)


class MakeCoffeeEnv(_CachedModel, SawyerCoffeePushEnvV3):
    """Push the mug under the spout, then press the coffee machine's button."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        _widen_goal_space(self, np.array([-0.2, 0.6, -0.01]), np.array([0.2, 1.0, 0.4]))

    def reset_model(self):
        self.stage = 0
        super().reset_model()
        machine = self.model.body("coffee_machine").pos.copy()
        self._button_target = machine + BUTTON_FROM_MACHINE + np.array([0.0, BUTTON_TRAVEL, 0.0])
        self._button_tcp_init = None
        return self._get_obs()

    def _get_pos_objects(self):
        return np.hstack((self.get_body_com("obj"), self._get_site_pos("buttonStart")))

    def _get_quat_objects(self):
        mug = Rotation.from_matrix(self.data.geom("mug").xmat.reshape(3, 3)).as_quat()
        return np.hstack((mug, [1.0, 0.0, 0.0, 0.0]))

    def _get_pos_goal(self):
        if getattr(self, "stage", 0) == 0 or not hasattr(self, "_button_target"):
            return self._target_pos
        return self._button_target

    def evaluate_state(self, obs, action):
        push_reward, _, _, mug_to_goal, _, _ = self.compute_reward(action, obs)
        mug_ok = mug_to_goal <= MUG_SUCCESS
        if self.stage == 0 and mug_ok:
            self.stage = 1
        button = obs[11:14]
        press_err = abs(self._button_target[1] - button[1])
        pressed = press_err <= BUTTON_SUCCESS
        if self.stage == 0:
            reward = 0.5 * push_reward
        else:
            tcp = self.tcp_center
            if self._button_tcp_init is None:
                self._button_tcp_init = tcp.copy()
            tcp_to_button = float(np.linalg.norm(button - tcp))
            near = reward_utils.tolerance(tcp_to_button, bounds=(0, 0.05),
                                          margin=max(float(np.linalg.norm(button - self._button_tcp_init)), 1e-6),
                                          sigmoid="long_tail")
            press = reward_utils.tolerance(press_err, bounds=(0, 0.005), margin=BUTTON_TRAVEL,
                                           sigmoid="long_tail")
            reward = 5.0 + 2.5 * near + (2.5 * press if tcp_to_button <= 0.05 else 0.0)
        success = bool(self.stage == 1 and pressed and mug_ok)
        return float(reward), {"success": float(success), "stage": int(self.stage),
                               "obj_to_target": float(mug_to_goal), "button_error": float(press_err),
                               "unscaled_reward": float(reward)}


class LockedDoorOpenEnv(_CachedModel, SawyerDoorUnlockEnvV3):
    """Turn the lock open, then pull the door open (door-lock scene with a working door hinge)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        _widen_goal_space(self, np.array([-0.6, 0.3, 0.0]), np.array([0.6, 1.0, 0.4]))

    def _compile(self) -> mujoco.MjModel:
        spec = mujoco.MjSpec.from_file(self.fullpath)
        door = spec.body("door_link")
        door.add_joint(name="doorjoint", type=mujoco.mjtJoint.mjJNT_HINGE, axis=[0, 0, 1],
                       range=[-2.0, 0.0], limited=mujoco.mjtLimited.mjLIMITED_TRUE, damping=0.5,
                       armature=0.01)
        lock = spec.body("lock_link")
        lock.first_joint().name = "lockjoint"
        for geom in door.geoms:
            if geom.meshname == "door_handle":
                geom.name = "handle"
        return spec.compile()

    def _joint_adr(self, name: str) -> tuple[int, int]:
        j = self.model.joint(name)
        return int(j.qposadr.item()), int(j.dofadr.item())

    def _set_joints(self, lock: float, door: float) -> None:
        qpos = self.data.qpos.flat.copy()
        qvel = self.data.qvel.flat.copy()
        for name, value in (("lockjoint", lock), ("doorjoint", door)):
            qa, da = self._joint_adr(name)
            qpos[qa] = value
            qvel[da] = 0.0
        self.set_state(qpos, qvel)

    def _set_obj_xyz(self, pos):  # door-unlock's reset writes the lock angle through this
        self._set_joints(lock=float(np.asarray(pos).item()), door=0.0)

    def _latch(self) -> None:
        # The door-lock model has no bolt geometry that meets the frame, so the lock is a latch on the
        # door hinge's range: the door cannot swing until the lever is turned down to UNLOCK_ANGLE.
        qa, _ = self._joint_adr("lockjoint")
        jid = self.model.joint("doorjoint").id
        locked = self.data.qpos[qa] > UNLOCK_ANGLE
        self.model.jnt_range[jid] = (-0.002, 0.0) if locked else (-2.0, 0.0)

    def step(self, action):
        self._latch()
        return super().step(action)

    def reset_model(self):
        self.stage = 0
        super().reset_model()  # door position from the random vector, lock at 1.5708 (locked)
        mujoco.mj_forward(self.model, self.data)
        self._latch()
        self.obj_init_pos = self._get_site_pos("lockStartUnlock")
        self._target_pos = self.obj_init_pos + np.array([0.1, -0.04, 0.0])
        self._unlock_target = self._target_pos.copy()
        self._handle_init = self.data.geom("handle").xpos.copy()
        hinge = self.data.body("door_link").xpos.copy()
        self._hinge = hinge
        # where the handle is when the door is open by OPEN_ANGLE (rotation about the hinge's z axis)
        rel = self._handle_init - hinge
        c, s = np.cos(-OPEN_ANGLE), np.sin(-OPEN_ANGLE)
        self._open_target = hinge + np.array([c * rel[0] - s * rel[1], s * rel[0] + c * rel[1], rel[2]])
        return self._get_obs()

    def door_angle(self) -> float:
        qa, _ = self._joint_adr("doorjoint")
        return float(self.data.qpos[qa])

    def _get_pos_objects(self):
        return np.hstack((self._get_site_pos("lockStartUnlock"), self.data.geom("handle").xpos.copy()))

    def _get_quat_objects(self):
        handle = Rotation.from_matrix(self.data.geom("handle").xmat.reshape(3, 3)).as_quat()
        return np.hstack((self.data.body("door_link").xquat, handle))

    def _get_pos_goal(self):
        if getattr(self, "stage", 0) == 0 or not hasattr(self, "_open_target"):
            return self._target_pos
        return self._open_target

    @property
    def _target_site_config(self):
        return [("goal_unlock", self._unlock_target if hasattr(self, "_unlock_target") else self._target_pos),
                ("goal_lock", np.array([10.0, 10.0, 10.0]))]

    def evaluate_state(self, obs, action):
        unlock_reward, *_ = self.compute_reward(action, obs)
        lock_err = abs(float(self._unlock_target[0] - obs[4]))
        unlocked = lock_err <= UNLOCK_SUCCESS
        if self.stage == 0 and unlocked:
            self.stage = 1
        angle = -self.door_angle()
        if self.stage == 0:
            reward = 0.5 * unlock_reward
        else:
            handle = obs[11:14]
            tcp_to_handle = float(np.linalg.norm(handle - self.tcp_center))
            near = reward_utils.tolerance(tcp_to_handle, bounds=(0, 0.03), margin=0.3, sigmoid="long_tail")
            opened = reward_utils.tolerance(OPEN_ANGLE - angle, bounds=(-np.inf, 0.0), margin=OPEN_ANGLE,
                                            sigmoid="long_tail")
            reward = 5.0 + 1.0 * near + 4.0 * opened
        success = bool(self.stage == 1 and angle >= OPEN_ANGLE)
        return float(reward), {"success": float(success), "stage": int(self.stage),
                               "obj_to_target": lock_err, "door_angle": angle,
                               "unscaled_reward": float(reward)}


_CLASSES: dict[str, type] = {"make-coffee": MakeCoffeeEnv, "locked-door-open": LockedDoorOpenEnv}


def env_class(task: str) -> type:
    """The (cached-model) metaworld class that simulates ``task``."""
    if task in _CLASSES:
        return _CLASSES[task]
    if task not in ALL_TASKS:
        raise KeyError(f"unknown Meta-world task {task!r}")
    base = ALL_V3_ENVIRONMENTS[f"{task}-v3"]
    cls = type(f"Kalm{base.__name__}", (_CachedModel, base), {"__module__": __name__})
    _CLASSES[task] = cls
    return cls


def build(task: str) -> Any:
    """A goal-observable v3 env for ``task``: random reset vector from ``env.np_random``, no step limit."""
    env = env_class(task)()
    env._partially_observable = False
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    env.__dict__.pop("sawyer_observation_space", None)  # cached with the goal hidden
    env._set_task_called = True
    env.max_path_length = 1 << 30
    env.seed(0)
    return env


def is_composite(task: str) -> bool:
    return task in COMPOSITE_TASKS


def reset_sim(env: Any, rand_vec: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Reset to ``rand_vec`` (or a fresh draw from ``rng``); returns the 39-d obs with fresh positions.

    metaworld's ``reset`` reads some object sites before the physics is forwarded (window, faucet:
    up to 0.2 m stale), so the observation is re-read after ``mj_forward``.
    """
    if rand_vec is None:
        env._freeze_rand_vec = False
        env.np_random = rng
    else:
        env._freeze_rand_vec = True
        env._last_rand_vec = np.asarray(rand_vec, np.float64)
    env.reset()
    mujoco.mj_forward(env.model, env.data)
    cur = env._get_curr_obs_combined_no_goal()
    env._prev_obs = cur
    return np.hstack((cur, cur, env._get_pos_goal())).astype(np.float64)
