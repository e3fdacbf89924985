"""Ray-cast renderer for :mod:`video_seg_ros.synthetic.scene`: colour, trainIds, depth and true
flow.

The camera never rotates, so a pixel's ray is ``(dx(u), dh(v), 1)`` and everything large is
separable: the road's depth depends on the row only, a facade's depth on the column only. Objects
are planar pieces (faces toward the camera, or side faces on planes ``x = const``) painted into
their bounding boxes with a depth test. Because every surface point is known in 3-D together with
its velocity, the optical flow to the next frame is exact: project ``P + V dt`` with the next pose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from video_seg_ros.labels import IGNORE_ID
from video_seg_ros.synthetic.scene import TRAIN_ID, Mover, Scene

NEAR = 0.5  # metres; nothing closer is drawn
FAR_DRAW = 320.0  # metres; objects beyond are not drawn (sub-pixel anyway)
HAZE_DISTANCE = 260.0


@dataclass
class RenderedView:
    """One rendered frame before camera effects.

    ``rgb`` float32 (H, W, 3) 0..255; ``labels`` uint8 trainIds; ``depth`` float32 metres along z
    (inf for sky); ``velocity`` float32 (H, W, 2) world (vx, vz) of the surface; ``camera_fixed``
    bool, pixels that move with the camera (ego vehicle).
    """

    rgb: np.ndarray
    labels: np.ndarray
    depth: np.ndarray
    velocity: np.ndarray
    camera_fixed: np.ndarray
    pose: tuple[float, float, float]


def hash01(ix: np.ndarray, iy: np.ndarray, salt: int = 0) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer lattice point (vectorised)."""
    # uint32 arithmetic wraps around, which is exactly the integer hash we want.
    h = (
        (np.asarray(ix).astype(np.int64).astype(np.uint32) * np.uint32(73856093))
        ^ (np.asarray(iy).astype(np.int64).astype(np.uint32) * np.uint32(19349663))
        ^ np.uint32((salt * 83492791) & 0xFFFFFFFF)
    )
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x45D9F3B)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x45D9F3B)
    h ^= h >> np.uint32(16)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 0x1000000)


def value_noise(x: np.ndarray, y: np.ndarray, salt: int = 0) -> np.ndarray:
    """Smooth noise in [0, 1): bilinear blend of lattice hashes (texture anchored to world
    units)."""
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    ix, iy = x0.astype(np.int64), y0.astype(np.int64)
    a, b = hash01(ix, iy, salt), hash01(ix + 1, iy, salt)
    c, d = hash01(ix, iy + 1, salt), hash01(ix + 1, iy + 1, salt)
    return (a + (b - a) * fx) + ((c + (d - c) * fx) - (a + (b - a) * fx)) * fy


