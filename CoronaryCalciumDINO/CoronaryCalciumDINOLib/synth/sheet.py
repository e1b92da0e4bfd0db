"""Example sheet: synthetic slices with calcium outlines beside a real slice, and HU histograms."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..constants import ARTERY_COLORS, LABEL_TO_ARTERY
from ..data.studies import Study, is_study_dir, list_studies, load_study
from ..errors import InputError
from ..io import load_ct
from ..scoring import score
from .generator import generate_study

#: Default real reference: two slices of a real non-contrast cardiac CT in the test data.
REAL_SLICES = Path(__file__).resolve().parents[3] / "Testing" / "Data" / "real-cardiac-ct-slices"
SOFT_WINDOW = (40.0, 400.0)  # level, width
CALCIUM_WINDOW = (400.0, 1200.0)


def _window(level_width):
    level, width = level_width
    return level - width / 2, level + width / 2


def parse_seeds(text: str) -> list[int]:
    """Seeds from ``"3"``, ``"1,5,9"`` or ``"0-4"`` (inclusive range)."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                a, b = part.split("-", 1)
                seeds.extend(range(int(a), int(b) + 1))
            elif part.strip():
                seeds.append(int(part))
    except ValueError:
        raise InputError(f"not a study folder nor a seed list (e.g. 1,2,3 or 0-5): {text}") from None
    if not seeds or min(seeds) < 0:
        raise InputError(f"seed list must hold seeds >= 0: {text}")
    return seeds


def load_sheet_studies(spec: str, n: int = 3) -> list[Study]:
    """Studies for the sheet: a study folder, a folder of studies, or seeds to generate."""
    p = Path(spec)
    if p.is_dir():
        folders = [p] if is_study_dir(p) else list_studies(p)
        if not folders:
            raise InputError(f"no study folders in {p}")
        studies = [load_study(f) for f in folders[: max(n * 4, n)]]
        # Prefer studies with calcium, keep one without if there is one.
        with_ca = [s for s in studies if s.labels.any()]
        without = [s for s in studies if not s.labels.any()]
        chosen = with_ca[: max(n - 1, 1)] + without[:1]
        return (chosen + [s for s in studies if s not in chosen])[:n]
    return [generate_study(s) for s in parse_seeds(spec)[:n]]


def _outline(ax, labels2d: np.ndarray) -> None:
    for lab in np.unique(labels2d[labels2d > 0]):
        ax.contour((labels2d == lab).astype(float), levels=[0.5], colors=[ARTERY_COLORS[LABEL_TO_ARTERY[int(lab)]]],
                   linewidths=1.0)


def _crop_box(centre_yx, half_px: int, shape) -> tuple[slice, slice]:
    cy, cx = (int(round(c)) for c in centre_yx)
    y0 = int(np.clip(cy - half_px, 0, max(shape[0] - 2 * half_px, 0)))
    x0 = int(np.clip(cx - half_px, 0, max(shape[1] - 2 * half_px, 0)))
    return slice(y0, y0 + 2 * half_px), slice(x0, x0 + 2 * half_px)


