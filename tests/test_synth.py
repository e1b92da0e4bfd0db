"""Tests of the synthetic cardiac CT generator (``ccdino synth``) and the example sheet.

Expected values come from the specification of the generator (geometry ranges), from
measurements on real non-contrast cardiac CT (HU of lung, fat and blood; see
Testing/Data/real-cardiac-ct-slices/README.md) and from the scoring definition (labels
are calcium voxels >= 130 HU).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from CoronaryCalciumDINOLib.constants import ARTERIES, ARTERY_TO_LABEL
from CoronaryCalciumDINOLib.data.studies import list_studies, load_study, write_study
from CoronaryCalciumDINOLib.errors import InputError
from CoronaryCalciumDINOLib.scoring import score
from CoronaryCalciumDINOLib.synth import generate_study, render_study, study_id
from CoronaryCalciumDINOLib.synth.scanner import psf_sigmas

SMALL = {"matrix": 128}  # same anatomy and field of view, 4x coarser pixels


@pytest.fixture(scope="module")
def full():
    """One full-size study (512 x 512) with plaques, keeping the noise-free volumes."""
    return render_study(3, plaques=True, keep_clean=True)


@pytest.fixture(scope="module")
def batch():
    """Sixteen small studies (default slice count, 128 x 128) with plaques forced."""
    return [render_study(s, plaques=True, **SMALL) for s in range(100, 116)]


def test_same_seed_gives_identical_arrays():
    a = generate_study(7, matrix=96, n_slices=12)
    b = generate_study(7, matrix=96, n_slices=12)
    c = generate_study(8, matrix=96, n_slices=12)
    assert np.array_equal(a.ct.hu, b.ct.hu)
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.heart, b.heart)
    assert a.ct.spacing == b.ct.spacing and a.ct.origin == b.ct.origin
    assert a.meta["params"] == b.meta["params"]
    assert not np.array_equal(a.ct.hu, c.ct.hu)
    assert a.id == study_id(7) == "synth-000007"


def test_full_size_geometry_and_metadata(full):
    st = full.study
    nz, ny, nx = st.ct.shape
    assert (ny, nx) == (512, 512)
    assert 40 <= nz <= 80
    dz, dy, dx = st.ct.spacing
    assert dy == dx and 0.4 <= dx <= 0.8
    thickness = st.meta["params"]["slice_thickness_mm"]
    assert (dz, thickness) in {(2.5, 2.5), (3.0, 3.0), (1.5, 3.0)}
    assert np.allclose(st.ct.direction, np.eye(3))
    assert st.ct.kvp == 120 and st.meta["kvp"] == 120 and st.meta["source"] == "synthetic"
    assert st.meta["seed"] == 3 and st.id == "synth-000003"
    assert st.ct.hu.dtype == np.float32 and np.array_equal(st.ct.hu, np.rint(st.ct.hu))
    assert st.ct.hu.min() >= -1024
    assert set(np.unique(st.labels)) <= {0, 1, 2, 3, 4}
    assert set(st.meta["centrelines"]) == set(ARTERIES)
    for name in ARTERIES:
        pts = np.asarray(st.meta["centrelines"][name])
        assert pts.ndim == 2 and pts.shape[1] == 3 and len(pts) >= 3
        r = np.asarray(st.meta["centreline_radius_mm"][name])
        assert np.all((r >= 0.5) & (r <= 2.1))  # lumen diameter about 1-4 mm
        assert r[0] >= r[-1]  # tapering
    json.dumps(st.meta)  # JSON-ready


@pytest.mark.parametrize("seed", range(20, 40))
def test_sampled_geometry_within_spec(seed):
    st = generate_study(seed, matrix=32)  # geometry parameters do not depend on the matrix
    p = st.meta["params"]
    assert 0.4 * 512 <= p["scanner"]["fov_mm"] <= 0.8 * 512
    assert (p["slice_spacing_mm"], p["slice_thickness_mm"]) in {(2.5, 2.5), (3.0, 3.0), (1.5, 3.0)}
    assert 40 <= st.ct.shape[0] <= 80
    assert 10 <= p["noise_sd_hu"] <= 40
    assert 0 <= p["anatomy"]["heart_elevation_deg"] <= 90
    # The heart mask lies inside the volume and is not cut at the top (aortic root level).
    assert st.heart.any()
    assert not st.heart[-1].any()


def test_overrides_and_bad_options():
    st = generate_study(5, matrix=64, n_slices=10, spacing=2.0, noise_sd=12.0)
    assert st.ct.shape == (10, 64, 64) and st.ct.spacing[0] == 2.0
    assert st.meta["params"]["noise_sd_hu"] == 12.0
    st = generate_study(5, matrix=64, slices_range=(20, 22))
    assert 20 <= st.ct.shape[0] <= 22
    with pytest.raises(InputError):
        generate_study(5, colour="red")
    with pytest.raises(InputError):
        generate_study(5, matrix=8)


def test_streaks_touch_only_slices_through_their_sources():
    on = render_study(9, matrix=96, n_slices=12, streaks=True)
    off = render_study(9, matrix=96, n_slices=12, streaks=False)
    touched = on.study.meta["params"]["streak_slices"]
    assert touched >= 1 and off.study.meta["params"]["streak_slices"] == 0
    changed = np.flatnonzero(np.any(on.study.ct.hu != off.study.ct.hu, axis=(1, 2)))
    # Each source touches the slices within 0.6 x thickness of it: at most 3 per source here.
    assert 1 <= len(changed) <= touched


def test_psf_combines_point_spread_pixel_and_slice_profile():
    # FWHM 0.8 mm -> sigma 0.8 / 2.3548 = 0.3397; pixel 0.6 mm box -> variance 0.03.
    s_xy, s_z = psf_sigmas(0.6, 3.0, 0.8)
    assert s_xy == pytest.approx(np.sqrt(0.3397**2 + 0.03), rel=1e-3)
    assert s_z == pytest.approx(3.0 / 2.3548, rel=1e-3)


def test_labels_only_on_calcium_near_their_artery(full, batch):
    for res in [full] + batch:
        st = res.study
        lab = st.labels
        assert np.all(st.ct.hu[lab > 0] >= 130)
        zz, yy, xx = np.nonzero(lab)
        if not len(zz):
            continue
        g = res.grid
        pts = np.stack([g.x[xx], g.y[yy], g.z[zz]], axis=1)
        for name in ARTERIES:
            sel = lab[zz, yy, xx] == ARTERY_TO_LABEL[name]
            if not sel.any():
                continue
            cl = np.asarray(st.meta["centrelines"][name])
            # Distance to the artery's centreline (sampled every 2 mm): lumen radius (<= 2.1)
            # + plaque offset (<= radius) + 3-sigma support of a blurred plaque (< 8 mm).
            d = np.min(np.linalg.norm(pts[sel][:, None, :] - cl[None, :, :], axis=2), axis=1)
            assert d.max() < 14.0, (st.id, name, d.max())


def test_no_label_on_bone_or_other_anatomy(full):
    # Voxels that are dense before any calcification is added (bone, cartilage) never get a label.
    dense_anatomy = full.anatomy_hu >= 130
    assert dense_anatomy.sum() > 1000  # spine, ribs and sternum are there
    assert not np.any(full.study.labels[dense_anatomy])
    # and they are genuinely above the scoring threshold in the final image
    assert np.mean(full.study.ct.hu[dense_anatomy] >= 130) > 0.8


def test_confounders_present_and_never_labelled():
    seen = {"aortic_wall": 0, "aortic_valve": 0, "mitral_annulus": 0}
    for seed in range(200, 260):
        res = render_study(seed, plaques=True, matrix=64, n_slices=4)  # cheap: only the drawn blobs
        for b in res.blobs:
            if b.label == 0:
                seen[b.kind] += 1
        if all(seen.values()):
            break
    assert all(v > 0 for v in seen.values()), seen
    # Render studies holding confounders at full in-plane size and look at their cores.
    found = 0
    for seed in range(200, 260):
        res = render_study(seed, plaques=True, matrix=64, n_slices=4)
        if not any(b.label == 0 for b in res.blobs):
            continue
        res = render_study(seed, plaques=True, matrix=256)
        g = res.grid
        for b in res.blobs:
            if b.label != 0:
                continue
            k = int(round((b.centre[2] - g.origin[2]) / g.dz))
            j = int(round((b.centre[1] - g.origin[1]) / g.pixel))
            i = int(round((b.centre[0] - g.origin[0]) / g.pixel))
            if not (0 <= k < g.nz and 1 <= j < g.n - 1 and 1 <= i < g.n - 1):
                continue
            core = (slice(k, k + 1), slice(j - 1, j + 2), slice(i - 1, i + 2))
            assert not res.study.labels[core].any(), (seed, b.kind)
            found += int((res.study.ct.hu[core] >= 130).any())
        if found >= 3:
            break
    assert found >= 3  # dense, unlabelled confounders exist


def test_every_artery_appears_across_a_batch(batch):
    present = set()
    for res in batch:
        present |= {int(v) for v in np.unique(res.study.labels) if v}
    assert present == {1, 2, 3, 4}


def test_hu_of_tissues_is_plausible(full):
    st, clean, anat = full.study, full.clean, full.anatomy_hu
    a = full.anatomy
    hu = st.ct.hu
    heart = st.heart.astype(bool)
    lung = (anat < -700) & (anat > -960)
    blood = heart & (np.abs(anat - a["blood_hu"]) < 0.5)
    fat = heart & (np.abs(anat - a["fat_hu"]) < 0.5)
    # Real non-contrast CT: lung about -850, blood about 44, fat about -100 HU.
    assert -900 <= hu[lung].mean() <= -780
    assert 30 <= hu[blood].mean() <= 55
    assert -125 <= hu[fat].mean() <= -75
    # Noise: measured SD equals the study's noise level (10-40 HU) within 10 %.
    sd = float((hu[blood] - clean[blood]).std())
    assert sd == pytest.approx(st.meta["params"]["noise_sd_hu"], rel=0.1)
    assert 10 <= st.meta["params"]["noise_sd_hu"] <= 40
    # Noise texture: neighbouring pixels are positively correlated (filtered noise).
    n = (hu - clean)[blood.any(axis=(1, 2))]
    r = np.corrcoef(n[:, :, :-1].ravel(), n[:, :, 1:].ravel())[0, 1]
    assert r > 0.2


def test_saved_scores_equal_scoring_of_saved_files(full, tmp_path):
    folder = write_study(full.study, tmp_path)
    loaded = load_study(folder)
    assert np.array_equal(loaded.ct.hu, full.study.ct.hu)
    assert np.array_equal(loaded.labels, full.study.labels)
    res = score(loaded.ct.hu, loaded.labels, loaded.ct.spacing)
    meta = json.loads((folder / "study.json").read_text())
    assert meta["scores"]["total"]["agatston"] == pytest.approx(res.total.agatston, abs=1e-9)
    assert res.total.agatston > 0
    for name in ARTERIES:
        assert meta["scores"]["arteries"][name]["agatston"] == pytest.approx(res.arteries[name].agatston, abs=1e-9)
    assert meta["source"] == "synthetic" and meta["kvp"] == 120
    assert np.asarray(meta["centrelines"]["LAD"]).shape[1] == 3


@pytest.mark.slow  # 30 studies at 192 x 192
def test_zero_score_share_is_in_a_broad_band():
    zero = 0
    n = 30
    for seed in range(1000, 1000 + n):
        st = generate_study(seed, matrix=192, noise_sd=25.0)
        zero += score(st.ct.hu, st.labels, st.ct.spacing).total.agatston == 0
    assert 0.15 * n <= zero <= 0.6 * n


def test_cli_synth_writes_and_skips(tmp_path):
    cmd = [sys.executable, "-m", "CoronaryCalciumDINOLib.cli", "synth", "--n", "2", "--seed", "4",
           "--out", str(tmp_path), "--matrix", "48", "--slices-range", "8", "10"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert [p.name for p in list_studies(tmp_path)] == ["synth-000004", "synth-000005"]
    assert "synth-000005" in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and second.stdout.count("skipped") == 2
    bad = subprocess.run(cmd[:4] + ["--n", "0", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--n must be >= 1" in bad.stderr
    # a folder another generator version made is not taken for this seed's study, nor removed
    meta_file = tmp_path / "synth-000004" / "study.json"
    meta = json.loads(meta_file.read_text())
    meta["params"]["generator_version"] = 0
    meta_file.write_text(json.dumps(meta))
    old = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert old.returncode == 2 and "generator version 0" in old.stderr and "synth-000004" in old.stderr
    assert len(old.stderr.strip().splitlines()) == 1 and meta_file.exists()


def test_sheet_is_written(tmp_path):
    from CoronaryCalciumDINOLib.synth.sheet import REAL_SLICES, make_sheet, parse_seeds

    assert parse_seeds("1,3-5") == [1, 3, 4, 5]
    with pytest.raises(InputError):
        parse_seeds("abc")
    studies = [generate_study(s, plaques=True, matrix=128) for s in (1, 2)]
    out = make_sheet(studies, tmp_path / "sheet.png", REAL_SLICES if Path(REAL_SLICES).exists() else None)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000



def test_non_gated_reconstruction_of_the_same_patient():
    """non_gated: the same anatomy and plaques as the gated study of the seed, on 5 mm
    slices with cardiac motion blur; the blur lowers the calcium's peaks, and every
    labelled voxel is at or above 130 HU."""
    from CoronaryCalciumDINOLib.synth.generator import MOTION_SIGMA_MM, NON_GATED_SLICE_MM

    kw = dict(plaques=True, matrix=256, noise_sd=0.0, streaks=False)
    gated = generate_study(12, **kw)
    ng = generate_study(12, non_gated=True, **kw)
    assert ng.id == "synth-nongated-000012" != gated.id
    assert ng.ct.spacing[0] == NON_GATED_SLICE_MM and ng.meta["params"]["slice_thickness_mm"] == NON_GATED_SLICE_MM
    p = ng.meta["params"]
    assert p["non_gated"] is True and MOTION_SIGMA_MM[0] <= p["motion_sigma_mm"] <= MOTION_SIGMA_MM[1]
    assert gated.meta["params"]["non_gated"] is False and gated.meta["params"]["motion_sigma_mm"] == 0.0
    assert p["anatomy"] == gated.meta["params"]["anatomy"]
    assert p["n_plaque_blobs"] == gated.meta["params"]["n_plaque_blobs"] > 0
    hu_g, hu_n = np.asarray(gated.ct.hu), np.asarray(ng.ct.hu)
    heart_g, heart_n = np.asarray(gated.heart) > 0, np.asarray(ng.heart) > 0
    assert hu_n[heart_n].max() < hu_g[heart_g].max()  # calcium averaged over 5 mm and blurred
    lab = np.asarray(ng.labels)
    assert np.all(hu_n[lab > 0] >= 130)
    # the same seed without the option is the gated study, unchanged
    again = generate_study(12, **kw)
    assert np.array_equal(np.asarray(again.ct.hu), hu_g) and np.array_equal(np.asarray(again.labels), np.asarray(gated.labels))


def test_broad_plaques_fill_the_artery_and_leave_the_other_plaques_as_they_were():
    """broad_plaques: that share of the plaques becomes a band of calcium round the artery
    (more blobs round the circumference, wider across); at 0 the study is the seed's study,
    unchanged; every labelled voxel stays at or above 130 HU and a bad share is refused."""
    from CoronaryCalciumDINOLib.synth.plaques import BROAD_EXTRA_BLOBS

    kw = dict(plaques=True, matrix=128)
    plain = generate_study(1003, **kw)
    for share in (0.0, 1e-12):  # 1e-12: the broad stream is drawn from, and no plaque is broad
        same = generate_study(1003, broad_plaques=share, **kw)
        assert np.array_equal(np.asarray(same.ct.hu), np.asarray(plain.ct.hu))
        assert np.array_equal(np.asarray(same.labels), np.asarray(plain.labels))
    assert "broad_plaques" not in plain.meta["params"]
    broad = generate_study(1003, broad_plaques=1.0, **kw)
    p, q = broad.meta["params"], plain.meta["params"]
    assert p["broad_plaques"] == 1.0 and p["anatomy"] == q["anatomy"]
    # every plaque (1-4 blobs of its own) gets at least one more
    assert p["n_plaque_blobs"] >= q["n_plaque_blobs"] + BROAD_EXTRA_BLOBS[0] * -(-q["n_plaque_blobs"] // 4)
    lab_b, lab_p = np.asarray(broad.labels) > 0, np.asarray(plain.labels) > 0
    assert lab_b.sum() > 2 * lab_p.sum()
    assert np.all(np.asarray(broad.ct.hu)[lab_b] >= 130)
    assert np.array_equal(np.asarray(broad.labels)[lab_b & lab_p], np.asarray(plain.labels)[lab_b & lab_p])  # same arteries
    for bad in (-0.1, 1.5):
        with pytest.raises(InputError, match="broad_plaques"):
            generate_study(1003, broad_plaques=bad, matrix=64, n_slices=4)


def test_a_study_folder_of_another_broad_plaques_share_is_not_taken(tmp_path):
    from CoronaryCalciumDINOLib.synth import write_studies

    kw = dict(matrix=64, n_slices=6)
    write_studies([4], tmp_path, broad_plaques=0.5, **kw)
    assert write_studies([4], tmp_path, broad_plaques=0.5, **kw)  # the same share: taken as it is
    with pytest.raises(InputError, match="broad_plaques=0.5"):
        write_studies([4], tmp_path, **kw)


def test_kernels_reconstruct_the_same_patient():
    """kernel: the same anatomy, plaques and noise stream; a sharp kernel raises calcium's
    peak and makes the noise finer and stronger (pixel-to-pixel differences), a smooth one
    the reverse; every labelled voxel is at or above 130 HU; without the option the study is
    the one the seed always gave; an unknown kernel is a clear error."""
    kw = dict(plaques=True, matrix=256, n_slices=30, streaks=False)
    base = generate_study(3, **kw)
    studies = {k: generate_study(3, kernel=k, **kw) for k in ("smooth", "standard", "sharp")}
    assert [s.id for s in studies.values()] == ["synth-smooth-000003", "synth-standard-000003", "synth-sharp-000003"]

    def figures(st):
        hu, heart, lab = np.asarray(st.ct.hu), np.asarray(st.heart) > 0, np.asarray(st.labels)
        inside = heart[:, :, 1:] & heart[:, :, :-1] & (lab[:, :, 1:] == 0) & (lab[:, :, :-1] == 0)
        return float(hu[lab > 0].max()), float(np.diff(hu, axis=2)[inside].std())

    peak = {k: figures(st)[0] for k, st in studies.items()}
    grain = {k: figures(st)[1] for k, st in studies.items()}
    assert peak["smooth"] < peak["standard"] < peak["sharp"]
    assert grain["smooth"] < grain["standard"] < grain["sharp"]
    for st in studies.values():
        p = st.meta["params"]
        assert p["anatomy"] == base.meta["params"]["anatomy"]
        assert p["n_plaque_blobs"] == base.meta["params"]["n_plaque_blobs"] > 0
        assert np.all(np.asarray(st.ct.hu)[np.asarray(st.labels) > 0] >= 130)
    assert studies["sharp"].meta["params"]["kernel"] == "sharp" and base.meta["params"]["kernel"] is None
    again = generate_study(3, **kw)
    assert np.array_equal(np.asarray(again.ct.hu), np.asarray(base.ct.hu))
    with pytest.raises(InputError, match="kernel must be one of"):
        generate_study(3, kernel="bone", **kw)


def test_kernel_table():
    from training.evaluate_kernels import AS_DRAWN, summary, table

    rows = [(1, AS_DRAWN, 0.0, 0.0), (1, "sharp", 0.0, 3.0), (2, AS_DRAWN, 120.0, 110.0), (2, "sharp", 150.0, 90.0)]
    s = summary(rows, "sharp")
    assert s == {"studies": 2, "with_calcium": 1, "reference_total": 150.0, "model_total": 93.0, "risk_right": 0,
                 "calcium_free": 1, "calcium_free_scored_0": 0}
    lines = table(rows).splitlines()
    assert lines[2].startswith(f"| {AS_DRAWN} | 1 | 120 | 110 | 2 of 2 | 1 of 1 |")
    assert lines[3] == "| sharp | 1 | 150 | 93 | 0 of 2 | 0 of 1 |"


def test_cli_synth_non_gated(tmp_path):
    cmd = [sys.executable, "-m", "CoronaryCalciumDINOLib.cli", "synth", "--n", "1", "--seed", "4",
           "--out", str(tmp_path), "--matrix", "48", "--slices-range", "8", "10", "--non-gated"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert [p.name for p in list_studies(tmp_path)] == ["synth-nongated-000004"]
    st = load_study(tmp_path / "synth-nongated-000004")
    assert st.ct.spacing[0] == 5.0
    bad = subprocess.run(cmd + ["--phantoms"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--non-gated" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_cli_synth_kernel(tmp_path):
    cmd = [sys.executable, "-m", "CoronaryCalciumDINOLib.cli", "synth", "--n", "1", "--seed", "4",
           "--out", str(tmp_path), "--matrix", "48", "--slices-range", "8", "10", "--kernel", "sharp"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert [p.name for p in list_studies(tmp_path)] == ["synth-sharp-000004"]
    assert load_study(tmp_path / "synth-sharp-000004").meta["params"]["kernel"] == "sharp"
    bad = subprocess.run(cmd + ["--phantoms"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--kernel" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_evaluate_non_gated_table():
    from training.evaluate_non_gated import summary, table

    rows = [(1, False, 100.0, 95.0), (1, True, 20.0, 5.0), (2, False, 0.0, 0.0), (2, True, 0.0, 3.0)]
    assert summary(rows, False) == {"studies": 2, "with_calcium": 1, "reference_total": 100.0, "model_total": 95.0,
                                    "risk_right": 2, "calcium_free": 1, "calcium_free_scored_0": 1}
    s = summary(rows, True)
    assert s["risk_right"] == 0 and s["calcium_free_scored_0"] == 0
    md = table(rows)
    assert "| gated | 1 | 100 | 95 | 2 of 2 | 1 of 1 |" in md and "0 of 2 | 0 of 1 |" in md


def test_broad_plaques_table_and_a_tiny_run():
    """training/evaluate_broad_plaques.py: the table's figures from rows, a bad noise list
    refused in one line, and one small study of each kind scored by the pipeline."""
    from training import evaluate_broad_plaques as ebp

    rows = [{"seed": 1, "noise_hu": 20.0, "plaques": ebp.CRESCENTS, "reference": 100.0, "model": 90.0,
             "labelled_in_region": 50, "labelled": 50},
            {"seed": 1, "noise_hu": 20.0, "plaques": ebp.BROAD, "reference": 400.0, "model": 100.0,
             "labelled_in_region": 60, "labelled": 200}]
    lines = ebp.table(rows).splitlines()
    assert lines[2] == f"| 20 | {ebp.CRESCENTS} | 100 | 90 | 0.900 | 1 of 1 | 50 of 50 |"
    assert lines[3] == f"| 20 | {ebp.BROAD} | 400 | 100 | 0.250 | 0 of 1 | 60 of 200 |"
    assert ebp.parse_noise("20,x") is None and ebp.parse_noise("10, 40") == [10.0, 40.0]


def test_region_coverage_counts_the_labelled_calcium_the_networks_see():
    from training.evaluate_broad_plaques import region_coverage

    from CoronaryCalciumDINOLib.pipeline import load_manifest

    st = generate_study(610002, matrix=256, broad_plaques=1.0, plaques=True)
    inside, labelled = region_coverage(st, load_manifest(None))
    assert labelled == int((np.asarray(st.labels) > 0).sum()) > 1000  # the study lies in the cardiac range
    assert inside == labelled


def test_training_results_keep_a_dotted_name(tmp_path):
    """write_results (evaluate_kernels, evaluate_broad_plaques): OUT + .md / .json, so a name
    with a version (results-0.5.1) keeps it; an OUT given as OUT.md is the same OUT."""
    from training.evaluate_kernels import write_results

    for given, stem in (("r-0.5.1", "r-0.5.1"), ("s.md", "s")):
        write_results(tmp_path / given, "T", "x.py", ["--a"], ["first"], "table", {"k": 1})
        assert (tmp_path / f"{stem}.md").read_text().startswith("# T\n\n- first\n- command: `python training/x.py --a`")
        assert (tmp_path / f"{stem}.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r-0.5.1.json", "r-0.5.1.md", "s.json", "s.md"]


def test_region_coverage_script_counts_the_labelled_candidates_the_region_leaves_out(monkeypatch, capsys):
    """training/region_coverage.py: a synthetic study's labelled candidates all kept by the
    region; a region keeping nothing leaves every one out; bad seeds refused in one line."""
    from training import region_coverage as rc

    from CoronaryCalciumDINOLib.pipeline import inference as inf
    from CoronaryCalciumDINOLib.pipeline import load_manifest

    st = generate_study(610002, matrix=256, broad_plaques=1.0, plaques=True)
    facts = load_manifest(None)
    c = rc.coverage(st, facts)
    assert c["labelled"] > 50 and c["voxels"] > 1000
    assert c["left_out"] == 0 and c["voxels_left_out"] == 0
    monkeypatch.setattr(inf, "keep_heart_region", lambda cands, *a: (inf.cd.subset(cands, np.zeros(len(cands), bool)), len(cands)))
    c = rc.coverage(st, facts)
    assert c["left_out"] == c["labelled"] and c["voxels_left_out"] == c["voxels"]
    assert rc.main(["--seeds", "5:3"]) == 2
    assert capsys.readouterr().err.strip() == "region_coverage: error: --seeds must be START:END with 0 <= START < END, got 5:3"


def test_cli_synth_broad_plaques(tmp_path):
    cmd = [sys.executable, "-m", "CoronaryCalciumDINOLib.cli", "synth", "--n", "1", "--seed", "4",
           "--out", str(tmp_path), "--matrix", "48", "--slices-range", "8", "10", "--broad-plaques", "0.5"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert load_study(tmp_path / "synth-000004").meta["params"]["broad_plaques"] == 0.5
    for extra in (["--phantoms"], ["--broad-plaques", "2"]):
        bad = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=300)
        assert bad.returncode == 2 and "--broad-plaques" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    # the folder holds a study of another share: refused, not taken
    other = subprocess.run(cmd[:-1] + ["0.2"], capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "broad_plaques=0.5" in other.stderr


def test_scan_ends_cuts_keep_the_geometry_and_end_at_the_calcium():
    """training/evaluate_scan_ends.py: a study cut to end at its highest calcified slice (and
    to begin at its lowest), with either slice order, keeps each kept slice where it was."""
    from training import evaluate_scan_ends as ese

    from CoronaryCalciumDINOLib.io.volume import CTVolume

    hu = np.arange(10 * 4 * 4, dtype=np.float32).reshape(10, 4, 4)
    labels = np.zeros((10, 4, 4), np.uint8)
    labels[3, 1, 1] = 2
    labels[6, 2, 2] = 4
    up = CTVolume(hu=hu, spacing=(3.0, 0.5, 0.5), origin=(1.0, 2.0, 10.0))
    assert ese.end_cuts(up, labels) == {"top": (0, 7, 6), "bottom": (3, 10, 0)}
    down = CTVolume(hu=hu, spacing=(3.0, 0.5, 0.5), origin=(1.0, 2.0, 10.0), direction=np.diag([1.0, 1.0, -1.0]))
    assert ese.end_cuts(down, labels) == {"top": (3, 10, 0), "bottom": (0, 7, 6)}  # slice 0 is the most superior
    assert ese.end_cuts(up, np.zeros_like(labels)) == {}
    for ct in (up, down):
        c = ese.cut(ct, 3, 7)
        assert np.array_equal(c.hu, hu[3:7])
        assert np.allclose(c.ijk_to_lps() @ [0, 0, 0, 1], ct.ijk_to_lps() @ [0, 0, 3, 1])
    rows = [{"seed": 1, "end": "top", "slices": 7, "reference_end": 40.0, "model_end": 30.0,
             "model_end_right_artery": 20.0, "reference_total": 100.0, "model_total": 90.0},
            {"seed": 2, "end": "top", "slices": 5, "reference_end": 10.0, "model_end": 0.0,
             "model_end_right_artery": 0.0, "reference_total": 10.0, "model_total": 0.0}]
    lines = ese.table(rows).splitlines()
    assert lines[2] == "| top calcium | 2 | 50 | 30 (60%) | 20 (40%) | 1 of 2 | 110 | 90 |"
    assert len(lines) == 3  # no bottom rows, no bottom line
    below = [dict(rows[0], end="bottom", reference_end=0.0, model_end=2.0, model_end_right_artery=0.0)]
    assert ese.table(below).splitlines()[2] == "| bottom calcium | 1 | 0 | 2 | 0 | 0 of 0 | 100 | 90 |"


def test_scan_ends_tiny_run_writes_its_results(tmp_path):
    """training/evaluate_scan_ends.py on one patient: both cuts scored by the default bundle,
    the table and the rows written, a bad seed range refused in one line."""
    import json

    from training import evaluate_scan_ends as ese

    assert ese.main(["--seeds", "620000:620001", "--out", str(tmp_path / "ends")]) == 0
    doc = json.loads((tmp_path / "ends.json").read_text())
    assert [r["end"] for r in doc["rows"]] == ["top", "bottom"] and doc["model"]["name"] == "ccdino-default"
    for r in doc["rows"]:
        assert r["reference_total"] > 0 and 0 <= r["model_end_right_artery"] <= r["model_end"] + 1e-6
    assert "| top calcium | 1 |" in (tmp_path / "ends.md").read_text()
    assert ese.main(["--seeds", "5:5"]) == 2
