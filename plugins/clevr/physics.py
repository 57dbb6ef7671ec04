"""CLEVR-Robot physics on the official ``mujoco`` bindings.

The scene is the MJCF that the original environment generates for five large rubber spheres and the
point-mass pusher (``clevr_robot_env/utils/xml_utils.py:convert_scene_to_xml``, agent ``pm``), written
out here with the same physics-relevant values and element order (rendering-only assets left out). It is
compiled once per process; an episode starts by writing ball positions into ``qpos``, which gives the
same trajectories as recompiling the XML per scene.

Two patches make MuJoCo >= 3.0 reproduce the dynamics of KALM's data (recorded under MuJoCo 2.x):

* A: the pusher's ``dof_invweight0`` / ``body_invweight0`` include the joint armature again (MuJoCo 3.0
  dropped it, which shortens every push);
* B: if this MuJoCo sums the two geoms' margins in a contact (3.5+), every geom margin is halved so the
  contact margin stays 0.002.

``mj_setConst`` would recompute invweight0 and undo patch A, so nothing here calls it.
"""

from __future__ import annotations

import functools
import json
import threading
import warnings
from pathlib import Path

import mujoco
import numpy as np

N_BALLS = 5
COLORS = ("red", "blue", "green", "purple", "cyan")
BALL_RADIUS = 0.13
BALL_Z = -0.325 + BALL_RADIUS
# Unnormalised, as in the original: diagonal pushes use a 0.8·√2 ≈ 1.13 N force and a 0.17 offset.
DIRECTIONS = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0],
                       [0.8, 0.8], [-0.8, 0.8], [0.8, -0.8], [-0.8, -0.8]])
N_ACTIONS = N_BALLS * len(DIRECTIONS)
PUSH_OFFSET = 0.15
PUSH_SUBSTEPS = 40  # int(frame_skip=20 × 2.0) steps of 0.01 s
PUSHER_START = (0.0, 0.0, -0.2)
# qpos indices of the balls' x, y (5 free joints of 7 qpos each), then the pusher's x, y slide joints.
OBS_QPOS = np.array([0, 1, 7, 8, 14, 15, 21, 22, 28, 29])
PUSHER_QPOS = np.array([35, 36])
PUSHER_QVEL = np.array([30, 31])
# Initial-scene sampler of the original (generate_scene.py: add_random_objects).
INIT_X = (-0.5, 0.5)
INIT_Y = (-0.3, 0.5)
INIT_MIN_DIST = 0.36
INIT_AXIS_MARGIN = 0.01
INIT_MAX_TRIES = 10
# Where ball centres can be once contacts have settled (walls at x = ±0.6, y = -0.3 / 0.7).
REACH_X = (-0.47, 0.47)
REACH_Y = (-0.17, 0.57)

_RGBA = {"red": "0.68 0.16 0.16 1", "blue": "0.16 0.29 0.84 1", "green": "0.11 0.41 0.08 1",
         "purple": "0.51 0.15 0.75 1", "cyan": "0.16 0.82 0.82 1"}


def scene_xml(positions: np.ndarray | None = None) -> str:
    """MJCF of the simulated scene with balls at ``positions`` ((5, 2); default: a fixed valid scene).

    Physics-relevant attributes and the order of bodies, geoms and joints follow the original generator;
    the walls keep its Euler angle of 1.57 (not π/2), so their normals tilt 8e-4 from horizontal.
    """
    if positions is None:
        positions = np.array([[-0.3, 0.0], [0.1, 0.0], [0.4, 0.3], [-0.3, 0.4], [0.05, 0.4]])
    balls = []
    for i, (x, y) in enumerate(np.asarray(positions, float).reshape(N_BALLS, 2).tolist()):
        balls.append(
            f'<body name="obj{i}" pos="{x!r} {y!r} {BALL_Z!r}">'
            f'<geom rgba="{_RGBA[COLORS[i]]}" type="sphere" size="{BALL_RADIUS} 0.05 0.05" density="1" '
            f'contype="1" conaffinity="1" material="rubber"/>'
            f'<joint name="obj{i}_slide" type="free" pos="0 0 0" damping="0.75" limited="false"/>'
            f'</body>')
    wall = ('<geom name="{name}" type="plane" pos="{pos}" size="2 2 0.1" contype="1" conaffinity="0" '
            'rgba="1 1 1 0" euler="{euler}"/>')
    walls = "".join(wall.format(name=n, pos=p, euler=e) for n, p, e in (
        ("left_plane", "-0.6 0.0 0.0", "0. 1.57 0."),
        ("right_plane", "0.6 0.0 0.0", "0. -1.57 0."),
        ("front_plane", "0.0 0.7 0.0", "1.57 0. 0."),
        ("behind_plane", "0.0 -0.3 0.0", "-1.57 0. 0."),
    ))
    px, py, pz = PUSHER_START
    return (
        '<mujoco model="clevr_robot">'
        '<compiler inertiafromgeom="true" angle="radian"/>'
        '<option timestep="0.01" gravity="0 0 -9.81" iterations="20" integrator="Euler"/>'
        '<default><joint armature="0.04" damping="1" limited="true"/>'
        '<geom friction=".8 .1 .1" density="300" margin="0.002" condim="3" contype="0" conaffinity="0"/>'
        '</default>'
        '<asset><material name="rubber" specular="0.0" shininess="0.1" reflectance="0.0"/></asset>'
        '<worldbody>'
        '<light diffuse=".5 .5 .5" pos="0 0 3" dir="0 0 -1"/>'
        '<geom name="table" type="plane" pos="0 0.5 -0.325" size="1 1 0.1" contype="1" conaffinity="1"/>'
        + walls + "".join(balls) +
        f'<body name="point_mass" pos="{px} {py} {pz}">'
        '<geom name="pm" type="sphere" rgba="1 1 1 1" size="0.05" contype="1" conaffinity="0" density="0.5"/>'
        '<joint name="pm_joint_x" type="slide" pos="0 0 0" axis="1 0 0" range="-10.3213 10.3" damping="0.5"/>'
        '<joint name="pm_joint_y" type="slide" pos="0 0 0" axis="0 1 0" range="-10.3213 10.3" damping="0.5"/>'
        '</body></worldbody>'
        '<actuator><motor joint="pm_joint_x" ctrlrange="-2.0 2.0" ctrllimited="true"/>'
        '<motor joint="pm_joint_y" ctrlrange="-2.0 2.0" ctrllimited="true"/></actuator>'
        '</mujoco>'
    )