class Renderer:
    """Renders a :class:`Scene` at a fixed resolution; one instance per sequence."""

    def __init__(self, scene: Scene, width: int, height: int, ego_hood: bool = True):
        self.scene = scene
        self.width, self.height = width, height
        cam = scene.camera
        self.dx = ((np.arange(width, dtype=np.float32) + 0.5 - cam.cx) / cam.focal_px)[None, :]
        self.dh = (-(np.arange(height, dtype=np.float32) + 0.5 - cam.cy) / cam.focal_px)[:, None]
        self.hood = self._hood_mask() if ego_hood else np.zeros((height, width), bool)
        self.sky = self._sky()

    # ----------------------------------------------------------------------------------- frame
    def render(self, time: float) -> RenderedView:
        scene, (cam_x, cam_h, cam_z) = self.scene, self.scene.camera.pose(time)
        height, width = self.height, self.width
        rgb = self.sky.copy()
        labels = np.full((height, width), TRAIN_ID["sky"], np.uint8)
        depth = np.full((height, width), np.inf, np.float32)
        velocity = np.zeros((height, width, 2), np.float32)
        pose = (cam_x, cam_h, cam_z)
        self._ground(pose, rgb, labels, depth)
        for facades in scene.facades:
            self._tree_line(pose, facades, rgb, labels, depth)
            self._facades(pose, facades, rgb, labels, depth)
        for mover in scene.movers:
            self._mover(pose, time, mover, rgb, labels, depth, velocity)
        self._haze(rgb, depth)
        if self.hood.any():
            rgb[self.hood] = self._hood_colour
            labels[self.hood] = IGNORE_ID
        return RenderedView(rgb, labels, depth, velocity, self.hood, pose)

    # ---------------------------------------------------------------------------- static world
    def _sky(self) -> np.ndarray:
        scene, height = self.scene, self.height
        elevation = np.clip(self.dh / 0.35, 0, 1)  # (H, 1): 0 at the horizon, 1 well above it
        sky = scene.sky_horizon + (scene.sky_top - scene.sky_horizon) * elevation[..., None]
        sky = np.broadcast_to(sky, (height, self.width, 3)).copy()
        if scene.cloudiness > 0.2:
            # Clouds live at infinity: a function of the ray direction, so their true flow is zero.
            clouds = (
                value_noise(self.dx * 9.0, self.dh * 25.0, scene.seed) * 0.6
                + value_noise(self.dx * 27.0, self.dh * 70.0, scene.seed + 1) * 0.4
            )
            amount = (
                np.clip((clouds - (1.0 - 0.5 * scene.cloudiness)) * 3.0, 0, 1) * scene.cloudiness
            )
            sky += (np.float32(235) - sky) * amount[..., None]
        return sky.astype(np.float32)

    def _ground(self, pose, rgb, labels, depth) -> None:
        scene = self.scene
        cam_x, cam_h, cam_z = pose
        rows = np.nonzero(self.dh[:, 0] < -1e-4)[0]
        if rows.size == 0:
            return
        r0 = rows[0]
        z = cam_h / -self.dh[r0:]  # (R, 1) depth per row
        x = cam_x + z * self.dx  # (R, W)
        zw = np.broadcast_to(cam_z + z, x.shape)
        ax = np.abs(x)
        road = ax < scene.road_half_width
        sidewalk = ~road & (ax < scene.road_half_width + scene.sidewalk_width)
        terrain = ~road & ~sidewalk
        # Asphalt: large patches plus grain, both fixed to the road surface.
        patches = value_noise(x * 0.35, zw * 0.12, 11)
        grain = hash01(np.floor(x * 14), np.floor(zw * 14), 12)
        shade = 0.86 + 0.18 * patches + 0.10 * (grain - 0.5)
        colour = scene.road_colour[None, None, :] * shade[..., None]
        # Lane markings (dashed dividers, solid edge lines, zebra crossings) stay class "road".
        dash = np.mod(zw, 9.0) < 3.0
        paint = np.zeros(x.shape, bool)
        for line_x in scene.lane_lines:
            paint |= (np.abs(x - line_x) < 0.07) & (
                dash if line_x != 0.0 else np.mod(zw, 6.0) < 4.0
            )
        paint |= np.abs(ax - 2 * 3.5 - 0.1) < 0.08
        for crossing in scene.crosswalks[
            (scene.crosswalks > cam_z - 5) & (scene.crosswalks < cam_z + 150)
        ]:
            paint |= (zw > crossing) & (zw < crossing + 4.0) & (np.mod(x, 1.0) < 0.5) & road
        colour = np.where(paint[..., None], np.float32(205) + 20 * grain[..., None], colour)
        # Sidewalk tiles with joints and a kerb stone edge.
        tiles = hash01(np.floor(x * 2.5), np.floor(zw * 2.5), 13)
        joints = (np.mod(x * 2.5, 1.0) < 0.06) | (np.mod(zw * 2.5, 1.0) < 0.06)
        kerb = ax < scene.road_half_width + 0.25
        side_colour = scene.sidewalk_colour * (0.92 + 0.12 * tiles[..., None])
        side_colour = np.where(joints[..., None], side_colour * 0.8, side_colour)
        side_colour = np.where(kerb[..., None], np.float32(175), side_colour)
        colour = np.where(sidewalk[..., None], side_colour, colour)
        grass = (
            np.array((105, 135, 60), np.float32)
            * (0.8 + 0.35 * value_noise(x * 3, zw * 3, 14))[..., None]
        )
        colour = np.where(terrain[..., None], grass, colour)
        # Sun-lit side is brighter than the shaded side.
        colour *= np.where((x * scene.sun_side) > 0, np.float32(1.04), np.float32(0.96))[..., None]
        ground_labels = np.where(
            road, TRAIN_ID["road"], np.where(sidewalk, TRAIN_ID["sidewalk"], TRAIN_ID["terrain"])
        ).astype(np.uint8)
        rgb[r0:] = colour
        labels[r0:] = ground_labels
        depth[r0:] = np.broadcast_to(z, x.shape)

    def _facades(self, pose, facades, rgb, labels, depth) -> None:
        cam_x, cam_h, cam_z = pose
        cols = np.nonzero(facades.side * self.dx[0] > 1e-4)[0]
        if cols.size == 0:
            return
        c0, c1 = cols[0], cols[-1] + 1
        z = (facades.side * facades.offset - cam_x) / self.dx[:, c0:c1]  # (1, C)
        zw = cam_z + z
        segment = np.clip(
            np.searchsorted(facades.starts, zw[0], side="right") - 1, 0, len(facades.starts) - 1
        )
        seg_height = facades.heights[segment][None, :]
        kind = facades.kinds[segment][None, :]
        h = cam_h + z * self.dh  # (H, C)
        visible = (
            (h >= 0)
            & (h <= seg_height)
            & (z < depth[:, c0:c1])
            & (kind != 255)
            & (z < FAR_DRAW * 2)
        )
        if not visible.any():
            return
        base = facades.colours[segment][None, :, :]  # (1, C, 3)
        # Windows: a grid in (z along the facade, height) per building, ground floor shop windows.
        pitch_z = facades.window_pitch[segment, 0][None, :]
        floor_h = facades.window_pitch[segment, 1][None, :]
        fill_z = facades.window_fill[segment, 0][None, :]
        fill_h = facades.window_fill[segment, 1][None, :]
        local_z = zw - facades.starts[segment][None, :]
        wz = np.mod(local_z, pitch_z) / pitch_z
        wh = np.mod(h, floor_h) / floor_h
        in_z = (wz > 0.5 - fill_z / 2) & (wz < 0.5 + fill_z / 2)
        window = in_z & (wh > 0.3) & (wh < 0.3 + fill_h) & (h > floor_h) & (h < seg_height - 0.8)
        shop = in_z & (h > 0.4) & (h < floor_h * 0.8) & (wz > 0.15) & (wz < 0.85)
        building = kind == TRAIN_ID["building"]
        window &= building
        shop &= building & (np.mod(segment, 2) == 0)[None, :]
        glass_tone = hash01(np.floor(local_z / pitch_z), np.floor(h / floor_h), 21)
        dirt = value_noise(zw * 0.8, h * 0.8, 22)
        colour = base * (0.85 + 0.25 * dirt)[..., None]
        glass = np.stack([45 + 40 * glass_tone, 55 + 45 * glass_tone, 70 + 50 * glass_tone], -1)
        colour = np.where((window | shop)[..., None], glass, colour)
        # Cornice line under the roof and a darker plinth.
        colour = np.where(
            ((seg_height - h) < 0.35)[..., None] & building[..., None], base * 0.7, colour
        )
        colour = np.where((h < 0.35)[..., None], base * 0.6, colour)
        # Fences get slats; everything on the shaded side is darker.
        slats = (kind == TRAIN_ID["fence"]) & (np.mod(zw * 6, 1.0) < 0.35)
        colour = np.where(slats[..., None], colour * 0.6, colour)
        colour = colour * np.float32(1.08 if facades.side == self.scene.sun_side else 0.82)
        region_rgb, region_labels, region_depth = rgb[:, c0:c1], labels[:, c0:c1], depth[:, c0:c1]
        region_rgb[visible] = colour[visible]
        region_labels[visible] = np.broadcast_to(kind, visible.shape)[visible]
        region_depth[visible] = np.broadcast_to(z, visible.shape)[visible]

    def _tree_line(self, pose, facades, rgb, labels, depth) -> None:
        cam_x, cam_h, cam_z = pose
        cols = np.nonzero(facades.side * self.dx[0] > 1e-4)[0]
        if cols.size == 0:
            return
        c0, c1 = cols[0], cols[-1] + 1
        z = (facades.side * facades.tree_line_offset - cam_x) / self.dx[:, c0:c1]
        zw = cam_z + z
        phase = facades.tree_line_phase
        top = (
            7.0
            + 2.5 * np.sin(zw * 0.21 + phase[0])
            + 1.5 * np.sin(zw * 0.57 + phase[1])
            + 3.0 * value_noise(zw * 0.9, np.zeros_like(zw), int(phase[2] * 1000))
        )
        h = cam_h + z * self.dh
        visible = (h >= 0) & (h <= top) & (z < depth[:, c0:c1])
        if not visible.any():
            return
        leaves = (
            value_noise(zw * 3.0, h * 3.0, 31) * 0.6
            + hash01(np.floor(zw * 8), np.floor(h * 8), 32) * 0.4
        )
        colour = np.stack([55 + 50 * leaves, 85 + 60 * leaves, 30 + 30 * leaves], -1)
        region_rgb, region_labels, region_depth = rgb[:, c0:c1], labels[:, c0:c1], depth[:, c0:c1]
        region_rgb[visible] = colour[visible]
        region_labels[visible] = TRAIN_ID["vegetation"]
        region_depth[visible] = np.broadcast_to(z, visible.shape)[visible]

    # ---------------------------------------------------------------------------------- movers
    def _mover(self, pose, time, mover: Mover, rgb, labels, depth, velocity) -> None:
        x, z = mover.position(time)
        cam_x, _, cam_z = pose
        if z - cam_z > FAR_DRAW or z + max(mover.length, 1.0) - cam_z < NEAR:
            return
        kind = mover.kind
        if kind in ("car", "truck", "bus"):
            self._vehicle(pose, mover, x, z, rgb, labels, depth, velocity)
        elif kind == "person":
            self._face(
                pose,
                x,
                z,
                mover.width,
                mover.height,
                _person_shape(mover),
                mover,
                rgb,
                labels,
                depth,
                velocity,
            )
        elif kind == "cyclist":
            self._side(
                pose,
                x,
                z,
                z + mover.length,
                2.0,
                _cyclist_shape(mover),
                mover,
                rgb,
                labels,
                depth,
                velocity,
            )
        elif kind == "pole":
            self._face(
                pose,
                x,
                z,
                2.0,
                mover.height,
                _pole_shape(mover, x > 0),
                mover,
                rgb,
                labels,
                depth,
                velocity,
            )
        elif kind == "sign":
            self._face(
                pose,
                x,
                z,
                mover.width,
                mover.height + mover.width,
                _sign_shape(mover),
                mover,
                rgb,
                labels,
                depth,
                velocity,
            )
        elif kind == "light":
            self._face(
                pose,
                x,
                z,
                mover.width,
                mover.height + 1.0,
                _light_shape(mover),
                mover,
                rgb,
                labels,
                depth,
                velocity,
            )
        elif kind == "tree":
            self._face(
                pose,
                x,
                z,
                mover.width,
                mover.height,
                _tree_shape(mover),
                mover,
                rgb,
                labels,
                depth,
                velocity,
            )

    def _vehicle(self, pose, mover, x, z, rgb, labels, depth, velocity) -> None:
        cam_x = pose[0]
        oncoming = mover.vz < 0
        # The face toward the camera is the front of oncoming vehicles and the rear of the others;
        # the visible side is the one nearer to the camera's x.
        self._face(
            pose,
            x,
            z,
            mover.width,
            mover.height,
            _vehicle_end_shape(mover, oncoming),
            mover,
            rgb,
            labels,
            depth,
            velocity,
        )
        side_x = x - mover.width / 2 if x > cam_x else x + mover.width / 2
        if abs(side_x - cam_x) > 0.3 and (side_x - cam_x) * (x - cam_x) > 0:
            self._side(
                pose,
                side_x,
                z,
                z + mover.length,
                mover.height,
                _vehicle_side_shape(mover, oncoming),
                mover,
                rgb,
                labels,
                depth,
                velocity,
            )

    def _face(
        self, pose, x_centre, z, width, height, shape, mover, rgb, labels, depth, velocity
    ) -> None:
        """Paint a face on the plane ``z`` spanning ``x_centre +- width/2`` and ``h`` 0..height."""
        cam_x, cam_h, cam_z = pose
        d = z - cam_z
        if d < NEAR or d > FAR_DRAW:
            return
        f, cam = self.scene.camera.focal_px, self.scene.camera
        u0 = int(np.floor(cam.cx + f * (x_centre - width / 2 - cam_x) / d))
        u1 = int(np.ceil(cam.cx + f * (x_centre + width / 2 - cam_x) / d)) + 1
        v0 = int(np.floor(cam.cy - f * (height - cam_h) / d))
        v1 = int(np.ceil(cam.cy + f * cam_h / d)) + 1
        u0, u1, v0, v1 = max(u0, 0), min(u1, self.width), max(v0, 0), min(v1, self.height)
        if u0 >= u1 or v0 >= v1:
            return
        local_x = cam_x + d * self.dx[:, u0:u1] - x_centre  # (1, w)
        local_h = cam_h + d * self.dh[v0:v1]  # (h, 1)
        mask, lab, colour = shape(local_x, local_h)
        mask = mask & (depth[v0:v1, u0:u1] > d)
        if not mask.any():
            return
        self._write(
            mask,
            lab,
            colour,
            d,
            mover,
            (slice(v0, v1), slice(u0, u1)),
            rgb,
            labels,
            depth,
            velocity,
        )

    def _side(
        self, pose, x_plane, z0, z1, height, shape, mover, rgb, labels, depth, velocity
    ) -> None:
        """Paint a face on the plane ``x = x_plane`` spanning ``z0..z1`` and ``h`` 0..height."""
        cam_x, cam_h, cam_z = pose
        cam = self.scene.camera
        d0, d1 = max(z0 - cam_z, NEAR), z1 - cam_z
        if d1 <= NEAR or d0 > FAR_DRAW or abs(x_plane - cam_x) < 0.05:
            return
        f = cam.focal_px
        us = [cam.cx + f * (x_plane - cam_x) / d for d in (d0, d1)]
        vs = [cam.cy - f * (hh - cam_h) / d for d in (d0, d1) for hh in (0.0, height)]
        u0, u1 = max(int(np.floor(min(us))), 0), min(int(np.ceil(max(us))) + 1, self.width)
        v0, v1 = max(int(np.floor(min(vs))), 0), min(int(np.ceil(max(vs))) + 1, self.height)
        if u0 >= u1 or v0 >= v1:
            return
        dx = self.dx[:, u0:u1]
        with np.errstate(divide="ignore"):
            d = np.where(np.abs(dx) > 1e-6, (x_plane - cam_x) / dx, np.inf).astype(
                np.float32
            )  # (1, w)
        local_z = cam_z + d - z0
        local_h = cam_h + d * self.dh[v0:v1]  # (h, w)
        inside = (d > NEAR) & (local_z >= 0) & (local_z <= z1 - z0)
        mask, lab, colour = shape(local_z, local_h)
        d_full = np.broadcast_to(d, local_h.shape)
        mask = mask & inside & (depth[v0:v1, u0:u1] > d_full)
        if not mask.any():
            return
        self._write(
            mask,
            lab,
            colour,
            d_full,
            mover,
            (slice(v0, v1), slice(u0, u1)),
            rgb,
            labels,
            depth,
            velocity,
        )

    @staticmethod
    def _write(mask, lab, colour, d, mover, region, rgb, labels, depth, velocity) -> None:
        shape = mask.shape
        rgb[region][mask] = np.broadcast_to(colour, shape + (3,))[mask]
        labels[region][mask] = np.broadcast_to(lab, shape)[mask]
        depth[region][mask] = np.broadcast_to(d, shape)[mask]
        velocity[region][mask] = (mover.vx, mover.vz)

    # ---------------------------------------------------------------------------- appearance
    def _haze(self, rgb, depth) -> None:
        finite = np.isfinite(depth)
        amount = np.where(finite, 1.0 - np.exp(-np.where(finite, depth, 0) / HAZE_DISTANCE), 0)
        rgb += (self.scene.sky_horizon - rgb) * (0.8 * amount[..., None]).astype(np.float32)

    def _hood_mask(self) -> np.ndarray:
        height, width = self.height, self.width
        u = (np.arange(width, dtype=np.float32) + 0.5) / width - 0.5
        top = height * (0.93 - 0.05 * (1 - (2 * u) ** 2))  # a gently curved bonnet edge
        self._hood_colour = np.array((25, 27, 30), np.float32)
        return (np.arange(height, dtype=np.float32)[:, None] + 0.5) > top[None, :]

    def flow(self, view: RenderedView, next_pose, dt: float) -> np.ndarray:
        """True flow (H, W, 2) float32 from ``view`` to the frame at ``next_pose``, ``dt``
        later."""
        cam = self.scene.camera
        cam_x, cam_h, cam_z = view.pose
        nx, nh, nz = next_pose
        finite = np.isfinite(view.depth)
        d = np.where(finite, view.depth, 1.0)
        px = cam_x + d * self.dx + view.velocity[..., 0] * dt
        ph = cam_h + d * self.dh
        pz = cam_z + d + view.velocity[..., 1] * dt
        nd = np.maximum(pz - nz, 1e-3)
        u_next = cam.cx + cam.focal_px * (px - nx) / nd
        v_next = cam.cy - cam.focal_px * (ph - nh) / nd
        u = np.arange(self.width, dtype=np.float32)[None, :] + 0.5
        v = np.arange(self.height, dtype=np.float32)[:, None] + 0.5
        flow = np.stack([u_next - u, v_next - v], -1).astype(np.float32)
        flow[~finite | view.camera_fixed] = 0.0  # sky at infinity and the ego bonnet do not move
        return flow

    def visible_in_next(
        self, view: RenderedView, flow: np.ndarray, next_view: RenderedView, dt: float
    ) -> np.ndarray:
        """True where the surface seen at a pixel is still the one seen at ``pixel + flow``
        next."""
        height, width = self.height, self.width
        cols = np.arange(width, dtype=np.float32)[None, :] + flow[..., 0]
        rows = np.arange(height, dtype=np.float32)[:, None] + flow[..., 1]
        ci, ri = np.rint(cols).astype(np.int64), np.rint(rows).astype(np.int64)
        inside = (ci >= 0) & (ci < width) & (ri >= 0) & (ri < height)
        ci, ri = np.clip(ci, 0, width - 1), np.clip(ri, 0, height - 1)
        expected = view.depth + view.velocity[..., 1] * dt - (next_view.pose[2] - view.pose[2])
        found = next_view.depth[ri, ci]
        both_sky = ~np.isfinite(view.depth) & ~np.isfinite(found)
        with np.errstate(invalid="ignore"):  # inf - inf on sky pixels; those are both_sky
            close = np.abs(found - expected) <= 0.03 * np.abs(expected) + 0.1
        same_class = next_view.labels[ri, ci] == view.labels
        return (inside & (both_sky | close) & same_class) | view.camera_fixed


