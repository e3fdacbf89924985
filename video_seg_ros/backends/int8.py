"""Post-training int8 quantisation of an OpenVINO model with NNCF, for ``precision: int8``.

The fp32 IR (:mod:`.openvino_backend`) is quantised from calibration frames, the engine's
:class:`~video_seg_ros.precision.CalibrationSet` (the frames a user points to, else the synthetic
street), and cached beside the fp32 conversion, keyed by the fp32 key, the calibration frames,
the recipe and the NNCF version. The engine's accuracy gate then compares the int8 labels with
torch fp32 on the same frames and refuses int8 below it (:mod:`video_seg_ros.precision`).

NNCF's defaults (symmetric activations, fast bias correction) cost published ESPNet 18 mIoU on
Cityscapes; :data:`RECIPES` names the settings ``bench/precision.py --int8-recipes`` compares, and
``accuracy-control`` reverts the layers that hurt most to fp32 until the labels agree with fp32
within ``max_drop``, which needs no per-architecture knowledge but takes minutes. NNCF is
imported only when int8 is asked for. No ROS here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from video_seg_ros.backends import BackendError

LOG = logging.getLogger(__name__)

#: The NNCF release the package is tested with (pinned in requirements.txt).
NNCF_REQUIREMENT = "nncf==3.4.0"


@dataclass(frozen=True)
class Int8Recipe:
    """How a model is quantised; every field is part of the cached conversion's key.

    Attributes:
        preset: NNCF's ``performance`` (symmetric activations) or ``mixed`` (asymmetric
            activations: PReLU outputs and logits are not centred on zero).
        fast_bias_correction: NNCF's cheap bias correction (False: the slower, per-layer one).
        ignored_patterns: regular expressions over OpenVINO node names kept in fp32.
        ignored_types: OpenVINO operation types kept in fp32 (``"Add"``: residual and
            hierarchical-fusion sums, whose inputs differ in range).
        activation_ranges: how NNCF estimates each activation's range from the calibration
            frames: ``"default"`` (NNCF's choice for the preset) or a name of
            ``nncf.quantization.range_estimator.RangeEstimatorParametersSet`` (``"HISTOGRAM"``,
            ``"MEAN_QUANTILE"``, ...), which clip outliers instead of covering them.
        accuracy_control: revert layers to fp32 (most harmful first) until the share of labels
            equal to the fp32 model's labels drops by at most ``max_drop`` on the calibration
            frames (NNCF ``quantize_with_accuracy_control``).
        max_drop: see ``accuracy_control``.
        ranking_frames: frames NNCF ranks each layer's harm on (at most; a bound on the time the
            ranking takes, one inference per layer and frame).
        max_reverted_groups: at most this many rounds of reverting layers to fp32 (a bound on
            the time; the engine's gate judges the result either way).
    """

    preset: str = "mixed"
    fast_bias_correction: bool = False
    ignored_patterns: tuple[str, ...] = ()
    ignored_types: tuple[str, ...] = ()
    activation_ranges: str = "default"
    accuracy_control: bool = False
    max_drop: float = 0.005
    ranking_frames: int = 8
    max_reverted_groups: int = 10

    def key(self) -> str:
        return repr(sorted(asdict(self).items()))


#: Named recipes (``SegmentationEngine(int8_recipe=...)``, ``bench/precision.py --int8-recipes``).
RECIPES = {
    "nncf-defaults": Int8Recipe(preset="performance", fast_bias_correction=True),
    "mixed": Int8Recipe(preset="mixed", fast_bias_correction=False),
    "accuracy-control": Int8Recipe(
        preset="mixed", fast_bias_correction=False, accuracy_control=True
    ),
    # The variations of `mixed` compared on published p2q8 (docs/models.md); none reached the
    # 99 % gate there, they are kept so the comparison can be run again on other models.
    "mixed-histogram": Int8Recipe(activation_ranges="HISTOGRAM"),
    "mixed-mean-quantile": Int8Recipe(activation_ranges="MEAN_QUANTILE"),
    "mixed-fp32-adds": Int8Recipe(ignored_types=("Add",)),
    "mixed-fp32-adds-deconv": Int8Recipe(ignored_types=("Add", "ConvolutionBackpropData")),
    "mixed-fp32-level2-0-adds": Int8Recipe(ignored_patterns=("/model/encoder/level2_0/Add.*",)),
    "mixed-histogram-fp32-adds": Int8Recipe(ignored_types=("Add",), activation_ranges="HISTOGRAM"),
}

#: What ``precision: int8`` uses unless told otherwise. Not ``accuracy-control``: on published
#: ESPNet p2q8 at 1024x512 its ranking ran for minutes and its drop stalled near 1 % of the labels
#: (errors spread over many layers, docs/models.md); a node must start in bounded time.
DEFAULT_RECIPE = "mixed"


def recipe_named(name: str | Int8Recipe) -> Int8Recipe:
    """A recipe by name (or the recipe itself); ValueError naming the known ones."""
    if isinstance(name, Int8Recipe):
        return name
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(
            f"unknown int8 recipe {name!r}; use one of {', '.join(RECIPES)}"
        ) from None


def import_nncf():
    """The ``nncf`` module, or :class:`BackendError` saying how to install it."""
    try:
        import nncf
    except ImportError as error:
        raise BackendError(
            f"precision 'int8' needs NNCF: `pip install {NNCF_REQUIREMENT}` (pinned in "
            "requirements.txt), or use precision 'fp32'."
        ) from error
    return nncf


def nncf_version() -> str:
    return getattr(import_nncf(), "__version__", "unknown")


def quantize(
    ov_model,
    batches: Sequence[np.ndarray],
    recipe: Int8Recipe,
    input_name: str,
    threads: int | None = None,
):
    """The int8 OpenVINO model of ``ov_model`` (fp32), calibrated on ``batches``.

    Args:
        ov_model: an ``openvino.Model`` with one image input ``input_name``.
        batches: (1, 3, h, w) float32 normalised network inputs.
        recipe: the settings (:class:`Int8Recipe`).
        threads: CPU threads for the inference NNCF runs while calibrating.
    Raises:
        BackendError: NNCF missing, or NNCF failing on this model (the message says what to use).
    """
    nncf = import_nncf()
    if not batches:
        raise BackendError("int8 calibration needs at least one frame")
    presets = {
        "performance": nncf.QuantizationPreset.PERFORMANCE,
        "mixed": nncf.QuantizationPreset.MIXED,
    }
    if recipe.preset not in presets:
        raise BackendError(f"unknown NNCF preset {recipe.preset!r}; use one of {list(presets)}")
    inputs = [np.ascontiguousarray(batch, dtype=np.float32) for batch in batches]
    common = {
        "preset": presets[recipe.preset],
        "target_device": nncf.TargetDevice.CPU,
        "subset_size": len(inputs),
        "fast_bias_correction": recipe.fast_bias_correction,
        "ignored_scope": nncf.IgnoredScope(
            patterns=list(recipe.ignored_patterns),
            types=list(recipe.ignored_types),
            validate=False,
        )
        if recipe.ignored_patterns or recipe.ignored_types
        else None,
    }
    advanced = _advanced_parameters(recipe.activation_ranges)
    try:
        if not recipe.accuracy_control:
            return nncf.quantize(
                ov_model,
                nncf.Dataset(inputs, _image_input(input_name)),
                advanced_parameters=advanced,
                **common,
            )
        reference = _reference_labels(ov_model, inputs, input_name, threads)
        # Items carry the fp32 labels: the validation function scores agreement with them.
        items = list(zip(inputs, reference))
        dataset = nncf.Dataset(items, lambda item: {input_name: item[0]})
        return nncf.quantize_with_accuracy_control(
            ov_model,
            calibration_dataset=dataset,
            validation_dataset=dataset,
            validation_fn=_agreement_with_reference,
            max_drop=recipe.max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(
                ranking_subset_size=min(recipe.ranking_frames, len(items)),
                max_num_iterations=recipe.max_reverted_groups,
            ),
            advanced_quantization_parameters=advanced,
            **common,
        )
    except BackendError:
        raise
    except Exception as error:  # NNCF raises many types; the node must get one clear error
        raise BackendError(
            f"NNCF could not quantise the model to int8 ({type(error).__name__}: "
            f"{str(error).strip()[:300]}); use precision 'fp32'."
        ) from error


def _advanced_parameters(activation_ranges: str):
    """NNCF's advanced parameters for ``activation_ranges`` (None: NNCF's defaults)."""
    if activation_ranges == "default":
        return None
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    known = [name for name in dir(RangeEstimatorParametersSet) if name.isupper()]
    if activation_ranges not in known:
        raise BackendError(
            f"unknown activation range estimator {activation_ranges!r}; use 'default' or one "
            f"of {known}"
        )
    return AdvancedQuantizationParameters(
        activations_range_estimator_params=getattr(RangeEstimatorParametersSet, activation_ranges)
    )


def _image_input(input_name: str):
    return lambda batch: {input_name: batch}


def _reference_labels(ov_model, inputs, input_name, threads) -> list[np.ndarray]:
    """(h, w) argmax labels of the fp32 model, the target the quantised model must keep."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = ov.Core().compile_model(ov_model, "CPU", config)
    return [np.asarray(compiled({input_name: batch})[0]).argmax(1)[0] for batch in inputs]


def _agreement_with_reference(compiled_model, items) -> tuple[float, list[float]]:
    """NNCF's validation function: the share of pixels whose label equals the fp32 label, over
    all items, and per item (NNCF ranks the layers to revert by the per-item values)."""
    per_item, equal, total = [], 0, 0
    for image, reference in items:
        labels = np.asarray(compiled_model(image)[0]).argmax(1)[0]
        same = int((labels == reference).sum())
        per_item.append(same / reference.size)
        equal, total = equal + same, total + reference.size
    return (equal / total if total else 1.0), per_item