def _patch_invweight(model: mujoco.MjModel) -> None:
    body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "point_mass")
    dofs = [model.jnt_dofadr[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n)]
            for n in ("pm_joint_x", "pm_joint_y")]
    w = 1.0 / (model.body_mass[body] + model.dof_armature[dofs[0]])
    model.dof_invweight0[dofs] = w
    model.body_invweight0[body, 0] = 2.0 / 3.0 * w


def _patch_margin(model: mujoco.MjModel) -> bool:
    """Halve geom margins when this MuJoCo adds both geoms' margins; True if it did."""
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    if data.ncon == 0:  # the default scene has balls resting on the table, so this does not happen
        raise RuntimeError("CLEVR-Robot margin probe found no contact")
    included = float(data.contact[0].includemargin)
    if abs(included - 2 * model.geom_margin[0]) < 1e-9:
        model.geom_margin[:] *= 0.5
        return True
    return False


class _ModelCache:
    lock = threading.Lock()
    models: dict[tuple[bool, bool, bool], tuple[mujoco.MjModel, dict[str, object]]] = {}


def get_model(patch: bool = True, dense: bool = True, patch_margin: bool = True) -> mujoco.MjModel:
    """The compiled, patched model, shared by every env of the process (treat it as read-only)."""
    key = (patch, dense, patch_margin)
    with _ModelCache.lock:
        if key not in _ModelCache.models:
            model = mujoco.MjModel.from_xml_string(scene_xml())
            halved = False
            if patch:
                _patch_invweight(model)
            if patch_margin:
                halved = _patch_margin(model)
            if dense:
                # Bitwise-identical results on this model and about 1.5x faster than the sparse default.
                model.opt.jacobian = mujoco.mjtJacobian.mjJAC_DENSE
            info = {"invweight_patch": patch, "margin_halved": halved}
            _ModelCache.models[key] = (model, info)
            if patch and patch_margin:
                err = self_check(model)
                info["self_check_error"] = err
                if not err <= SELF_CHECK_TOL:
                    warnings.warn(f"CLEVR-Robot physics on mujoco {mujoco.__version__} does not reproduce "
                                  f"KALM's data (self-check error {err:.3g} > {SELF_CHECK_TOL}); results will "
                                  "differ from the paper's dynamics", RuntimeWarning, stacklevel=2)
        return _ModelCache.models[key][0]


SELF_CHECK_FILE = Path(__file__).with_name("selfcheck.json")
SELF_CHECK_TOL = 1e-5


def self_check(model: mujoco.MjModel) -> float:
    """Largest error of three KALM dataset trajectories (start, actions → final state) replayed open-loop.

    These agree to 1e-7 with the patches; a future MuJoCo that changes contact semantics (as 3.0 and 3.5
    did) shows up here instead of silently changing every result.
    """
    spec = json.loads(SELF_CHECK_FILE.read_text())
    sim = ClevrSim(model)
    err = 0.0
    for traj in spec["trajectories"]:
        sim.reset(np.array(traj["initial_state"]))
        for a in traj["actions"]:
            pos = sim.step(a)
        err = max(err, float(np.max(np.abs(pos - np.array(traj["final_state"])))))
    return err


def model_info(patch: bool = True, dense: bool = True, patch_margin: bool = True) -> dict[str, object]:
    get_model(patch, dense, patch_margin)
    return dict(_ModelCache.models[(patch, dense, patch_margin)][1])


