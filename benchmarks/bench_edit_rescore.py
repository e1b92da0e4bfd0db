"""Edit-to-new-score time in the Slicer scene (slicer-core): what happens after one paint
stroke on the result segmentation of a 512 x 512 x 400 CT.

    python benchmarks/bench_edit_rescore.py [--slices 400] [--lesions 60] [--repeat 3]

The CT is stored as Slicer stores DICOM CT (int16). After each edit the module checks which
artery segments changed and rescores. Printed side by side (best of ``--repeat``):

* box: what the module does now, :meth:`EditTracker.refresh` + :func:`scene.logic.rescore`
  (the segments read in place as bounding boxes, the CT read as a view of its int16 voxels);
* whole grid: the earlier approach, rebuilt here from the same helpers (every artery
  segment resampled onto the whole CT grid and fingerprinted, then the CT copied as float32,
  the four segments resampled again and the whole grid scored).

Both must give the same scores; the script checks that, then prints the times and their
ratio (no timed assertion).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from CoronaryCalciumDINOLib.constants import ARTERIES, ARTERY_TO_LABEL
from CoronaryCalciumDINOLib.io.volume import CTVolume
from CoronaryCalciumDINOLib.scene import logic as scene_logic
from CoronaryCalciumDINOLib.scene.segmentation import full_mask_fingerprint, write_segment_mask
from CoronaryCalciumDINOLib.scene.volume import (
    array_from_oriented_image,
    ct_to_volume_node,
    reference_oriented_image,
    volume_node_to_ct,
)
from CoronaryCalciumDINOLib.scoring import score


def make_study(n_slices: int, n_lesions: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    hu = rng.normal(40, 20, (n_slices, 512, 512)).astype(np.int16).astype(np.float32)
    hu[:, 380:460, 200:310] = 700.0  # a "spine": dense, never labelled
    labels = np.zeros(hu.shape, np.uint8)
    for k in range(n_lesions):
        z = int(rng.integers(n_slices // 4, 3 * n_slices // 4))
        y, x = (int(v) for v in rng.integers(150, 350, 2))
        r = int(rng.integers(1, 5))
        hu[z - 1: z + 2, y - r: y + r + 1, x - r: x + r + 1] = float(rng.integers(150, 900))
        labels[z - 1: z + 2, y - r: y + r + 1, x - r: x + r + 1] = 1 + k % 4
    return CTVolume(hu=hu, spacing=(0.5, 0.4, 0.4), kvp=120.0), labels


class Result:
    def __init__(self, ct, labels):
        self.labels = labels
        self.score = score(ct.hu, labels, ct.spacing)
        self.slice_probabilities = None
        self.attention = None


def whole_grid_check_and_rescore(seg, volume):
    """The earlier approach: whole-grid resampling and fingerprints, float32 CT copy."""
    import slicer

    name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    reference = reference_oriented_image(volume)
    layers = {}
    for artery in ARTERIES:
        segment = seg.GetSegmentation().GetSegment(artery)
        layer = segment.GetRepresentation(name)
        key = layer.GetAddressAsString("vtkObject")
        if key not in layers:
            layers[key] = array_from_oriented_image(layer, reference)
        full_mask_fingerprint(layers[key] == segment.GetLabelValue())
    ct = volume_node_to_ct(volume)  # float32 copy of the whole CT
    labels = np.zeros(ct.shape, np.uint8)
    for artery in ARTERIES:
        segment = seg.GetSegmentation().GetSegment(artery)
        labels[array_from_oriented_image(segment.GetRepresentation(name), reference) == segment.GetLabelValue()] = ARTERY_TO_LABEL[artery]
    return score(ct.hu, labels, ct.spacing)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=400)
    ap.add_argument("--lesions", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    ct, labels = make_study(args.slices, args.lesions)
    core = scene_logic.create_core_scene()
    volume = ct_to_volume_node(core.scene, ct, "CT")
    del ct
    out = scene_logic.compute(core.scene, volume, segment_fn=lambda c: Result(c, labels))
    seg = out.segmentation_node
    pending, reports = [], []
    session = scene_logic.ResultSession(core.scene, volume, seg, on_rescored=reports.append, defer=pending.append)
    lad = labels == ARTERY_TO_LABEL["LAD"]
    print(f"CT {args.slices}x512x512 int16, {args.lesions} lesions; CT voxels {volume.GetImageData().GetNumberOfPoints():,}")

    box_times, grid_times = [], []
    for i in range(args.repeat):
        stroke = lad.copy()
        z = args.slices // 2 + i
        stroke[z, 200:204, 200:204] = True  # one paint stroke (not timed)
        write_segment_mask(seg, "LAD", stroke, volume)
        t = time.perf_counter()
        for check in pending:
            check()
        box_times.append(time.perf_counter() - t)
        pending.clear()
        t = time.perf_counter()
        grid = whole_grid_check_and_rescore(seg, volume)
        grid_times.append(time.perf_counter() - t)
        new = reports[-1]
        assert new["total"]["agatston"] == grid.total.agatston, (new["total"], grid.total)
        assert all(new["arteries"][a]["agatston"] == grid.arteries[a].agatston for a in ARTERIES)
    session.close()
    best_box, best_grid = min(box_times), min(grid_times)
    print(f"edit check + rescore, box (now):      {best_box:.3f} s   (runs: {', '.join(f'{t:.3f}' for t in box_times)})")
    print(f"edit check + rescore, whole grid:     {best_grid:.3f} s   (runs: {', '.join(f'{t:.3f}' for t in grid_times)})")
    print(f"ratio whole grid / box: {best_grid / best_box:.1f}x; scores equal: yes (total Agatston {reports[-1]['total']['agatston']:.2f})")


if __name__ == "__main__":
    main()