# --------------------------------------------------------------------------- object shapes
# Each shape maps local coordinates on the object's plane to (mask, trainId, colour); arrays
# broadcast, so a (1, w) x (h, 1) pair gives (h, w) results.


def _ellipse(a, b, ca, cb, ra, rb):
    return ((a - ca) / ra) ** 2 + ((b - cb) / rb) ** 2 <= 1.0


def _person_shape(mover: Mover):
    w, height = mover.width, mover.height
    skin = np.array((200, 160, 130), np.float32) * (0.8 if mover.salt % 3 == 0 else 1.0)

    def shape(x, h):
        head = _ellipse(x, h, 0, height - 0.12, 0.10, 0.12)
        torso_w = w / 2 * (0.7 + 0.3 * np.clip((h - 0.9) / 0.6, 0, 1))
        torso = (np.abs(x) <= torso_w) & (h >= 0.85) & (h <= height - 0.22)
        arms = (np.abs(np.abs(x) - w / 2 * 0.95) < 0.06) & (h > 0.75) & (h < height - 0.3)
        legs = (np.abs(np.abs(x) - 0.1) < 0.08 + 0.02 * mover.variant) & (h >= 0) & (h < 0.9)
        mask = head | torso | arms | legs
        colour = np.where((torso | arms)[..., None], mover.colour, mover.colour2)
        colour = np.where(head[..., None], skin, colour)
        colour = np.where(((h < 0.08) & legs)[..., None], np.float32(30), colour)
        return mask, np.uint8(TRAIN_ID["person"]), colour

    return shape


