"""How one call's frames run through the network: checked and assigned to streams, run as one
batch (temporal fusion off) or wave by wave (every stream's k-th frame of the call together: a
memory model, temporal fusion and the adaptive clock). No ROS here.

The functions take what they use as arguments (the runner's ``infer``, the
:class:`~video_seg_ros.engine_io.FrameCodec`, each stream's
:class:`~video_seg_ros.temporal.StreamTemporalState` through ``state_of``); the engine owns them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from video_seg_ros import runtime
from video_seg_ros.engine_io import FrameCodec, SegmentationResult, check_frame
from video_seg_ros.temporal import FlowFusion, LateKeyframe, StreamTemporalState

#: The stream key of frames given without ``streams=`` (and of ``SegmentationEngine.segment``).
DEFAULT_STREAM = None

#: (N, 3, h, w) normalised batch and one stream key per frame -> logits (N, classes, h, w).
Infer = Callable[[torch.Tensor, list[Hashable]], torch.Tensor]
StateOf = Callable[[Hashable], StreamTemporalState]
#: The same, frame by frame: yields (index, logits (1, classes, h, w)), each valid until the next.
InferFrames = Callable[[torch.Tensor, list[Hashable]], Iterator[tuple[int, torch.Tensor]]]


def check_batch(
    frames: list[np.ndarray],
    streams: Sequence[Hashable] | None,
    stamps: Sequence[float] | None,
) -> list[Hashable]:
    """Refuse frames that are not (H, W, 3) uint8, frames of several sizes without ``streams``,
    and ``streams``/``stamps`` that do not give one item per frame; returns one stream key per
    frame."""
    for frame in frames:
        check_frame(frame)
    if streams is None:
        if any(frame.shape[:2] != frames[0].shape[:2] for frame in frames):
            raise ValueError(
                "all frames of a batch must have the same size (pass streams= to mix "
                "cameras of different sizes)"
            )
        streams = [DEFAULT_STREAM] * len(frames)
    elif len(streams) != len(frames):
        raise ValueError(
            f"streams must give one key per frame: {len(streams)} keys for {len(frames)} frames"
        )
    if stamps is not None and len(stamps) != len(frames):
        raise ValueError(
            f"stamps must give one time per frame: {len(stamps)} for {len(frames)} frames"
        )
    return list(streams)


def guard_streams(state_of: StateOf, frames, streams: list[Hashable], stamps) -> None:
    """Reset a stream whose new frame cannot continue it (another size, a stamp before the
    previous one: a looping bag), whatever the caller's own reset policy; a stream's frames
    within one call must continue each other."""
    seen: set = set()
    for index, (frame, stream) in enumerate(zip(frames, streams)):
        state = state_of(stream)
        stamp = None if stamps is None else float(stamps[index])
        if stream in seen:
            reason = state.continues(frame.shape[:2], stamp)
            if reason is not None:
                raise ValueError(
                    f"frame {index} of stream {stream!r} cannot follow the previous one "
                    f"in the same call ({reason}); segment it in a call of its own"
                )
        state.guard(frame.shape[:2], stamp)
        seen.add(stream)


def waves(streams: list[Hashable]) -> list[list[int]]:
    """Frame indices grouped so that wave k holds every stream's k-th frame (in call order)."""
    occurrence: dict[Hashable, int] = defaultdict(int)
    grouped: dict[int, list[int]] = defaultdict(list)
    for index, stream in enumerate(streams):
        grouped[occurrence[stream]].append(index)
        occurrence[stream] += 1
    return list(grouped.values())


def infer_with_memory(
    runner, batch: torch.Tensor, streams: list[Hashable], memory_of: Callable[[Hashable], object]
) -> torch.Tensor:
    """A memory model's logits (N, classes, h, w) for ``batch`` (N, 3, h, w), each frame with its
    stream's memory: a stream's frames run one after the other; different streams together."""
    grouped = waves(streams)
    if len(grouped) == 1:
        return runner.run(batch, [memory_of(stream) for stream in streams])
    logits: list[torch.Tensor | None] = [None] * len(streams)
    for indices in grouped:
        memories = [memory_of(streams[i]) for i in indices]
        part = batch[indices[0] : indices[0] + 1] if len(indices) == 1 else batch[indices]
        out = runner.run(part, memories)
        for j, i in enumerate(indices):
            logits[i] = out[j]
    return torch.stack(logits)


def segment_plain(
    codec: FrameCodec,
    infer_frames: InferFrames,
    frames: list[np.ndarray],
    channel_order: str,
    with_confidence: bool,
    streams: list[Hashable],
    infer_class_index: InferFrames | None = None,
) -> list[SegmentationResult]:
    """Temporal fusion off: every frame through the network, each postprocessed at its own size
    as soon as its logits come (a backend running frame by frame runs the next one meanwhile);
    times left at 0 for the caller. ``infer_class_index`` (a backend that takes each pixel's
    maximum itself, yielding (index, class index (1, h, w))) serves the frames when only labels
    resized nearest are asked for."""
    batch = codec.preprocess(frames, channel_order)
    results = []
    with torch.inference_mode():
        if infer_class_index is not None and not with_confidence and codec.upsample == "labels":
            for index, class_index in infer_class_index(batch, streams):
                labels = codec.labels_from_index(class_index, frames[index].shape[:2])
                results.append(SegmentationResult(labels[0].cpu().numpy(), None, 0.0))
            return results
        for index, logits in infer_frames(batch, streams):
            labels, confidence = codec.postprocess(
                logits.float(), frames[index].shape[:2], with_confidence
            )
            results.append(
                SegmentationResult(
                    labels[0].cpu().numpy(),
                    None if confidence is None else confidence[0].cpu().numpy(),
                    0.0,
                )
            )
    return results


