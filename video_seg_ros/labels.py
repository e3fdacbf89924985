"""Label sets, colour palettes and label-format conversions: the one place for them.

Every other module (engine, node, tools, training) takes class names and palettes from here or from
a checkpoint's metadata, which is itself written from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Published id for pixels that carry no class (Cityscapes' ignore value).
IGNORE_ID = 255


@dataclass(frozen=True)
class LabelSet:
    """A named list of classes with their display colours.

    ``names[i]`` and ``palette[i]`` describe class id ``i``; id :data:`IGNORE_ID` is "unlabelled"
    and is drawn black.
    """

    name: str
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def palette_array(self) -> np.ndarray:
        """(256, 3) uint8 lookup table: class id -> RGB; unknown ids and 255 map to black."""
        return palette_lookup_table(self.palette)


CITYSCAPES = LabelSet(
    name="cityscapes",
    names=(
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "pole",
        "traffic light",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    ),
    palette=(
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (153, 153, 153),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
    ),
)

#: CamVid, SegNet's 11-class split; id 11 ("Unlabelled") is mapped to IGNORE_ID on reading.
CAMVID = LabelSet(
    name="camvid",
    names=(
        "sky",
        "building",
        "pole",
        "road",
        "pavement",
        "tree",
        "sign symbol",
        "fence",
        "car",
        "pedestrian",
        "bicyclist",
    ),
    palette=(
        (128, 128, 128),
        (128, 0, 0),
        (192, 192, 128),
        (128, 64, 128),
        (60, 40, 222),
        (128, 128, 0),
        (192, 128, 128),
        (64, 64, 128),
        (64, 0, 128),
        (64, 64, 0),
        (0, 128, 192),
    ),
)
CAMVID_UNLABELLED = 11

LABEL_SETS = {label_set.name: label_set for label_set in (CITYSCAPES, CAMVID)}

# Cityscapes labelId -> trainId (the official table of cityscapesScripts' labels.py).
_CITYSCAPES_LABEL_TO_TRAIN = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
CITYSCAPES_LABELID_TO_TRAINID = np.full(256, IGNORE_ID, dtype=np.uint8)
for _label_id, _train_id in _CITYSCAPES_LABEL_TO_TRAIN.items():
    CITYSCAPES_LABELID_TO_TRAINID[_label_id] = _train_id

#: The label-file formats the tools accept: class ids stored as train ids, as official Cityscapes
#: labelIds, as CamVid ids (11 = unlabelled), or Cityscapes ``*_gtFine_color.png`` colour images.
LABEL_FORMATS = ("trainids", "cityscapes-labelids", "camvid", "cityscapes-color")
#: Formats whose files hold one class id per pixel (single-channel, 16-bit or palette PNG).
ID_LABEL_FORMATS = ("trainids", "cityscapes-labelids", "camvid")


def _colour_keys(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


# Cityscapes gtFine_color -> trainId through the official colours of cityscapesScripts' labels.py.
# Two colours are shared there: polegroup uses pole's (153, 153, 153) and license plate uses car's
# (0, 0, 142); both read as that train class. Every colour of a class without a trainId (ground,
# parking, rail track, caravan, ...) and black read as IGNORE_ID.
_CITYSCAPES_COLOUR_KEYS = _colour_keys(np.asarray(CITYSCAPES.palette, dtype=np.uint8))
_CITYSCAPES_COLOUR_ORDER = np.argsort(_CITYSCAPES_COLOUR_KEYS)


def cityscapes_color_to_trainids(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB uint8 Cityscapes colour labels -> (H, W) uint8 train ids (IGNORE_ID
    elsewhere)."""
    keys = _colour_keys(rgb[..., :3])
    sorted_keys = _CITYSCAPES_COLOUR_KEYS[_CITYSCAPES_COLOUR_ORDER]
    position = np.clip(np.searchsorted(sorted_keys, keys), 0, len(sorted_keys) - 1)
    found = sorted_keys[position] == keys
    train_ids = _CITYSCAPES_COLOUR_ORDER[position].astype(np.uint8)
    return np.where(found, train_ids, np.uint8(IGNORE_ID)).astype(np.uint8)