def _cyclist_shape(mover: Mover):
    """Side view (local z along the bicycle, 0 = rear wheel end) of a bicycle with its rider."""
    radius = 0.34
    rear, front = 0.36, mover.length - 0.36
    motor = mover.variant == 1

    def shape(z, h):
        rear_r = np.hypot(z - rear, h - radius)
        front_r = np.hypot(z - front, h - radius)
        tyre = (np.abs(rear_r - radius + 0.03) < 0.04) | (np.abs(front_r - radius + 0.03) < 0.04)
        spokes = ((rear_r < radius) | (front_r < radius)) & (
            np.mod(np.arctan2(h - radius, z - rear) * 4, 1) < 0.1
        )
        # Frame: the two triangles approximated by thick segments.
        frame = (
            _segment(z, h, rear, radius, 0.8, 0.85, 0.035)
            | _segment(z, h, 0.8, 0.85, front - 0.1, 0.95, 0.035)
            | _segment(z, h, rear, radius, 0.75, 0.4, 0.035)
            | _segment(z, h, 0.75, 0.4, 0.8, 0.85, 0.035)
            | _segment(z, h, front - 0.1, 0.95, front, radius, 0.035)
        )
        if motor:
            frame |= (z > rear) & (z < front) & (h > 0.3) & (h < 0.8)
        bike = tyre | frame | spokes
        torso = _segment(z, h, 0.75, 1.0, 1.05, 1.45, 0.16)
        head = _ellipse(z, h, 1.12, 1.62, 0.12, 0.13)
        leg = _segment(z, h, 0.75, 1.0, 0.8, 0.45, 0.08)
        arm = _segment(z, h, 1.05, 1.4, front - 0.1, 1.0, 0.05)
        rider = (torso | head | leg | arm) & ~(tyre & (h < 0.6))
        mask = bike | rider
        lab = np.where(
            rider, TRAIN_ID["rider"], TRAIN_ID["motorcycle" if motor else "bicycle"]
        ).astype(np.uint8)
        colour = np.where(rider[..., None], mover.colour, mover.colour2)
        colour = np.where(tyre[..., None], np.float32(25), colour)
        colour = np.where(head[..., None], np.float32(190), colour)
        return mask, lab, colour

    return shape