class NetworkThread:
    """The thread that runs the network while ``keyframe_lag`` > 0: keyframes run there in the
    background while the frames between are propagated. While a lag is in force every network
    run goes through it (a frame that needs its result at once waits for it), so the runner is
    never used by two threads."""

    def __init__(self, flush_denormals: bool):
        self._flush = flush_denormals
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, job: Callable[[], torch.Tensor]) -> Future:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                1,
                thread_name_prefix="keyframe_network",
                initializer=self._start_thread,
                initargs=(torch.get_num_threads(),),
            )
        return self._executor.submit(job)

    def _start_thread(self, threads: int) -> None:
        # Per-thread settings: the caller's intra-op threads, and flushed denormals (the
        # published weights' activations cost 10x without it on some CPUs).
        torch.set_num_threads(threads)
        if self._flush:
            runtime.flush_denormals()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def segment_fused(
    codec: FrameCodec,
    fusion: FlowFusion,
    infer: Infer,
    state_of: StateOf,
    device: torch.device,
    frames: list[np.ndarray],
    channel_order: str,
    with_confidence: bool,
    streams: list[Hashable],
    stamps: Sequence[float] | None,
    network_thread: NetworkThread | None = None,
) -> list[SegmentationResult]:
    """Temporal fusion / adaptive clock: per wave (every stream's k-th frame of this call),
    flow and keyframe decisions first, then the network on the keyframes as one batch, then
    fusion. With ``keyframe_lag`` > 0 the keyframes' network runs on ``network_thread`` and
    joins their streams that many frames later."""
    settings = fusion.settings
    lag = settings.keyframe_lag if settings.mode == "adaptive" else 0
    if lag and network_thread is None:
        raise ValueError("keyframe_lag > 0 needs a network thread")

    def network(indices: list[int]) -> torch.Tensor:
        return infer(
            codec.preprocess([frames[i] for i in indices], channel_order),
            [streams[i] for i in indices],
        )

    results: list[SegmentationResult | None] = [None] * len(frames)
    for wave in waves(streams):
        with torch.inference_mode():
            plans = []
            for i in wave:
                state = state_of(streams[i])
                analysis = fusion.analyse(state, frames[i])
                stamp = None if stamps is None else float(stamps[i])
                reason = fusion.keyframe_reason(state, analysis, stamp)
                late = None
                if state.late is not None:
                    if analysis.flow is None:  # nothing to carry it along: start afresh
                        state.late.settle()
                        state.late = None
                    else:
                        state.late.flows.append(analysis.flow)
                        if len(state.late.flows) >= lag:
                            late = fusion.late_probabilities(state.late)
                            state.late = None
                        else:
                            reason = None  # this stream's network is busy
                plans.append((i, state, analysis, reason, stamp, late))
        keyframes = [plan[0] for plan in plans if plan[3] is not None]
        # Keyframes that cannot wait: nothing to propagate yet (a stream's first frame).
        now = [i for i in keyframes if not lag or plans[wave.index(i)][3] == "start"]
        background = [i for i in keyframes if i not in now]
        logits, network_ms = None, 0.0
        if now:
            started = time.perf_counter()
            logits = network_thread.submit(lambda: network(now)).result() if lag else network(now)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # so that the network's time is its own
            network_ms = (time.perf_counter() - started) * 1000.0 / len(now)
        if background:
            job = network_thread.submit(lambda indices=background: network(indices))
            for plan in plans:
                if plan[0] in background:
                    plan[1].late = LateKeyframe(job, background.index(plan[0]))
        with torch.inference_mode():
            for i, state, analysis, reason, stamp, late in plans:
                started = time.perf_counter()
                own = None if i not in now else logits[now.index(i)][None].float()
                fused, exact = fusion.update(
                    state, frames[i].shape[:2], analysis, own, reason, stamp, late
                )
                if exact:
                    labels, confidence = codec.postprocess(
                        own, frames[i].shape[:2], with_confidence
                    )
                else:
                    labels, confidence = codec.postprocess_probabilities(
                        fused, frames[i].shape[:2], with_confidence
                    )
                results[i] = SegmentationResult(
                    labels[0].cpu().numpy(),
                    None if confidence is None else confidence[0].cpu().numpy(),
                    0.0,
                    keyframe=reason is not None,
                    flow=analysis.flow,
                    network_ms=network_ms if i in now else 0.0,
                    flow_ms=analysis.flow_ms,
                    fusion_ms=(time.perf_counter() - started) * 1000.0,
                )
    return results
