"""Random street layouts for the synthetic generator: what stands where and how it moves.

World frame (metres): ``x`` to the right, ``h`` height above the road, ``z`` forward along the
street. The road is centred on ``x = 0``; traffic drives on the right (ego lanes at ``x > 0``). A
scene is drawn once per sequence from a seeded generator and is then a pure function of time, so
frames and their ground truth are reproducible from the seed alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from video_seg_ros.labels import CITYSCAPES

#: Cityscapes trainIds by name (labels.CITYSCAPES order), so the renderer reads as the class names.
TRAIN_ID = {name: index for index, name in enumerate(CITYSCAPES.names)}

LANE_WIDTH = 3.5
#: Street length laid out per scene (metres). Fixed, so that a seed gives the same street whatever
#: the sequence length: a short sequence is a prefix of a longer one (up to this much travel).
LAYOUT_LENGTH = 1000.0


@dataclass
class Camera:
    """Pinhole camera looking along +z without rotation, moving at constant speed."""

    focal_px: float
    cx: float
    cy: float
    height: float  # metres above the road
    lane_x: float  # mean lateral position
    speed: float  # m/s along +z
    sway_amplitude: float  # lateral sway, metres
    sway_period: float  # seconds
    bob_amplitude: float  # vertical bob, metres

    def pose(self, time: float) -> tuple[float, float, float]:
        """(x, h, z) of the camera centre at ``time`` seconds."""
        phase = 2 * np.pi * time / self.sway_period
        return (
            self.lane_x + self.sway_amplitude * np.sin(phase),
            self.height + self.bob_amplitude * np.sin(2.7 * phase),
            self.speed * time,
        )


@dataclass
class Facades:
    """Building fronts on one side of the street: segments along z on the plane x = side *
    offset."""

    side: int  # -1 left, +1 right
    offset: float  # |x| of the facade plane
    starts: np.ndarray  # (S,) segment start z, sorted (a segment ends where the next starts)
    heights: np.ndarray  # (S,) metres; 0 for a gap
    kinds: np.ndarray  # (S,) trainId of the segment (building / wall / fence / 255 gap)
    colours: np.ndarray  # (S, 3) facade colour
    window_pitch: np.ndarray  # (S, 2) window spacing along z and floor height
    window_fill: np.ndarray  # (S, 2) fraction of the pitch that is glass (z, h)
    tree_line_offset: float  # |x| of the vegetation plane behind the buildings
    tree_line_phase: np.ndarray  # (3,) phases of the tree-line height wobble


@dataclass
class Mover:
    """A rigid object translating at constant velocity: a vehicle, pedestrian, cyclist or prop."""

    kind: str  # car, truck, bus, person, cyclist, pole, sign, light, tree
    x: float  # centre x at time 0
    z: float  # near-face z at time 0 (for props: their z)
    vx: float
    vz: float
    width: float
    height: float
    length: float
    colour: np.ndarray
    colour2: np.ndarray
    variant: int = 0  # shape variant (sign shape, car body style, ...)
    salt: int = 0  # texture salt

    def position(self, time: float) -> tuple[float, float]:
        return self.x + self.vx * time, self.z + self.vz * time


@dataclass
class Scene:
    """Everything in one synthetic sequence (see :func:`random_scene`)."""

    seed: int
    camera: Camera
    road_half_width: float
    lane_lines: tuple[float, ...]  # x of dashed lane dividers
    parking: tuple[bool, bool]  # (left, right) parking strip inside the road edge
    sidewalk_width: float
    sidewalk_colour: np.ndarray
    road_colour: np.ndarray
    sky_top: np.ndarray
    sky_horizon: np.ndarray
    cloudiness: float
    facades: tuple[Facades, Facades]
    crosswalks: np.ndarray  # (K,) z of zebra crossings
    movers: list[Mover] = field(default_factory=list)
    sun_side: int = 1  # which facade side is lit
    exposure: float = 1.0
    white_balance: np.ndarray = field(default_factory=lambda: np.ones(3))


_FACADE_COLOURS = np.array(
    [
        (185, 170, 150),
        (160, 150, 140),
        (200, 195, 185),
        (150, 95, 80),
        (120, 115, 110),
        (210, 190, 160),
        (170, 160, 120),
        (140, 140, 150),
        (225, 220, 210),
        (110, 90, 80),
    ],
    dtype=np.float32,
)
_VEHICLE_COLOURS = np.array(
    [
        (30, 30, 35),
        (200, 200, 205),
        (150, 150, 155),
        (20, 40, 90),
        (130, 20, 25),
        (235, 235, 235),
        (60, 60, 65),
        (40, 70, 50),
        (170, 140, 90),
        (90, 100, 120),
    ],
    dtype=np.float32,
)
_CLOTHES = np.array(
    [
        (30, 30, 40),
        (60, 60, 70),
        (140, 30, 30),
        (30, 60, 120),
        (200, 200, 190),
        (90, 70, 50),
        (40, 90, 60),
        (180, 150, 100),
        (20, 20, 20),
        (120, 120, 130),
    ],
    dtype=np.float32,
)


def random_scene(seed: int, duration: float, width: int, height: int) -> Scene:
    """Draw a street for a sequence of ``duration`` seconds seen at ``width`` x ``height``
    pixels."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    # Intrinsics scale with the width so every resolution shows the same view (Cityscapes-like
    # FOV).
    camera = Camera(
        focal_px=width * rng.uniform(1.0, 1.2),
        cx=width / 2 + rng.uniform(-0.02, 0.02) * width,
        cy=height * rng.uniform(0.40, 0.47),
        height=rng.uniform(1.2, 1.6),
        lane_x=LANE_WIDTH / 2 + rng.uniform(-0.3, 0.3),
        speed=rng.uniform(6.0, 13.0),
        sway_amplitude=rng.uniform(0.0, 0.25),
        sway_period=rng.uniform(3.0, 8.0),
        bob_amplitude=rng.uniform(0.0, 0.03),
    )
    parking = (bool(rng.random() < 0.6), bool(rng.random() < 0.6))
    lanes_per_side = 2
    road_half = lanes_per_side * LANE_WIDTH
    road_half_width = road_half + (2.4 if any(parking) else 0.0)
    sidewalk_width = rng.uniform(2.5, 5.0)
    layout_length = max(LAYOUT_LENGTH, camera.speed * duration)
    z_far = layout_length + 260.0
    facades = tuple(
        _random_facades(rng, side, road_half_width + sidewalk_width, z_far) for side in (-1, 1)
    )
    overcast = rng.random() < 0.5
    sky_top = np.array((150, 165, 185) if overcast else (70, 120, 195), np.float32) + rng.uniform(
        -15, 15, 3
    )
    sky_horizon = np.array(
        (205, 210, 215) if overcast else (180, 200, 225), np.float32
    ) + rng.uniform(-10, 10, 3)
    scene = Scene(
        seed=int(seed),
        camera=camera,
        road_half_width=road_half_width,
        lane_lines=(-LANE_WIDTH, 0.0, LANE_WIDTH),
        parking=parking,
        sidewalk_width=sidewalk_width,
        sidewalk_colour=np.array(
            rng.choice([(165, 160, 155), (175, 140, 130), (140, 140, 140)]), np.float32
        ),
        road_colour=np.array((92, 92, 98), np.float32) + rng.uniform(-12, 12),
        sky_top=sky_top,
        sky_horizon=sky_horizon,
        cloudiness=rng.uniform(0.0, 1.0),
        facades=facades,
        crosswalks=np.sort(rng.uniform(20, z_far, size=rng.poisson(layout_length / 120))).astype(
            np.float32
        ),
        sun_side=int(rng.choice([-1, 1])),
        exposure=rng.uniform(0.85, 1.15),
        white_balance=rng.uniform(0.93, 1.07, 3).astype(np.float32),
    )
    scene.movers = _random_movers(rng, scene, layout_length / camera.speed, z_far)
    return scene