def _segment(a, b, a0, b0, a1, b1, half_width):
    """Points within ``half_width`` of the segment (a0, b0)-(a1, b1)."""
    da, db = a1 - a0, b1 - b0
    t = np.clip(((a - a0) * da + (b - b0) * db) / (da * da + db * db), 0, 1)
    return np.hypot(a - a0 - t * da, b - b0 - t * db) <= half_width


def _vehicle_end_shape(mover: Mover, front: bool):
    w, height = mover.width, mover.height
    car = mover.kind == "car"
    body_top = height * (0.62 if car else 0.9)

    def shape(x, h):
        ax = np.abs(x)
        body = (ax <= w / 2) & (h >= 0.18) & (h <= body_top)
        cabin_w = (
            w / 2 * (0.92 - 0.18 * np.clip((h - body_top) / max(height - body_top, 1e-3), 0, 1))
        )
        cabin = (ax <= cabin_w) & (h > body_top) & (h <= height)
        wheels = (ax >= w / 2 - 0.35) & (ax <= w / 2 - 0.05) & (h >= 0) & (h < 0.3)
        mask = body | cabin | wheels
        glass_top = height - (0.1 if car else 0.3)
        window = (
            (ax <= cabin_w - 0.08) & (h > body_top + 0.05) & (h < glass_top)
            if car
            else (ax <= w / 2 - 0.15) & (h > height * 0.55) & (h < glass_top)
        )
        colour = np.broadcast_to(mover.colour, np.broadcast(x, h).shape + (3,))
        colour = np.where(window[..., None], mover.colour2, colour)
        lamp_h = body_top - 0.2
        lamps = (ax > w / 2 - 0.3) & (ax < w / 2 - 0.05) & (np.abs(h - lamp_h) < 0.08)
        lamp_colour = np.array((230, 230, 210) if front else (190, 25, 25), np.float32)
        colour = np.where(lamps[..., None], lamp_colour, colour)
        plate = (ax < 0.25) & (np.abs(h - 0.45) < 0.06)
        colour = np.where(plate[..., None], np.float32(225), colour)
        colour = np.where(
            (wheels | (h < 0.3))[..., None] & ~plate[..., None], np.float32(28), colour
        )
        return mask, np.uint8(TRAIN_ID[mover.kind]), colour

    return shape


