"""The per-study report picture (PNG): key slices with artery overlays and the score table.

Drawn with matplotlib's Agg canvas (no display, no pyplot state). Slices are shown as a
radiologist reads axial CT: patient's left on the image right, anterior up. For the usual
LPS geometry (identity direction) the array is shown as stored; axes pointing the other
way (negative direction cosines) are flipped for display.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..constants import ARTERIES, ARTERY_COLORS, DISCLAIMER

#: Soft-tissue window (level, width) in HU.
WINDOW_LEVEL_HU = 40.0
WINDOW_WIDTH_HU = 400.0
#: Pixels per inch of the saved picture; a slice panel is about 4 inches wide.
DPI = 130


def key_slices(labels: np.ndarray, max_slices: int = 6) -> tuple[list[int], bool]:
    """Slices to show and whether they hold calcium.

    With labels: the (up to) ``max_slices`` slices with the largest labelled area, in slice
    order. Without: ``max_slices`` slices evenly spaced over the central 60% of the stack
    (where the heart lies in a cardiac scan).
    """
    n = labels.shape[0]
    area = np.count_nonzero(labels.reshape(n, -1), axis=1)
    hit = np.flatnonzero(area)
    if hit.size:
        order = np.argsort(-area[hit], kind="stable")[:max_slices]
        return sorted(int(k) for k in hit[order]), True
    count = min(max_slices, n)
    lo, hi = 0.2 * (n - 1), 0.8 * (n - 1)
    picks = np.unique(np.rint(np.linspace(lo, hi, count)).astype(int)) if count > 1 else np.array([n // 2])
    return [int(k) for k in picks], False


def _display_flips(direction: np.ndarray) -> tuple[bool, bool]:
    """(flip columns, flip rows) so that patient left is right and anterior is up."""
    d = np.asarray(direction, dtype=float)
    return bool(d[0, 0] < 0), bool(d[1, 1] < 0)


def _overlay_rgba(labels2d: np.ndarray) -> np.ndarray:
    rgba = np.zeros(labels2d.shape + (4,), dtype=np.float32)
    for value, name in enumerate(ARTERIES, start=1):
        mask = labels2d == value
        if mask.any():
            rgba[mask, :3] = ARTERY_COLORS[name]
            rgba[mask, 3] = 1.0
    return rgba


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_report_png(ct, labels: np.ndarray, report: dict, path: str | os.PathLike, max_slices: int = 6) -> Path:
    """Write the report picture of one study to ``path`` (PNG, written atomically).

    ``ct`` is a :class:`~..io.volume.CTVolume`, ``labels`` the (z, y, x) artery labels on
    its grid (0..4) and ``report`` the dict of :func:`.tables.build_report`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    labels = np.asarray(labels)
    slices, has_calcium = key_slices(labels, max_slices)
    flip_cols, flip_rows = _display_flips(ct.direction)
    ncols = 3  # fixed width, so that the table and texts below always have room
    nrows = int(np.ceil(len(slices) / ncols))
    panel = 4.0
    fig = Figure(figsize=(panel * ncols, panel * nrows + 4.2), dpi=DPI)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(nrows + 1, ncols, height_ratios=[panel] * nrows + [4.0], hspace=0.12, wspace=0.04)
    lo, hi = WINDOW_LEVEL_HU - WINDOW_WIDTH_HU / 2, WINDOW_LEVEL_HU + WINDOW_WIDTH_HU / 2
    dz, dy, dx = ct.spacing
    for n, k in enumerate(slices):
        ax = fig.add_subplot(grid[n // ncols, n % ncols])
        img, lab = ct.hu[k], labels[k]
        if flip_cols:
            img, lab = img[:, ::-1], lab[:, ::-1]
        if flip_rows:
            img, lab = img[::-1], lab[::-1]
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="bilinear", aspect=dy / dx)
        ax.imshow(_overlay_rgba(lab), interpolation="nearest", aspect=dy / dx)
        area = np.count_nonzero(lab) * dy * dx
        title = f"slice {k}" + (f"  calcium label {area:.1f} mm²" if has_calcium else "")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        for text, xy, ha, va in (("R", (0.01, 0.5), "left", "center"), ("L", (0.99, 0.5), "right", "center"),
                                 ("A", (0.5, 0.99), "center", "top"), ("P", (0.5, 0.01), "center", "bottom")):
            ax.text(*xy, text, transform=ax.transAxes, ha=ha, va=va, color="yellow", fontsize=8, weight="bold")

    # score table, legend, categories and disclaimer
    tab_ax = fig.add_subplot(grid[nrows, :])
    tab_ax.axis("off")
    rows = []
    for name in (*ARTERIES, "Total"):
        s = report["total"] if name == "Total" else report["arteries"][name]
        rows.append([name, _fmt(s["agatston"]), _fmt(s["volume_mm3"]), _fmt(s["mass_mg"]), str(s["lesions"])])
    table = tab_ax.table(
        cellText=rows,
        colLabels=["Artery", "Agatston", "Volume (mm³)", "Mass (mg)", "Lesions"],
        loc="upper left",
        bbox=[0.0, 0.40, 0.55, 0.60],
        cellLoc="center",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    for r, name in enumerate(ARTERIES, start=1):
        table[r, 0].set_facecolor((*ARTERY_COLORS[name], 0.55))
    handles = [Patch(color=ARTERY_COLORS[a], label=a) for a in ARTERIES]
    tab_ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.58, 1.0), ncol=4, fontsize=9,
                  title="Calcium label per artery", title_fontsize=9, frameon=False)
    kvp = report.get("kvp")
    lines = [
        f"Risk category (total Agatston): {report['risk_category']}      CAC-DRS: {report['cac_drs']}",
        f"Threshold {report['threshold_hu']:g} HU" + (f", {kvp:g} kVp" if kvp else "")
        + f", slice spacing {dz:.2f} mm, pixel {dy:.3f} x {dx:.3f} mm",
    ]
    if not has_calcium:
        lines.append("No calcium labelled: slices evenly spaced through the scan.")
    tab_ax.text(0.58, 0.70, "\n".join(lines), transform=tab_ax.transAxes, va="top", ha="left", fontsize=8.5)
    notes = [_clip(f"Warning: {w}", 150) for w in report.get("warnings", [])[:3]]
    if len(report.get("warnings", [])) > 3:
        notes.append(f"... and {len(report['warnings']) - 3} more warnings in the JSON report")
    tab_ax.text(0.0, 0.33, "\n".join(notes), transform=tab_ax.transAxes, va="top", ha="left", fontsize=8)
    tab_ax.text(0.0, 0.02, report.get("disclaimer", DISCLAIMER), transform=tab_ax.transAxes, va="bottom",
                ha="left", fontsize=8.5, style="italic", color="darkred")
    fig.suptitle(f"Coronary artery calcium - {Path(str(report.get('input', ct.source))).name}", fontsize=12)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
