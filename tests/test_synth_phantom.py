"""Tests of the synthetic calcium-scoring phantoms (``generate_study(seed, phantom=True)``).

Expected values come from the phantom's specification (synth/phantom.py's docstring: the
materials' HU ranges, the side convention of its labels) and from the scoring definition
(labels are calcification voxels >= 130 HU).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from CoronaryCalciumDINOLib.constants import ARTERY_TO_LABEL
from CoronaryCalciumDINOLib.data.studies import list_studies
from CoronaryCalciumDINOLib.errors import InputError
from CoronaryCalciumDINOLib.scoring import score
from CoronaryCalciumDINOLib.synth import generate_study, render_study, study_id

SMALL = {"matrix": 192}


@pytest.fixture(scope="module")
def phantoms():
    return [render_study(s, phantom=True, **SMALL) for s in range(700000, 700012)]


def _world(res, z, y, x):
    g = res.grid
    return g.x[x], g.y[y], g.z[z]


def test_same_seed_same_phantom_and_its_own_id():
    a = generate_study(5, phantom=True, matrix=96, n_slices=12)
    b = generate_study(5, phantom=True, matrix=96, n_slices=12)
    patient = generate_study(5, matrix=96, n_slices=12)
    assert np.array_equal(a.ct.hu, b.ct.hu) and np.array_equal(a.labels, b.labels)
    assert a.id == study_id(5, phantom=True) == "synth-phantom-000005" != patient.id
    assert a.meta["params"]["kind"] == "phantom" and a.meta["seed"] == 5


def test_patient_options_are_refused_for_phantoms():
    with pytest.raises(InputError, match="not for phantoms: plaques"):
        generate_study(5, phantom=True, plaques=False)


def test_labels_only_on_the_calcifications_with_the_side_convention(phantoms):
    seen = set()
    for res in phantoms:
        st, p = res.study, res.anatomy
        assert set(np.unique(st.labels)) <= {0, 2, 3, 4}  # never LM
        assert np.all(st.ct.hu[st.labels > 0] >= 130)
        calc = [o for o in p["objects"] if o["kind"] == "calcification"]
        rods = [o for o in p["objects"] if o["kind"] != "calcification"]
        comp, n = ndimage.label(st.labels > 0)
        for i, sl in enumerate(ndimage.find_objects(comp), 1):
            zz, yy, xx = np.nonzero(comp[sl] == i)
            zz, yy, xx = zz + sl[0].start, yy + sl[1].start, xx + sl[2].start
            x, y, z = _world(res, zz, yy, xx)
            # every labelled voxel belongs to one calcification: within its radius + blur, in its z range
            d = [np.hypot(x.mean() - o["x"], y.mean() - o["y"]) for o in calc]
            o = calc[int(np.argmin(d))]
            assert np.all(np.hypot(x - o["x"], y - o["y"]) <= o["r"] + 3 * res.grid.pixel + 1.5)
            assert np.all((z >= o["z"][0] - 2 * res.grid.thickness) & (z <= o["z"][1] + 2 * res.grid.thickness))
            cx, cy = p["centre_found_mm"]
            want = "RCA" if o["x"] < cx else ("LAD" if o["y"] < cy else "LCX")
            assert np.all(st.labels[zz, yy, xx] == ARTERY_TO_LABEL[want])
            seen.add(want)
        # rods and the spine are never labelled
        g = res.grid
        for o in rods:
            inside = np.hypot(g.x[None, :] - o["x"], g.y[:, None] - o["y"]) < o["r"] - 1.0
            assert not st.labels[:, inside].any()
        spine = np.hypot(g.x[None, :], g.y[:, None] - p["vertebra_y"]) < p["vertebra_r"] + 10
        assert not st.labels[:, spine].any()
        assert (st.ct.hu[:, spine] >= 130).sum() > 100  # the bone is there, dense
    assert seen == {"LAD", "LCX", "RCA"}


def test_the_centre_the_pipeline_finds_lies_in_the_insert_and_its_field_holds_the_calcium(phantoms):
    for res in phantoms:
        p = res.anatomy
        cx, cy = p["centre_found_mm"]
        assert np.hypot(cx, cy) < p["insert_radius"] - 10, res.study.id
        for o in (o for o in p["objects"] if o["kind"] == "calcification"):  # inside the 160 mm field
            assert max(abs(o["x"] - cx), abs(o["y"] - cy)) + o["r"] < 80.0, res.study.id


def test_materials_and_calcium_as_specified(phantoms):
    empty = scored = 0
    for res in phantoms:
        st, p, g = res.study, res.anatomy, res.grid
        r = np.hypot(g.x[None, :], g.y[:, None])
        k = int(np.argmin(np.abs(g.z - np.mean(p["fill"]))))
        away = (r < p["insert_radius"] - 5) & np.all(
            [np.hypot(g.x[None, :] - o["x"], g.y[:, None] - o["y"]) > o["r"] + 4 for o in p["objects"]], axis=0)
        noise = st.meta["params"]["noise_sd_hu"]
        assert abs(np.median(st.ct.hu[k][away]) - p["fill_hu"]) < 0.5 * noise + 3
        lung = np.hypot((g.x[None, :] - p["lung_x"]) / p["lung_semi"][0], g.y[:, None] / p["lung_semi"][1]) < 0.8
        lung &= r > p["insert_radius"] + 5
        if lung.any():
            assert -860 < np.median(st.ct.hu[k][lung]) < -740
        total = score(st.ct.hu, st.labels, st.ct.spacing).total.agatston
        n_calc = sum(o["kind"] == "calcification" for o in p["objects"])
        empty += n_calc == 0
        scored += total > 0
        if n_calc == 0:
            assert total == 0
    assert empty >= 1 and scored >= 6


def test_cli_synth_phantoms(tmp_path):
    cmd = [sys.executable, "-m", "CoronaryCalciumDINOLib.cli", "synth", "--n", "1", "--seed", "3", "--phantoms",
           "--out", str(tmp_path), "--matrix", "64", "--slices-range", "8", "10"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert [p.name for p in list_studies(tmp_path)] == ["synth-phantom-000003"]


def test_fat_share_tells_a_phantom_from_a_patient():
    """The slices' fat share: a patient's heart field holds fat, a phantom's insert none."""
    from CoronaryCalciumDINOLib.pipeline.candidates import find_candidates, looks_like_phantom

    for seed in (700001, 700002, 700003):
        st = generate_study(seed, phantom=True, matrix=256)
        c = find_candidates(st.ct.hu, st.ct.spacing)
        assert looks_like_phantom(c), seed
    for seed in (11, 12, 13):
        st = generate_study(seed, plaques=True, matrix=256)
        c = find_candidates(st.ct.hu, st.ct.spacing)
        assert not looks_like_phantom(c), seed
        assert np.median(c.fat[np.unique(c.z)]) > 0.03