def _vehicle_side_shape(mover: Mover, oncoming: bool):
    """Side of a vehicle; local z runs from the face toward the camera (0) to the far end."""
    length, height = mover.length, mover.height
    car = mover.kind == "car"
    body_top = height * (0.62 if car else 0.9)
    radius = 0.32 if car else 0.5

    def shape(z, h):
        # For cars the cabin sits in the middle with sloped pillars.
        zz = length - z if oncoming else z
        cabin_lo = 0.28 * length + (h - body_top) * 0.6
        cabin_hi = 0.78 * length - (h - body_top) * 0.4
        body = (h >= 0.2) & (h <= body_top)
        cabin = (
            (h > body_top) & (h <= height) & ((zz >= cabin_lo) & (zz <= cabin_hi) if car else True)
        )
        wheel_z = (0.18 * length, 0.8 * length)
        wheels = _ellipse(zz, h, wheel_z[0], radius, radius, radius) | _ellipse(
            zz, h, wheel_z[1], radius, radius, radius
        )
        mask = body | cabin | wheels
        window = (
            cabin
            & (h < height - 0.08)
            & (h > body_top + 0.05)
            & ((zz > cabin_lo + 0.1) & (zz < cabin_hi - 0.1))
            if car
            else (h > height * 0.55)
            & (h < height - 0.3)
            & (np.mod(zz, 1.6) < 1.2)
            & (zz > 0.4)
            & (zz < length - 0.4)
        )
        colour = np.broadcast_to(mover.colour * 0.85, np.broadcast(z, h).shape + (3,))
        colour = np.where(window[..., None], mover.colour2, colour)
        colour = np.where(wheels[..., None], np.float32(25), colour)
        return mask, np.uint8(TRAIN_ID[mover.kind]), colour

    return shape


