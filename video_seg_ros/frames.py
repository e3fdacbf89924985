"""The one frame reader: lists image folders as sequences and reads frames and label images.

Layouts understood (file names decide; sorted names give temporal order within a sequence):

- Cityscapes ``<city>_<seq>_<frame>_leftImg8bit.{png,jpg}`` -> sequence ``<city>_<seq>``; labels
  ``<city>_<seq>_<frame>_gtFine_labelTrainIds.png`` / ``_gtFine_labelIds.png`` /
  ``_pseudo_labelIds.png`` anywhere under the labels folder.
- CamVid ``<seq>_<frame>.png`` -> sequence ``<seq>``; labels with the same file name.
- Anything else ending in digits (``frame_000123.jpg``) -> the name before the digits (the parent
  folder for bare numbers such as ``000123.png``); otherwise the parent folder is the sequence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from video_seg_ros.labels import convert_label_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")
_CITYSCAPES_IMAGE = re.compile(r"^(?P<seq>[a-z]+_\d+)_(?P<frame>\d+)_leftImg8bit$", re.IGNORECASE)
_LABEL_SUFFIXES = (
    "_gtFine_labelTrainIds",
    "_gtFine_labelIds",
    "_pseudo_labelIds",
    "_labelTrainIds",
    "_labelIds",
    "_gtFine_color",
    "",
)
# Label and annotation images that may sit in the same tree as the frames; never listed as frames.
_ANNOTATION_STEM = re.compile(
    r"_(gtFine|gtCoarse|pseudo)_\w+$|_label(Train)?Ids$|_color$|_instanceIds$"
)
_TRAILING_NUMBER = re.compile(r"^(?P<seq>.*?)[_\-.]?(?P<frame>\d+)$")


@dataclass(frozen=True)
class FrameRecord:
    """One image file and where it sits in its sequence."""

    path: Path
    sequence: str
    frame: int
    key: str  # file stem without the layout suffix, used to find the matching label file


def parse_frame_name(path: Path) -> FrameRecord:
    stem = path.stem
    match = _CITYSCAPES_IMAGE.match(stem)
    if match:
        return FrameRecord(path, match["seq"], int(match["frame"]), stem[: -len("_leftImg8bit")])
    match = _TRAILING_NUMBER.match(stem)
    if match:
        # Bare numbers (000123.png) belong to their folder's sequence.
        return FrameRecord(path, match["seq"] or path.parent.name, int(match["frame"]), stem)
    return FrameRecord(path, path.parent.name, 0, stem)


def list_frames(root: str | Path) -> list[FrameRecord]:
    """All images under ``root`` (recursively), ordered by sequence then frame number."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    records = [
        parse_frame_name(p)
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not _ANNOTATION_STEM.search(p.stem)
    ]
    return sorted(records, key=lambda r: (r.sequence, r.frame, r.path.name))


def group_sequences(records: list[FrameRecord]) -> dict[str, list[FrameRecord]]:
    """Sequence name -> its frames in temporal order (input order is kept)."""
    groups: dict[str, list[FrameRecord]] = {}
    for record in records:
        groups.setdefault(record.sequence, []).append(record)
    return groups


# Which label file wins when one frame has several (Cityscapes gtFine holds both labelIds and
# labelTrainIds): the ones written in the requested format first.
_SUFFIX_PREFERENCE = {
    "trainids": ("_gtFine_labelTrainIds", "_labelTrainIds", ""),
    "cityscapes-labelids": ("_gtFine_labelIds", "_pseudo_labelIds", "_labelIds", ""),
    "camvid": ("",),
    "cityscapes-color": ("_gtFine_color",),
}
_NOT_CLASS_IDS = re.compile(r"_color$|_instanceIds$|_polygons$")
_COLOUR_LABEL = re.compile(r"_gtFine_color$")


