"""The figures of a meta-training run, drawn from its ``metrics.jsonl`` rows.

:func:`plot_loss_curve` draws the workdir's ``loss_curve.png`` (called by
:func:`mgdd_jax.meta_train.train` at the end of a run, on the process that writes the files).
"""

from __future__ import annotations

from typing import Any

from mgdd_jax import outputs


def plot_loss_curve(rows: list[dict[str, Any]], path: str) -> None:
    """The meta-test and inner losses of ``metrics.jsonl`` rows over steps, as a PNG; with
    validation rows, a second panel: the bank's ``val_gap`` (ω minus identity after K
    adaptation steps; below 0 = adapting from ω is ahead)."""
    plt = outputs.pyplot()
    val_rows = [r for r in rows if "val_gap" in r]
    fig, axes = plt.subplots(1, 2 if val_rows else 1, figsize=(11 if val_rows else 6, 3.5),
                             squeeze=False, layout="constrained")
    ax = axes[0, 0]
    for k, label in (("meta_loss", "meta-test loss (Alg. 1 l. 17)"),
                     ("inner_loss_first", "inner loss, first step"),
                     ("inner_loss_last", "inner loss, last step")):
        pts = [(r["step"], r[k]) for r in rows if k in r]
        if pts:
            ax.plot(*zip(*pts), label=label, lw=1)
    ax.set_xlabel("meta step")
    ax.set_ylabel("Eq. 1 loss")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    if val_rows:
        ax2 = axes[0, 1]
        ax2.plot([r["step"] for r in val_rows], [r["val_gap"] for r in val_rows], "o-", lw=1)
        ax2.axhline(0.0, color="gray", lw=1, ls=":")
        ax2.set_xlabel("meta step")
        ax2.set_ylabel("val_gap (ω − identity)")
        ax2.set_title("validation bank, loss after K adaptation steps", fontsize=9)
    outputs.save_figure(fig, path)