def _pole_shape(mover: Mover, right_side: bool):
    height, half = mover.height, mover.width / 2
    arm_dir = -1.0 if right_side else 1.0

    def shape(x, h):
        shaft = (np.abs(x) <= half) & (h >= 0) & (h <= height)
        arm = (np.abs(h - height + 0.1) < 0.06) & (x * arm_dir >= 0) & (x * arm_dir <= 1.6)
        lamp = (np.abs(h - height + 0.18) < 0.1) & (np.abs(x - arm_dir * 1.6) < 0.25)
        mask = shaft | arm | lamp
        colour = np.where(
            lamp[..., None], np.float32(200), mover.colour * (0.9 + 0.2 * (x > 0))[..., None]
        )
        return mask, np.uint8(TRAIN_ID["pole"]), colour

    return shape


def _sign_shape(mover: Mover):
    plate, post = mover.width, mover.height
    centre = post + plate / 2

    def shape(x, h):
        stick = (np.abs(x) <= 0.04) & (h >= 0) & (h <= post + 0.05)
        if mover.variant == 0:
            board = _ellipse(x, h, 0, centre, plate / 2, plate / 2)
            inner = _ellipse(x, h, 0, centre, plate / 2 * 0.7, plate / 2 * 0.7)
        elif mover.variant == 1:
            board = (np.abs(x) <= plate / 2) & (np.abs(h - centre) <= plate / 2)
            inner = (np.abs(x) <= plate / 2 * 0.75) & (np.abs(h - centre) <= plate / 2 * 0.75)
        else:
            rel = h - post
            board = (rel >= 0) & (rel <= plate) & (np.abs(x) <= (plate - rel) / 1.7)
            inner = (
                (rel >= 0.12) & (rel <= plate - 0.15) & (np.abs(x) <= (plate - rel - 0.1) / 1.9)
            )
        mask = stick | board
        lab = np.where(board, TRAIN_ID["traffic sign"], TRAIN_ID["pole"]).astype(np.uint8)
        colour = np.where(inner[..., None], mover.colour2, mover.colour)
        colour = np.where((stick & ~board)[..., None], np.float32(120), colour)
        return mask, lab, colour

    return shape