def _random_facades(rng, side: int, offset: float, z_far: float) -> Facades:
    starts, heights, kinds = [], [], []
    z = -40.0
    while z < z_far:
        gap = rng.random() < 0.18
        length = rng.uniform(6, 14) if gap else rng.uniform(8, 30)
        starts.append(z)
        if gap:
            kind = rng.choice([255, TRAIN_ID["fence"], TRAIN_ID["wall"]], p=[0.5, 0.3, 0.2])
            heights.append(0.0 if kind == 255 else rng.uniform(1.0, 2.2))
            kinds.append(int(kind))
        else:
            heights.append(rng.uniform(8, 24))
            kinds.append(TRAIN_ID["building"])
        z += length
    count = len(starts)
    colours = _FACADE_COLOURS[rng.integers(0, len(_FACADE_COLOURS), count)] + rng.uniform(
        -12, 12, (count, 3)
    )
    kinds_array = np.array(kinds, np.int32)
    colours[kinds_array == TRAIN_ID["fence"]] = (120, 110, 95)
    colours[kinds_array == TRAIN_ID["wall"]] = (150, 145, 135)
    return Facades(
        side=side,
        offset=offset + rng.uniform(0.0, 1.5),
        starts=np.array(starts, np.float32),
        heights=np.array(heights, np.float32),
        kinds=kinds_array,
        colours=colours.astype(np.float32),
        window_pitch=np.stack(
            [rng.uniform(2.0, 3.5, count), rng.uniform(2.8, 3.6, count)], 1
        ).astype(np.float32),
        window_fill=np.stack(
            [rng.uniform(0.35, 0.6, count), rng.uniform(0.4, 0.6, count)], 1
        ).astype(np.float32),
        tree_line_offset=offset + rng.uniform(6.0, 14.0),
        tree_line_phase=rng.uniform(0, 2 * np.pi, 3).astype(np.float32),
    )


