"""The loss-curve PNG drawn at the end of a run from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

CURVE_FILE = "loss_curve.png"


def draw_loss_curve(metrics: Sequence[dict[str, Any]], path: Path, title: str,
                    training_label: str = "forget CE") -> Path | None:
    """Plot forget CE, retain CE and the total loss per step, KL and learning rate below; return the file or None.

    The total loss is drawn only when it combines several terms.
    """
    if not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps = [row["step"] for row in metrics]
    figure, (losses_axis, kl_axis) = plt.subplots(
        2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    combined = any(row.get(key) is not None for row in metrics for key in ("retain_ce", "kl", "npo"))
    curves = [("forget_ce", training_label, "-"), ("retain_ce", "retain CE", "-"), ("npo", "NPO term", "-")]
    if combined:
        curves.append(("loss", "total loss", "--"))
    for key, label, style in curves:
        values = [row.get(key) for row in metrics]
        if any(value is not None for value in values):
            losses_axis.plot(steps, [float("nan") if value is None else value for value in values], style,
                             label=label, marker="." if len(steps) < 40 else None)
    losses_axis.set_ylabel("loss (nats per token)")
    losses_axis.set_title(title)
    losses_axis.grid(alpha=0.3)
    _mark_epochs(metrics, losses_axis)
    losses_axis.legend(loc="best", fontsize=8)

    kl_values = [row.get("kl") for row in metrics]
    if any(value is not None for value in kl_values):
        kl_axis.plot(steps, [float("nan") if value is None else value for value in kl_values], color="tab:purple",
                     label="KL(reference || model)")
        kl_axis.set_ylabel("KL (nats)")
    else:
        kl_axis.set_yticks([])
    rate_axis = kl_axis.twinx()
    rate_axis.plot(steps, [row.get("lr") for row in metrics], color="tab:gray", linestyle=":", label="learning rate")
    rate_axis.set_ylabel("learning rate")
    # One legend above the lower panel, outside the plot, so it never hides a KL peak.
    handles, labels = [], []
    for axis in (kl_axis, rate_axis):
        axis_handles, axis_labels = axis.get_legend_handles_labels()
        handles += axis_handles
        labels += axis_labels
    kl_axis.legend(handles, labels, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(labels), fontsize=8,
                   frameon=False)
    kl_axis.set_xlabel("optimizer step")
    kl_axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    kl_axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _mark_epochs(metrics: Sequence[dict[str, Any]], axis: Any) -> None:
    previous = None
    for row in metrics:
        epoch = int(row.get("epoch", 0) - 1e-9) if row.get("epoch") else 0
        if previous is not None and epoch != previous:
            labelled = any(line.get_label() == "epoch boundary" for line in axis.get_lines())
            axis.axvline(row["step"] - 0.5, color="0.8", linewidth=0.8,
                         label="_nolegend_" if labelled else "epoch boundary")
        previous = epoch