def _light_shape(mover: Mover):
    post, box_w = mover.height, mover.width

    def shape(x, h):
        stick = (np.abs(x) <= 0.06) & (h >= 0) & (h <= post)
        box = (np.abs(x) <= box_w / 2) & (h > post) & (h <= post + 0.95)
        lamp_index = np.floor((h - post) / 0.95 * 3)
        lamp = box & (np.hypot(x, np.mod(h - post, 0.95 / 3) - 0.95 / 6) < 0.11)
        lit = lamp & (lamp_index == 2 - mover.variant)
        colours = {0: (220, 40, 30), 1: (240, 180, 30), 2: (40, 220, 90)}
        mask = stick | box
        lab = np.where(box, TRAIN_ID["traffic light"], TRAIN_ID["pole"]).astype(np.uint8)
        colour = np.where(box[..., None], mover.colour, np.float32(110))
        colour = np.where(lamp[..., None], np.float32(60), colour)
        colour = np.where(lit[..., None], np.array(colours[mover.variant], np.float32), colour)
        return mask, lab, colour

    return shape


def _tree_shape(mover: Mover):
    crown, height = mover.width, mover.height
    centre = height - crown / 2

    def shape(x, h):
        wobble = value_noise(x * 2.5, h * 2.5, mover.salt) * 0.35 * crown
        crown_mask = np.hypot(x, (h - centre) * 1.1) <= crown / 2 - 0.2 + wobble
        trunk = (np.abs(x) <= 0.14) & (h >= 0) & (h <= centre)
        leaves = value_noise(x * 6, h * 6, mover.salt + 1)
        crown_colour = mover.colour[None, None, :] * (0.65 + 0.6 * leaves)[..., None]
        colour = np.where(crown_mask[..., None], crown_colour, mover.colour2)
        return crown_mask | trunk, np.uint8(TRAIN_ID["vegetation"]), colour

    return shape