def make_sheet(studies: list[Study], out: str | Path, real_path: str | Path | None = REAL_SLICES) -> Path:
    """Write a PNG sheet: per study the slice with most calcium (soft-tissue window, calcium
    window, zoom) and a slice without calcium; last row the real slice and HU histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if not studies:
        raise InputError("no studies to show")
    real = None
    if real_path is not None and Path(real_path).exists():
        real = load_ct(real_path)
    rows = len(studies) + (1 if real is not None else 0)
    fig, axes = plt.subplots(rows, 4, figsize=(16, 4.1 * rows), squeeze=False)
    soft, calc = _window(SOFT_WINDOW), _window(CALCIUM_WINDOW)
    synth_hist = []
    for r, st in enumerate(studies):
        hu, lab = st.ct.hu, st.labels
        dz, dy, _ = st.ct.spacing
        per_slice = lab.reshape(lab.shape[0], -1).astype(bool).sum(axis=1)
        heart_slices = np.flatnonzero(st.heart.reshape(lab.shape[0], -1).any(axis=1)) if st.heart is not None \
            else np.arange(lab.shape[0])
        k_ca = int(np.argmax(per_slice)) if per_slice.any() else int(heart_slices[len(heart_slices) // 2])
        no_ca = [k for k in heart_slices if per_slice[k] == 0]
        k_no = int(no_ca[len(no_ca) // 3]) if no_ca else int(heart_slices[0])
        if no_ca and st.heart is not None:
            # Prefer the slice showing most unlabelled dense voxels in the heart (valve, annulus).
            dense = [int(((hu[k] >= 130) & (st.heart[k] > 0)).sum()) for k in no_ca]
            if max(dense) >= 5:
                k_no = int(no_ca[int(np.argmax(dense))])
        agat = st.meta.get("scores", {}).get("total", {}).get("agatston")
        if agat is None:
            agat = score(hu, lab, st.ct.spacing).total.agatston
        title = f"{st.id}  slice {k_ca}/{lab.shape[0]}  Agatston {agat:.1f}"
        ax = axes[r]
        ax[0].imshow(hu[k_ca], cmap="gray", vmin=soft[0], vmax=soft[1])
        _outline(ax[0], lab[k_ca])
        ax[0].set_title(title + "\nW400/L40", fontsize=9)
        ax[1].imshow(hu[k_ca], cmap="gray", vmin=calc[0], vmax=calc[1])
        _outline(ax[1], lab[k_ca])
        ax[1].set_title(f"same slice, calcium window W{CALCIUM_WINDOW[1]:.0f}/L{CALCIUM_WINDOW[0]:.0f}", fontsize=9)
        if lab[k_ca].any():
            centre = np.argwhere(lab[k_ca]).mean(axis=0)
        elif st.heart is not None and st.heart[k_ca].any():
            centre = np.argwhere(st.heart[k_ca]).mean(axis=0)
        else:
            centre = (hu.shape[1] / 2, hu.shape[2] / 2)
        ys, xs = _crop_box(centre, int(35 / dy), hu.shape[1:])
        ax[2].imshow(hu[k_ca, ys, xs], cmap="gray", vmin=soft[0], vmax=soft[1])
        _outline(ax[2], lab[k_ca, ys, xs])
        ax[2].set_title("zoom 70 mm, W400/L40", fontsize=9)
        ax[3].imshow(hu[k_no], cmap="gray", vmin=soft[0], vmax=soft[1])
        ax[3].set_title(f"slice {k_no}: no coronary calcium label, W400/L40\n{dy:.2f} mm pixels, {dz:g} mm spacing", fontsize=9)
        lo, hi = max(k_ca - 1, 0), min(k_ca + 2, hu.shape[0])
        synth_hist.append(hu[lo:hi].ravel())
    if real is not None:
        ax = axes[-1]
        rh = real.hu[0]
        ax[0].imshow(rh, cmap="gray", vmin=soft[0], vmax=soft[1])
        ax[0].set_title("REAL non-contrast cardiac CT slice\nW400/L40", fontsize=9)
        ax[1].imshow(rh, cmap="gray", vmin=calc[0], vmax=calc[1])
        ax[1].set_title("real, calcium window", fontsize=9)
        ys, xs = _crop_box((rh.shape[0] * 0.45, rh.shape[1] * 0.5), int(35 / real.spacing[1]), rh.shape)
        ax[2].imshow(rh[ys, xs], cmap="gray", vmin=soft[0], vmax=soft[1])
        ax[2].set_title("real, zoom 70 mm", fontsize=9)
        bins = np.linspace(-1024, 1200, 112)
        s_all = np.concatenate(synth_hist)
        for data, name, col in ((s_all, "synthetic (3 slices per study)", "tab:blue"), (real.hu.ravel(), "real (2 slices)", "tab:red")):
            body = data[data > -950]
            ax[3].hist(body, bins=bins, density=True, histtype="step", color=col, label=name, linewidth=1.4)
        ax[3].set_yscale("log")
        ax[3].set_xlabel("HU (voxels > -950 HU)")
        ax[3].set_title("HU histograms: synthetic vs real", fontsize=9)
        ax[3].legend(fontsize=8)
    for a in axes.ravel():
        if not a.get_xlabel():
            a.set_xticks([])
            a.set_yticks([])
    handles = [Line2D([0], [0], color=c, lw=2, label=n) for n, c in ARTERY_COLORS.items()]
    fig.legend(handles=handles, loc="upper center", ncol=4, fontsize=10, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