def _random_movers(rng, scene: Scene, duration: float, z_far: float) -> list[Mover]:
    camera = scene.camera
    movers: list[Mover] = []
    travel = camera.speed * duration

    def vehicle(x, z, vz, parked=False):
        roll = rng.random()
        if roll < 0.08 and not parked:
            kind, w, h, length = "bus", 2.5, 3.1, 11.0
        elif roll < 0.16:
            kind, w, h, length = "truck", 2.4, rng.uniform(2.6, 3.4), rng.uniform(6, 9)
        else:
            kind, w, h, length = (
                "car",
                rng.uniform(1.7, 1.9),
                rng.uniform(1.4, 1.6),
                rng.uniform(4.0, 4.8),
            )
        colour = _VEHICLE_COLOURS[rng.integers(0, len(_VEHICLE_COLOURS))] + rng.uniform(-10, 10, 3)
        if kind == "bus":
            colour = np.array(
                rng.choice([(230, 200, 40), (200, 30, 30), (240, 240, 235)]), np.float32
            )
        return Mover(
            kind,
            x,
            z,
            0.0,
            vz,
            w,
            h,
            length,
            colour.astype(np.float32),
            np.array((40, 45, 55), np.float32),
            variant=int(rng.integers(0, 3)),
            salt=int(rng.integers(0, 1 << 20)),
        )

    # Lanes: (x, speed). Ego direction at x > 0, oncoming at x < 0.
    ego_lane_x = LANE_WIDTH / 2
    lanes = [
        (ego_lane_x, camera.speed + rng.uniform(0.3, 2.5)),
        (ego_lane_x + LANE_WIDTH, camera.speed + rng.uniform(-4.0, 3.0)),
        (-ego_lane_x, -rng.uniform(7.0, 13.0)),
        (-ego_lane_x - LANE_WIDTH, -rng.uniform(7.0, 13.0)),
    ]
    for lane_index, (x, speed) in enumerate(lanes):
        # Same-direction traffic never catches the camera: ego-lane cars start well ahead.
        z = rng.uniform(10, 25) if lane_index == 0 else rng.uniform(-25, 10)
        z_end = z_far + max(0.0, -speed) * duration
        while z < z_end:
            if rng.random() < (0.55 if lane_index else 0.7):
                movers.append(vehicle(x + rng.uniform(-0.25, 0.25), z, speed))
            z += rng.uniform(12, 45)
    for side, has_parking in zip((-1, 1), scene.parking):
        if not has_parking:
            continue
        z = rng.uniform(-10, 10)
        while z < z_far:
            if rng.random() < 0.7:
                movers.append(vehicle(side * (2 * LANE_WIDTH + 1.2), z, 0.0, parked=True))
            z += rng.uniform(5.0, 9.0)

    kerb = scene.road_half_width
    for side in (-1, 1):
        # Street furniture on the kerb side of the sidewalk.
        z = rng.uniform(-5, 15)
        while z < z_far:
            movers.append(
                Mover(
                    "pole",
                    side * (kerb + 0.5),
                    z,
                    0,
                    0,
                    0.18,
                    rng.uniform(6.5, 8.5),
                    0,
                    np.array((115, 118, 120), np.float32),
                    np.zeros(3, np.float32),
                    salt=int(rng.integers(0, 1 << 20)),
                )
            )
            z += rng.uniform(18, 32)
        z = rng.uniform(0, 20)
        while z < z_far:
            movers.append(
                Mover(
                    "sign",
                    side * (kerb + 0.35),
                    z,
                    0,
                    0,
                    0.6,
                    rng.uniform(2.2, 2.8),
                    0,
                    np.array(
                        rng.choice([(200, 30, 30), (30, 70, 170), (240, 200, 40)]), np.float32
                    ),
                    np.array((235, 235, 235), np.float32),
                    variant=int(rng.integers(0, 3)),
                )
            )
            z += rng.uniform(25, 70)
        z = rng.uniform(0, 40)
        while z < z_far:
            movers.append(
                Mover(
                    "light",
                    side * (kerb + 0.4),
                    z,
                    0,
                    0,
                    0.35,
                    3.6,
                    0,
                    np.array((35, 38, 35), np.float32),
                    np.zeros(3, np.float32),
                    variant=int(rng.integers(0, 3)),
                )
            )
            z += rng.uniform(50, 120)
        z = rng.uniform(-5, 10)
        while z < z_far:
            if rng.random() < 0.7:
                crown = rng.uniform(2.5, 5.0)
                movers.append(
                    Mover(
                        "tree",
                        side * (kerb + scene.sidewalk_width - rng.uniform(0.6, 1.2)),
                        z,
                        0,
                        0,
                        crown,
                        crown + rng.uniform(2.5, 4.5),
                        0,
                        np.array((70, 105, 40), np.float32) + rng.uniform(-20, 20, 3),
                        np.array((85, 70, 55), np.float32),
                        salt=int(rng.integers(0, 1 << 20)),
                    )
                )
            z += rng.uniform(8, 20)
        # Pedestrians walking along the sidewalk, some in small groups.
        for _ in range(int(rng.integers(4, 14) * travel / 150)):
            z = rng.uniform(0, travel + 80)
            speed = rng.choice([-1, 1]) * rng.uniform(0.8, 1.8)
            for member in range(int(rng.integers(1, 4))):
                x = side * (kerb + rng.uniform(0.4, scene.sidewalk_width - 0.3))
                movers.append(_person(rng, x, z + member * rng.uniform(0.4, 1.2), 0.0, speed))
    # People on zebra crossings, crossing the road.
    for crossing_z in scene.crosswalks:
        for _ in range(int(rng.integers(0, 5))):
            direction = rng.choice([-1, 1])
            movers.append(
                _person(
                    rng,
                    -direction * rng.uniform(2, kerb),
                    crossing_z + rng.uniform(0.5, 3.5),
                    direction * rng.uniform(0.9, 1.6),
                    0.0,
                )
            )
    # Cyclists near the right kerb, slower than the camera (it overtakes them).
    for _ in range(int(rng.integers(0, 4) * travel / 150)):
        x = 2 * LANE_WIDTH - 0.7 if not scene.parking[1] else 2 * LANE_WIDTH - 0.5
        movers.append(
            Mover(
                "cyclist",
                x,
                rng.uniform(8, travel + 60),
                0,
                rng.uniform(3.0, 6.5),
                0.6,
                1.8,
                1.75,
                _CLOTHES[rng.integers(0, len(_CLOTHES))].copy(),
                np.array(rng.choice([(30, 30, 30), (150, 20, 20), (40, 60, 140)]), np.float32),
                variant=int(rng.random() < 0.25),
                salt=int(rng.integers(0, 1 << 20)),
            )
        )
    return movers


def _person(rng, x: float, z: float, vx: float, vz: float) -> Mover:
    top = _CLOTHES[rng.integers(0, len(_CLOTHES))] + rng.uniform(-10, 10, 3)
    bottom = _CLOTHES[rng.integers(0, len(_CLOTHES))] + rng.uniform(-10, 10, 3)
    return Mover(
        "person",
        x,
        z,
        vx,
        vz,
        rng.uniform(0.45, 0.6),
        rng.uniform(1.55, 1.9),
        0.3,
        top.astype(np.float32),
        bottom.astype(np.float32),
        variant=int(rng.integers(0, 2)),
        salt=int(rng.integers(0, 1 << 20)),
    )
