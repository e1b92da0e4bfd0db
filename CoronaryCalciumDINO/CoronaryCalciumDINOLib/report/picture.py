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
from ..data.studies import study_name
from ..io.atomic import atomic_path
from ..scoring import ScoringParams, score

#: Soft-tissue window (level, width) in HU.
WINDOW_LEVEL_HU = 40.0
WINDOW_WIDTH_HU = 400.0
#: Pixels per inch of the saved picture; a slice panel is about 4 inches wide.
DPI = 130


def key_slices(labels: np.ndarray, max_slices: int = 6) -> tuple[list[int], bool]:
    """Slices to show and whether they hold calcium.

    With labels: the (up to) ``max_slices`` slices with the largest labelled area, in slice
    order, a slice next to one already picked only when there are not enough others. Without: ``max_slices`` slices evenly spaced over the central 60% of the stack
    (where the heart lies in a cardiac scan).
    """
    n = labels.shape[0]
    area = np.count_nonzero(labels.reshape(n, -1), axis=1)
    hit = np.flatnonzero(area)
    if hit.size:
        ranked = [int(k) for k in hit[np.argsort(-area[hit], kind="stable")]]
        picks: list[int] = []
        for k in ranked:  # first pass: no two neighbouring slices (mostly one lesion twice)
            if len(picks) < max_slices and all(abs(k - p) > 1 for p in picks):
                picks.append(k)
        for k in ranked:
            if len(picks) < max_slices and k not in picks:
                picks.append(k)
        return sorted(picks), True
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


#: Zoomed insets: at most this many (the largest lesions first), this many per row, this wide.
MAX_INSETS = 48
INSETS_PER_ROW = 8
INSET_FIELD_MM = 24.0


def study_title(report: dict, ct=None) -> str:
    """The study's name for titles: ``report["study"]``, else the input's name (a file
    called ``ct.*`` is named after its folder, as everywhere)."""
    if report.get("study"):
        return str(report["study"])
    source = str(report.get("input", getattr(ct, "source", "")) or "")
    return study_name(source) if source else "study"


def scored_lesions(ct, labels: np.ndarray, report: dict, result=None) -> list[dict]:
    """The scored lesions with where they are: ``{"number", "artery", "slice", "rows",
    "cols", "area_mm2", "agatston"}``, ``number`` being the lesion's place (1-based) in the
    report's ``lesions`` list. The voxels come from the scoring itself: ``result`` (scored
    with ``keep_lesion_voxels=True``) or, without it, the labels scored again with the
    report's definition (threshold, bands, minimum area)."""
    if result is None or getattr(result, "lesion_voxels", None) is None:
        params = ScoringParams(
            threshold_hu=float(report.get("threshold_hu", 130.0)),
            band_edges_hu=tuple(report.get("band_edges_hu") or (130.0, 200.0, 300.0, 400.0)),
            min_area_mm2=float(report.get("min_area_mm2", 1.0)),
        )
        result = score(ct.hu, np.asarray(labels), ct.spacing, params, keep_lesion_voxels=True)
    out = []
    for n, (lesion, voxels) in enumerate(zip(result.lesions, result.lesion_voxels), start=1):
        _, rows, cols = np.unravel_index(np.asarray(voxels), ct.shape)
        out.append({"number": n, "artery": lesion.artery, "slice": int(lesion.slice), "rows": rows, "cols": cols,
                    "area_mm2": float(lesion.area_mm2), "agatston": float(lesion.agatston)})
    return out


def _kept_map(shape, lesions: list[dict]) -> np.ndarray:
    kept = np.zeros(shape, dtype=np.uint8)
    for les in lesions:
        kept[les["slice"], les["rows"], les["cols"]] = ARTERIES.index(les["artery"]) + 1
    return kept