def index_label_files(labels_root: str | Path, label_format: str | None = None) -> dict[str, Path]:
    """Map frame keys to label files under ``labels_root`` (layout suffixes stripped).

    Colour and instance images are skipped, except that ``"cityscapes-color"`` takes only the
    ``*_gtFine_color.png`` files. When a key has several label files, those matching
    ``label_format`` (see labels.LABEL_FORMATS) are preferred, e.g. ``*_gtFine_labelTrainIds.png``
    over ``*_gtFine_labelIds.png`` for ``"trainids"``.
    """
    labels_root = Path(labels_root)
    if not labels_root.is_dir():
        raise FileNotFoundError(f"label folder not found: {labels_root}")
    preferred = _SUFFIX_PREFERENCE.get(label_format, _LABEL_SUFFIXES)
    ranked: dict[str, tuple[int, Path]] = {}
    for path in sorted(labels_root.rglob("*.png")):
        stem = path.stem
        if label_format == "cityscapes-color":
            if not _COLOUR_LABEL.search(stem):
                continue
        elif _NOT_CLASS_IDS.search(stem):
            continue
        suffix = next((s for s in _LABEL_SUFFIXES if s and stem.endswith(s)), "")
        key = stem[: -len(suffix)] if suffix else stem
        rank = preferred.index(suffix) if suffix in preferred else len(preferred)
        if key not in ranked or rank < ranked[key][0]:
            ranked[key] = (rank, path)
    return {key: path for key, (_, path) in ranked.items()}


class UnreadableImageError(ValueError):
    """An image file is missing, empty or cannot be decoded (as opposed to a wrong label
    format)."""


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; raises :class:`UnreadableImageError` naming the file if it cannot be
    decoded."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UnreadableImageError(f"cannot read image {path} (missing, empty or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


#: What :func:`read_label` accepts, for error messages.
ACCEPTED_LABEL_FILES = (
    "single-channel 8- or 16-bit images of class ids, palette (indexed) PNGs "
    "read as their indices, or Cityscapes *_gtFine_color.png colour images with "
    "the label format cityscapes-color"
)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_INDEXED = 3  # IHDR colour type of palette images


def _is_palette_png(path: Path) -> bool:
    try:
        with open(path, "rb") as stream:
            head = stream.read(26)
    except OSError:
        return False
    return (
        len(head) == 26
        and head[:8] == _PNG_SIGNATURE
        and head[12:16] == b"IHDR"
        and head[25] == _PNG_INDEXED
    )


def _read_palette_indices(path: Path) -> np.ndarray:
    # OpenCV expands palette images to colours; the class ids are the indices (PASCAL VOC and
    # HRNet-style tools write labels this way).
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.array(image, dtype=np.uint8)
    except OSError as error:
        raise UnreadableImageError(f"cannot read label image {path} ({error})") from error


def read_label(path: str | Path, label_format: str) -> np.ndarray:
    """(H, W) uint8 train ids from a label image in ``label_format`` (see labels.LABEL_FORMATS).

    Accepted files: single-channel 8- or 16-bit images of ids, palette PNGs (their indices are
    the ids; the palette colours are ignored), and for ``cityscapes-color`` RGB(A) images in the
    official Cityscapes colours.

    Raises:
        UnreadableImageError: the file cannot be decoded.
        ValueError: the file holds something else; the message names the file and the accepted
            formats.
    """
    path = Path(path)
    if label_format == "cityscapes-color":
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise UnreadableImageError(f"cannot read label image {path}")
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
            raise ValueError(
                f"label image {path} is not an 8-bit RGB image, which the label format "
                f"cityscapes-color needs; accepted label files: {ACCEPTED_LABEL_FILES}"
            )
        label = cv2.cvtColor(
            image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
        )
    elif _is_palette_png(path):
        label = _read_palette_indices(path)
    else:
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if label is None:
            raise UnreadableImageError(f"cannot read label image {path}")
        if label.ndim == 3:
            raise ValueError(
                f"label image {path} has {label.shape[2]} colour channels; accepted label "
                f"files: {ACCEPTED_LABEL_FILES}"
            )
        if label.dtype not in (np.uint8, np.uint16):
            raise ValueError(
                f"label image {path} stores {label.dtype} pixels; accepted label files: "
                f"{ACCEPTED_LABEL_FILES}"
            )
    try:
        return convert_label_image(label, label_format)
    except ValueError as error:
        raise ValueError(f"label image {path}: {error}") from error
