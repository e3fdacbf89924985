"""The report of a label-free adaptation run (:mod:`video_seg_ros.adaptation`): JSON, Markdown
and a plot of TC on the held-out tail and the training losses."""

from __future__ import annotations

import json
from pathlib import Path


def format_markdown(report: dict) -> str:
    """The report as Markdown: one table, before vs after, on the held-out tail."""

    def pct(value):
        return "n/a" if value is None else f"{100.0 * value:.2f}"

    before, after = report["before"], report["after"]
    held = report["holdout_frames"]
    train = report["train_frames"]
    training = report["training"]
    lines = [
        f"## Label-free adaptation of {report['model']} to {report['source']['path']}",
        "",
        f"{report['frames']} frames at {report['frame_size'][0]}x{report['frame_size'][1]}: "
        f"trained on frames {train[0]}-{train[-1]}, held out {held[0]}-{held[-1]} "
        f"({report['tc_pairs']} TC pairs); {training['steps']} steps, {training['precision']} on "
        f"{training['device']}.",
        "",
        "| held-out frames | TC % | TC pixel agreement % | pixel agreement with teacher % "
        "| mIoU vs teacher % |",
        "|---|---:|---:|---:|---:|",
        f"| before (input model = teacher) | {pct(before['tc'])} | "
        f"{pct(before['tc_pixel_agreement'])} | "
        f"{pct(before['teacher_pixel_agreement'])} | {pct(before['teacher_miou'])} |",
        f"| after ({Path(report['output_checkpoint']).name}) | {pct(after['tc'])} | "
        f"{pct(after['tc_pixel_agreement'])} | {pct(after['teacher_pixel_agreement'])} | "
        f"{pct(after['teacher_miou'])} |",
        "",
        "TC as video-seg-eval measures it (DIS ultrafast flow at <= 1024 px, nearest label warp, "
        "dataset-level). Agreement with the teacher stands in for accuracy where there are no "
        "labels.",
    ]
    if report.get("command"):
        lines += ["", f"command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


def plot_report(report: dict, path: Path) -> None:
    """TC per held-out frame before/after, and the training losses, as one PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    pairs = report["per_pair"]
    for key, name in (("tc_before", "before (input model)"), ("tc_after", "after adaptation")):
        points = [(p["frame"], 100.0 * p[key]) for p in pairs if p.get(key) is not None]
        if points:
            ax_tc.plot(*zip(*points), marker="o", label=name)
    ax_tc.set_xlabel("held-out frame (drive index)")
    ax_tc.set_ylabel("TC with the previous frame, %")
    ax_tc.set_title("temporal consistency on the held-out tail", fontsize=9)
    if pairs:
        ax_tc.legend(fontsize=8)
    curve = report["loss_curve"]
    for key in sorted({k for row in curve for k in row} - {"iteration"}):
        points = [(row["iteration"], row[key]) for row in curve if key in row and row[key] > 0]
        if points:
            ax_loss.plot(*zip(*points), label=key, linewidth=1)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("weighted loss")
    if any(curve):
        ax_loss.set_yscale("log")
        ax_loss.legend(fontsize=8)
    ax_loss.set_title("training losses", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_report(report: dict, paths) -> None:
    """``report.json``, ``report.md`` and the plot at ``paths`` (an adaptation.OutputPaths)."""
    paths.report_json.parent.mkdir(parents=True, exist_ok=True)
    paths.report_json.write_text(json.dumps(report, indent=2) + "\n")
    paths.report_markdown.write_text(format_markdown(report))
    plot_report(report, paths.plot)


__all__ = ["format_markdown", "plot_report", "write_report"]