def write_report_png(ct, labels: np.ndarray, report: dict, path: str | os.PathLike, max_slices: int = 6,
                     result=None) -> Path:
    """Write the report picture of one study to ``path`` (PNG, written atomically).

    ``ct`` is a :class:`~..io.volume.CTVolume`, ``labels`` the (z, y, x) artery labels on
    its grid (0..4), ``report`` the dict of :func:`.tables.build_report` and ``result`` its
    :class:`~..scoring.ScoreResult` if scored with ``keep_lesion_voxels=True`` (else the
    labels are scored again for the lesions' positions).

    What is drawn is what is scored: the overlay shows the kept lesions' voxels only. The
    key slices are those with the most scored calcium; each scored lesion is circled and
    numbered on them (its place in the JSON ``lesions`` list) and shown in a zoomed inset
    (up to :data:`MAX_INSETS`, the largest first), so lesions of a few pixels stay visible.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, Patch

    lesions = scored_lesions(ct, labels, report, result)
    kept = _kept_map(ct.shape, lesions)
    slices, has_calcium = key_slices(kept, max_slices)
    flip_cols, flip_rows = _display_flips(ct.direction)
    nz, ny, nx = ct.shape

    def disp(rows, cols):
        rows, cols = np.asarray(rows, float), np.asarray(cols, float)
        return (ny - 1 - rows if flip_rows else rows), (nx - 1 - cols if flip_cols else cols)

    def oriented(a2d):
        if flip_cols:
            a2d = a2d[:, ::-1]
        if flip_rows:
            a2d = a2d[::-1]
        return a2d

    shown = sorted(lesions, key=lambda les: -les["area_mm2"])[:MAX_INSETS]
    shown.sort(key=lambda les: les["number"])
    ncols = 3  # fixed width, so that the table and texts below always have room
    nrows = int(np.ceil(len(slices) / ncols))
    irows = int(np.ceil(len(shown) / INSETS_PER_ROW))
    panel, inset_h, table_h = 3.75, 1.65, 3.6
    height = panel * nrows + inset_h * irows + table_h + 0.6
    fig = Figure(figsize=(4.0 * ncols, height), dpi=DPI)
    FigureCanvasAgg(fig)
    outer = fig.add_gridspec(3 if irows else 2, 1,
                             height_ratios=[panel * nrows] + ([inset_h * irows] if irows else []) + [table_h],
                             hspace=0.08, top=1 - 0.5 / height, bottom=0.02)
    grid = outer[0].subgridspec(nrows, ncols, hspace=0.12, wspace=0.04)
    lo, hi = WINDOW_LEVEL_HU - WINDOW_WIDTH_HU / 2, WINDOW_LEVEL_HU + WINDOW_WIDTH_HU / 2
    dz, dy, dx = ct.spacing
    marker_r = max(6.0 / dx, 8.0)  # circle radius: 6 mm, at least 8 pixels
    for n, k in enumerate(slices):
        ax = fig.add_subplot(grid[n // ncols, n % ncols])
        ax.set_anchor("S")
        ax.imshow(oriented(ct.hu[k]), cmap="gray", vmin=lo, vmax=hi, interpolation="bilinear", aspect=dy / dx)
        ax.imshow(_overlay_rgba(oriented(kept[k])), interpolation="nearest", aspect=dy / dx)
        on_slice = [les for les in lesions if les["slice"] == k]
        for les in on_slice:
            r, c = disp(les["rows"], les["cols"])
            cy, cx = float(r.mean()), float(c.mean())
            extent = max(float(np.ptp(r)) * dy / dx, float(np.ptp(c))) / 2 + 4.0
            colour = ARTERY_COLORS[les["artery"]]
            ax.add_patch(Circle((cx, cy), max(marker_r, extent), fill=False, lw=1.3, ec=colour))
            ax.text(cx + max(marker_r, extent) * 0.75, cy - max(marker_r, extent) * 0.75, str(les["number"]),
                    color=colour, fontsize=8, weight="bold", ha="left", va="bottom",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "black", "ec": "none", "alpha": 0.6})
        if has_calcium:
            area = sum(les["area_mm2"] for les in on_slice)
            title = f"slice {k}: {len(on_slice)} lesion{'s' if len(on_slice) != 1 else ''}, {area:.1f} mm²"
        else:
            title = f"slice {k}"
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        for text, xy, ha, va in (("R", (0.01, 0.5), "left", "center"), ("L", (0.99, 0.5), "right", "center"),
                                 ("A", (0.5, 0.99), "center", "top"), ("P", (0.5, 0.01), "center", "bottom")):
            ax.text(*xy, text, transform=ax.transAxes, ha=ha, va=va, color="yellow", fontsize=8, weight="bold")

    if irows:  # one zoomed inset per scored lesion: CT with the lesion outlined
        igrid = outer[1].subgridspec(irows, INSETS_PER_ROW, hspace=0.25, wspace=0.05)
        half_c, half_r = INSET_FIELD_MM / (2 * dx), INSET_FIELD_MM / (2 * dy)
        for n, les in enumerate(shown):
            ax = fig.add_subplot(igrid[n // INSETS_PER_ROW, n % INSETS_PER_ROW])
            k = les["slice"]
            r, c = disp(les["rows"], les["cols"])
            cy, cx = float(r.mean()), float(c.mean())
            ax.imshow(oriented(ct.hu[k]), cmap="gray", vmin=lo, vmax=hi + 400, interpolation="nearest",
                      aspect=dy / dx)
            mask = np.zeros((ny, nx), dtype=float)
            mask[les["rows"], les["cols"]] = 1.0
            ax.contour(oriented(mask), levels=[0.5], colors=[ARTERY_COLORS[les["artery"]]], linewidths=1.2)
            ax.set_xlim(cx - half_c, cx + half_c)
            ax.set_ylim(cy + half_r, cy - half_r)
            ax.set_title(f"#{les['number']} {les['artery']} s{k} {les['area_mm2']:.1f}mm²", fontsize=6.5, pad=2)
            ax.set_xticks([])
            ax.set_yticks([])

    # score table, legend, categories and disclaimer
    tab_ax = fig.add_subplot(outer[-1])
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
                  title="Scored calcium per artery", title_fontsize=9, frameon=False)
    kvp = report.get("kvp")
    lines = [
        f"Risk category (total Agatston): {report['risk_category']}      CAC-DRS: {report['cac_drs']}",
        f"Threshold {report['threshold_hu']:g} HU" + (f", {kvp:g} kVp" if kvp else "")
        + f", slice spacing {dz:.2f} mm, pixel {dy:.3f} x {dx:.3f} mm",
    ]
    if has_calcium:
        lines.append(f"Circles and insets: each scored lesion, numbered as in the JSON report"
                     + (f" ({len(lesions) - len(shown)} smallest not in insets)" if len(shown) < len(lesions) else ""))
    else:
        lines.append("No calcium scored: slices evenly spaced through the scan.")
    tab_ax.text(0.58, 0.70, "\n".join(lines), transform=tab_ax.transAxes, va="top", ha="left", fontsize=8.5)
    notes = [_clip(f"Warning: {w}", 150) for w in report.get("warnings", [])[:3]]
    if len(report.get("warnings", [])) > 3:
        notes.append(f"... and {len(report['warnings']) - 3} more warnings in the JSON report")
    tab_ax.text(0.0, 0.33, "\n".join(notes), transform=tab_ax.transAxes, va="top", ha="left", fontsize=8)
    tab_ax.text(0.0, 0.02, report.get("disclaimer", DISCLAIMER), transform=tab_ax.transAxes, va="bottom",
                ha="left", fontsize=8.5, style="italic", color="darkred")
    fig.suptitle(f"Coronary artery calcium - {study_title(report, ct)}", fontsize=12, y=1 - 0.15 / height)

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    return Path(path)