class ClevrSim:
    """One CLEVR-Robot simulation: reset to ball positions, push balls, read the 10 coordinates.

    ``scene`` is the original env's cached "scene graph" of ball positions that a push aims at. It is
    refreshed from the simulation after every push; after a reset it holds the reset positions, or
    whatever :meth:`reset` is given as ``aim`` (used to reproduce KALM's stale-scene evaluation).
    """

    def __init__(self, model: mujoco.MjModel | None = None):
        self.model = model if model is not None else get_model()
        self.data = mujoco.MjData(self.model)
        self.scene = np.zeros((N_BALLS, 2))
        self._qpos0 = self.model.qpos0.copy()

    # -- state ------------------------------------------------------------------------------------------
    def reset(self, positions: np.ndarray, aim: np.ndarray | None = None) -> np.ndarray:
        """Balls at ``positions`` (10 numbers) resting on the table at rest; the pusher at its origin."""
        pos = np.asarray(positions, np.float64).reshape(N_BALLS, 2)
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        qpos = self._qpos0.copy()
        for i in range(N_BALLS):
            qpos[7 * i: 7 * i + 7] = (pos[i, 0], pos[i, 1], BALL_Z, 1.0, 0.0, 0.0, 0.0)
        qpos[PUSHER_QPOS] = 0.0
        d.qpos[:] = qpos
        mujoco.mj_forward(m, d)
        self.scene = (pos if aim is None else np.asarray(aim, np.float64).reshape(N_BALLS, 2)).copy()
        return self.positions()

    def positions(self) -> np.ndarray:
        return self.data.qpos[OBS_QPOS].copy()

    def get_state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Everything a push depends on: (qpos, qvel, scene)."""
        return self.data.qpos.copy(), self.data.qvel.copy(), self.scene.copy()

    def set_state(self, state: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        qpos, qvel, scene = state
        self.data.qpos[:] = qpos
        self.data.qvel[:] = qvel
        self.scene = scene.copy()

    # -- dynamics ---------------------------------------------------------------------------------------
    def step(self, action: int) -> np.ndarray:
        """One push primitive; returns the 10 ball coordinates afterwards."""
        self.prepare_push(action)
        mujoco.mj_step(self.model, self.data, nstep=PUSH_SUBSTEPS)
        return self.finish_push()

    def prepare_push(self, action: int) -> None:
        """Teleport the pusher behind the ball and set the force (everything before the 40 steps)."""
        a = int(action)
        if not 0 <= a < N_ACTIONS:
            raise ValueError(f"action {action!r} is outside [0, {N_ACTIONS})")
        ball, direction = divmod(a, len(DIRECTIONS))
        vec = DIRECTIONS[direction]
        m, d = self.model, self.data
        push_start = self.scene[ball] - PUSH_OFFSET * vec
        qpos = d.qpos.copy()
        # The original moves the pusher by (push start - its body position); the body sits at x = y = 0
        # plus its slide joints, so that position is exactly the joints' qpos (and stays valid after
        # set_state, unlike a cached xpos).
        pusher_xy = qpos[PUSHER_QPOS]
        qvel = d.qvel.copy()
        qpos[PUSHER_QPOS] = qpos[PUSHER_QPOS] + (push_start - pusher_xy)
        qvel[PUSHER_QVEL] = 0.0
        # dm_control's set_state runs inside reset_context(): mj_resetData (zeroing time, ctrl and the
        # solver warm start), write qpos/qvel, mj_forward. Skipping the reset changes results at 1e-5.
        mujoco.mj_resetData(m, d)
        d.qpos[:] = qpos
        d.qvel[:] = qvel
        mujoco.mj_forward(m, d)
        d.ctrl[:] = vec

    def finish_push(self) -> np.ndarray:
        m, d = self.model, self.data
        # dm_control's legacy step leaves kinematics in sync, and the original refreshes its scene graph
        # from subtree_com (equal to qpos xy up to rounding for a free sphere); do the same.
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        self.scene = d.subtree_com[1:1 + N_BALLS, :2].copy()
        return self.positions()


# ---------------------------------------------------------------------------------------------------------
# Initial scenes


def sample_scene(rng: np.random.Generator) -> np.ndarray:
    """Ball positions (10 numbers) from the original initial-state distribution.

    Uniform x ∈ [-0.5, 0.5], y ∈ [-0.3, 0.5]; centres at least 0.36 apart; no two balls axis-aligned
    within 1 cm; the whole scene is redrawn after 10 failed tries for one ball.
    """
    while True:
        placed: list[tuple[float, float]] = []
        ok = True
        for _ in range(N_BALLS):
            for _try in range(INIT_MAX_TRIES):
                x = float(rng.uniform(*INIT_X))
                y = float(rng.uniform(*INIT_Y))
                good = True
                for px, py in placed:
                    dx, dy = x - px, y - py
                    if dx * dx + dy * dy < INIT_MIN_DIST ** 2:
                        good = False
                        break
                    if 0 < abs(dx) < INIT_AXIS_MARGIN or 0 < abs(dy) < INIT_AXIS_MARGIN:
                        good = False
                        break
                if good:
                    placed.append((x, y))
                    break
            else:
                ok = False
                break
        if ok:
            return np.array(placed, np.float64).reshape(-1)


@functools.lru_cache(maxsize=1)
def mujoco_version() -> str:
    return mujoco.__version__