def palette_lookup_table(palette) -> np.ndarray:
    """(256, 3) uint8 table from a list of RGB triples; ids past the list are black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    table[: len(colours)] = colours
    return table


def convert_label_image(label: np.ndarray, label_format: str) -> np.ndarray:
    """Turn a label image read from disk into train ids (uint8, IGNORE_ID = unlabelled).

    Args:
        label: (H, W) integer array of ids as stored in the file (8 or 16 bit), or (H, W, 3) RGB
            for ``cityscapes-color``.
        label_format: one of :data:`LABEL_FORMATS`.
    """
    label = np.asarray(label)
    if label_format == "cityscapes-color":
        if label.ndim != 3 or label.shape[2] < 3:
            raise ValueError(
                f"cityscapes-color labels must be RGB images, got shape {label.shape}"
            )
        return cityscapes_color_to_trainids(label)
    if label.ndim != 2:
        raise ValueError(f"label image must be single-channel (H, W), got shape {label.shape}")
    if label.dtype != np.uint8:
        # 16-bit label files: ids above 255 cannot be class ids of any label set here.
        if label.size and (label.min() < 0 or label.max() > 255):
            bad = label.max() if label.max() > 255 else label.min()
            raise ValueError(f"label image holds id {int(bad)}, outside 0..255")
        label = label.astype(np.uint8)
    if label_format == "trainids":
        return label.astype(np.uint8, copy=False)
    if label_format == "cityscapes-labelids":
        return CITYSCAPES_LABELID_TO_TRAINID[label.astype(np.uint8, copy=False)]
    if label_format == "camvid":
        out = label.astype(np.uint8, copy=True)
        out[out >= CAMVID_UNLABELLED] = IGNORE_ID
        return out
    raise ValueError(f"unknown label format {label_format!r}; choose one of {LABEL_FORMATS}")


def colorize(labels: np.ndarray, palette_table: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class ids -> (H, W, 3) uint8 RGB through a (256, 3) palette table."""
    return palette_table[labels]


def overlay(
    frame_rgb: np.ndarray, labels: np.ndarray, palette_table: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """Blend the palette colours over an RGB frame; unlabelled pixels keep the frame.

    Args:
        frame_rgb: (H, W, 3) uint8.
        labels: (H, W) uint8 class ids.
        alpha: weight of the colour layer, 0..1.
    """
    colour = colorize(labels, palette_table)
    # Integer blend in uint16 is several times faster than float on large frames.
    weight = int(round(alpha * 256))
    blended = (
        colour.astype(np.uint16) * weight + frame_rgb.astype(np.uint16) * (256 - weight)
    ) >> 8
    blended = blended.astype(np.uint8)
    unlabelled = labels == IGNORE_ID
    if unlabelled.any():
        blended[unlabelled] = frame_rgb[unlabelled]
    return blended


def default_colour(index: int) -> tuple[int, int, int]:
    """A distinct colour for class ``index`` of a table that gives none (PASCAL VOC's bit
    pattern)."""
    colour = [0, 0, 0]
    value = index + 1  # 0 would be black, the colour of unlabelled pixels
    for shift in range(7, -1, -1):
        for channel in range(3):
            colour[channel] |= ((value >> channel) & 1) << shift
        value >>= 3
    return tuple(colour)


def read_class_table(path) -> tuple[LabelSet, int | None]:
    """A class table from a YAML file; returns the label set and its ``ignore_id``.

    Format (``color`` optional: a distinct colour is chosen)::

        name: my_classes            # the label set's name (default: the file name)
        ignore_id: 255              # optional: the model's output id/channel that means "no class"
        classes:
          - {name: floor, color: [128, 64, 128]}
          - {name: wall, color: [70, 70, 70]}

    Class ``i`` of the list is published as id ``i``; at most 255 classes (255 is unlabelled).
    Raises ValueError naming what is wrong.
    """
    from pathlib import Path

    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ValueError(
            f"cannot read the class table {path}: {error.strerror or error}"
        ) from error
    except yaml.YAMLError as error:
        raise ValueError(
            f"the class table {path} is not valid YAML: {str(error).splitlines()[0]}"
        ) from error
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("classes"), list)
        or not data["classes"]
    ):
        raise ValueError(
            f"the class table {path} needs a non-empty 'classes' list of {{name, color}} entries"
        )
    unknown = set(data) - {"name", "ignore_id", "classes"}
    if unknown:
        raise ValueError(
            f"the class table {path} has unknown keys {sorted(unknown)}; known: name, "
            "ignore_id, classes"
        )
    if len(data["classes"]) > IGNORE_ID:
        raise ValueError(
            f"the class table {path} has {len(data['classes'])} classes; at most {IGNORE_ID} "
            f"fit in the published uint8 ids ({IGNORE_ID} = unlabelled)"
        )
    names, palette = [], []
    for index, entry in enumerate(data["classes"]):
        entry = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"class {index} of {path} needs a 'name' (a string), got {entry!r}")
        colour = entry.get("color", entry.get("colour"))
        if colour is None:
            colour = default_colour(index)
        if (
            not isinstance(colour, (list, tuple))
            or len(colour) != 3
            or not all(isinstance(c, int) and 0 <= c <= 255 for c in colour)
        ):
            raise ValueError(
                f"class {index} ({entry['name']}) of {path}: color must be [r, g, b] in 0..255, "
                f"got {colour!r}"
            )
        names.append(entry["name"])
        palette.append(tuple(int(c) for c in colour))
    ignore_id = data.get("ignore_id")
    if ignore_id is not None and (
        not isinstance(ignore_id, int) or not 0 <= ignore_id <= IGNORE_ID
    ):
        raise ValueError(f"ignore_id of {path} must be an id in 0..{IGNORE_ID}, got {ignore_id!r}")
    name = str(data.get("name") or path.stem)
    return LabelSet(name=name, names=tuple(names), palette=tuple(palette)), ignore_id
