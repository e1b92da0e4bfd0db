"""The training side of the candidate design at tiny scale, on the CPU: caches from the
inference crop sampler, DINO-LG / DINO pretraining (resumable), detector heads, baseline,
segmenter, bundle assembly and evaluation in one command."""

from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from CoronaryCalciumDINOLib.data.studies import load_study  # noqa: E402
from CoronaryCalciumDINOLib.pipeline.candidates import CONTEXT_INDEX, CandidateConfig, crop_hu, find_candidates  # noqa: E402
from CoronaryCalciumDINOLib.pipeline.inference import keep_heart_region, locate  # noqa: E402
from CoronaryCalciumDINOLib.synth import write_studies  # noqa: E402
from training import pretrain_candidates  # noqa: E402
from training.candidate_data import build_cache, load_cache  # noqa: E402
from shared_data import interrupt_on_call  # noqa: E402


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cand")
    dirs = write_studies([11, 12, 13], root / "studies", matrix=192, n_slices=12, plaques=True)
    return dirs, build_cache(dirs, root / "train.npz", CandidateConfig(), max_neg=50, n_random=20)


def test_cache_holds_the_inference_input(tiny_cache):
    dirs, path = tiny_cache
    d = load_cache(path)
    assert d["crops"].shape[1:] == (40, 40) and d["pixel_labels"].shape[1:] == (32, 32)
    assert (d["target"] > 0).any() and (d["target"] == 0).any()
    assert d["random_crops"].shape == (60, 40, 40)
    # a study's candidates, recomputed by the inference functions: same crops
    i = int(d["study"][np.flatnonzero(d["target"] > 0)[0]])
    st = load_study(dirs[i], with_heart=False)
    hu = np.asarray(st.ct.hu, np.float32)
    anatomy, (z0, z1) = locate(hu, st.ct.spacing)  # the pipeline's anatomy step, as training uses it
    hu, labels = hu[z0:z1], st.labels[z0:z1]
    c, outside = keep_heart_region(find_candidates(hu, st.ct.spacing, CandidateConfig()), anatomy, hu)
    assert outside > 0  # bone and what lies outside the heart region never reach the networks
    y = c.targets(labels)
    mine = d["study"] == i
    pos = np.flatnonzero(y > 0)
    np.testing.assert_array_equal(d["target"][mine][d["target"][mine] > 0], y[pos])
    k = int(np.flatnonzero(mine & (d["target"] > 0))[0])
    same = crop_hu(hu, c, [pos[0]])[0]
    np.testing.assert_allclose(d["crops"][k, 4:36, 4:36].astype(np.float32), same, atol=0.5)  # float16 storage
    # negatives beyond the cap carry weights that restore the true count
    assert d["weight"][mine][d["target"][mine] == 0].sum() == pytest.approx((y == 0).sum())
    # an up-to-date cache is reused, not rebuilt
    mtime = path.stat().st_mtime_ns
    build_cache(dirs, path, CandidateConfig(), max_neg=50, n_random=20)
    assert path.stat().st_mtime_ns == mtime


def test_training_cache_keeps_what_the_region_leaves_out(tiny_cache, tmp_path):
    """``outside_region``: the bone and chest wall's candidates join as the networks' negatives,
    flagged ``in_region`` False; the region's own candidates are those of the plain cache."""
    dirs, path = tiny_cache
    inner = load_cache(path)
    both_path = build_cache(dirs, tmp_path / "both.npz", CandidateConfig(), max_neg=None, n_random=0, outside_region=True)
    both = load_cache(both_path)
    assert both["meta"]["outside_region"] is True and "outside_region" not in inner["meta"]
    assert inner["in_region"].all()
    out = ~both["in_region"]
    assert out.sum() > 0 and (both["target"][out] == 0).mean() > 0.9  # almost all not calcium
    # the region's own candidates are the plain cache's (uncapped here, so every one of them)
    np.testing.assert_array_equal(both["n_candidates"], inner["n_candidates"])
    np.testing.assert_array_equal(np.bincount(both["study"][both["in_region"]], minlength=len(dirs)), inner["n_candidates"])
    pos_both, pos_inner = (both["target"] > 0) & both["in_region"], inner["target"] > 0
    np.testing.assert_array_equal(both["crops"][pos_both], inner["crops"][pos_inner])
    # what was left out is bright bone and cartilage, not only noise: peaks far above the region's negatives
    peak = both["context"][:, CONTEXT_INDEX["peak_hu_k"]]
    assert np.percentile(peak[out], 90) > np.percentile(peak[both["in_region"] & (both["target"] == 0)], 90)
    # multi-view pretraining finds every candidate of such a cache again, with its neighbours
    from training.candidate_data import build_adjacent

    adj = np.load(build_adjacent(both_path, Path(dirs[0]).parent, tmp_path / "adj.npz", log=lambda m: None))
    assert int(adj["unmatched"]) == 0 and len(adj["crops_adjacent"]) == len(both["crops"])
    # the segmenter's part: the region's candidates, and of the others only the small ones
    from training.train_candidates import region_part

    assert region_part(inner) is inner
    seg = region_part(both)
    assert seg["in_region"].all() and len(seg["target"]) == both["in_region"].sum() == len(seg["crops"])
    area = np.exp(both["context"][:, CONTEXT_INDEX["log_area_mm2"]])
    assert (area[out] > 20).any() and (area[out] <= 20).any()
    specks = region_part(both, 20.0)
    assert len(specks["crops"]) == int((both["in_region"] | (area <= 20)).sum())
    assert np.exp(specks["context"][~specks["in_region"], CONTEXT_INDEX["log_area_mm2"]]).max() <= 20


def test_cache_cuts_a_share_of_studies_to_a_heart_centred_field(tiny_cache, tmp_path):
    """``cut_share``: a study's field (180-220 mm, up to 30 mm off the heart) drawn from its seed
    alone; its samples are what inference gives the networks on the CT cut to that field."""
    from training.candidate_data import CUT_FIELD_MM, CUT_OFF_MM, _cut, cut_field

    names = [f"synth-{i:06d}" for i in range(1000, 1400)]
    fields = [cut_field(n, 0.3) for n in names]
    assert 0.2 < np.mean([f is not None for f in fields]) < 0.4
    assert fields == [cut_field(n, 0.3) for n in names]  # the same in every cache and run
    assert all(cut_field(n, 0.0) is None for n in names) and all(cut_field(n, 1.0) is not None for n in names)
    side, back, left = np.array([cut_field(n, 1.0) for n in names]).T
    assert CUT_FIELD_MM[0] <= side.min() and side.max() <= CUT_FIELD_MM[1]
    assert np.abs(back).max() <= CUT_OFF_MM and np.abs(left).max() <= CUT_OFF_MM and back.min() < -20 < 20 < left.max()
    dirs, plain_path = tiny_cache
    cut_path = build_cache(dirs, tmp_path / "cut.npz", CandidateConfig(), max_neg=None, n_random=0, cut_share=1.0)
    cut = load_cache(cut_path)
    assert cut["meta"]["cut_share"] == 1.0 and "cut_share" not in load_cache(plain_path)["meta"]
    i = int(cut["study"][np.flatnonzero(cut["target"] > 0)[0]])
    st = load_study(dirs[i], with_heart=False)
    field = cut_field(Path(dirs[i]).name, 1.0)
    hu, labels = _cut(np.asarray(st.ct.hu, np.float32), st.labels, st.ct.spacing, field)
    assert hu.shape[0] == st.ct.hu.shape[0] and hu.shape[1] < st.ct.hu.shape[1]
    assert abs(hu.shape[1] * st.ct.spacing[1] - field[0]) <= 2 * st.ct.spacing[1]  # the field, inside the image
    anatomy, (z0, z1) = locate(hu, st.ct.spacing)
    hu, labels = hu[z0:z1], labels[z0:z1]
    c, _ = keep_heart_region(find_candidates(hu, st.ct.spacing, CandidateConfig()), anatomy, hu)
    y = c.targets(labels)
    mine = cut["study"] == i
    np.testing.assert_array_equal(cut["target"][mine], y)
    k = int(np.flatnonzero(mine & (cut["target"] > 0))[0])
    same = crop_hu(hu, c, [int(np.flatnonzero(y > 0)[0])])[0]
    np.testing.assert_allclose(cut["crops"][k, 4:36, 4:36].astype(np.float32), same, atol=0.5)
    # multi-view pretraining finds every candidate of the cut cache again, on the cut scans
    from training.candidate_data import build_adjacent

    adj = np.load(build_adjacent(cut_path, Path(dirs[0]).parent, tmp_path / "adj.npz", log=lambda m: None))
    assert int(adj["unmatched"]) == 0


def test_a_cut_study_narrowed_to_its_cardiac_range_keeps_its_slices_aligned(tiny_cache, monkeypatch):
    """A long scan is looked at on its cardiac range only: the cut's calcium slices are those of
    that range (a chest CT's range is narrower than the scan; here one slice off each end)."""
    from training import candidate_data as cdata

    dirs, _ = tiny_cache
    real = cdata.locate

    def narrowed(hu, spacing):
        anatomy, _ = real(hu, spacing)
        return anatomy.crop(1, hu.shape[0] - 1), (1, hu.shape[0] - 1)

    monkeypatch.setattr(cdata, "locate", narrowed)
    calcified = 0
    for d in dirs:
        nz = load_study(d, with_heart=False).ct.hu.shape[0]
        whole = cdata.study_samples(d, CandidateConfig(), 4, None, 0, np.random.default_rng(0))
        cut = cdata.study_samples(d, CandidateConfig(), 4, None, 0, np.random.default_rng(0), cut_share=1.0)
        assert len(whole["slice_has_calcium"]) == len(cut["slice_has_calcium"]) == nz - 2
        assert not (cut["slice_has_calcium"] & ~whole["slice_has_calcium"]).any()
        calcified += int(cut["slice_has_calcium"].any())
    assert calcified > 0


@pytest.mark.parametrize("guided", [True, False])
def test_views_and_a_few_dino_steps_resume(tiny_cache, tmp_path, guided, monkeypatch, capsys):
    _, path = tiny_cache
    gen = torch.Generator().manual_seed(0)
    hu = torch.from_numpy(load_cache(path)["crops"][:5].astype(np.float32))
    views = pretrain_candidates.make_views(hu, 32, 4, 3, 16, guided, [(-160, 240), (130, 1130)], gen)
    assert [tuple(v.shape) for v in views] == [(5, 2, 32, 32)] * 2 + [(5, 2, 16, 16)] * 3
    assert all(float(v.min()) >= 0 and float(v.max()) <= 1 for v in views)
    out = tmp_path / "ssl"
    args = ["--cache", str(path), "--out", str(out), "--steps", "4", "--batch", "8", "--ckpt-every", "2",
            "--threads", "1", "--device", "cpu"] + (["--label-guided"] if guided else [])
    # interrupted after the first checkpoint (step 2), then resumed to the end
    interrupt_on_call(monkeypatch, pretrain_candidates, "update_teacher", 3)
    with pytest.raises(KeyboardInterrupt):
        pretrain_candidates.main(args)
    assert (out / "checkpoint.pt").exists() and not (out / "backbone.pt").exists()
    monkeypatch.undo()
    pretrain_candidates.main(args)
    assert "resuming at step 2" in capsys.readouterr().out
    state = torch.load(out / "backbone.pt", weights_only=False)
    assert state["ssl"]["label_guided"] is guided and state["config"]["patch_size"] == 8
    assert not (out / "checkpoint.pt").exists()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and all(np.isfinite(r["loss"]) for r in log)


@pytest.mark.slow
def test_build_default_bundle_tiny(tmp_path, capsys):
    """The one-command recipe end to end at tiny scale; then the bundle runs."""
    from CoronaryCalciumDINOLib.pipeline import load_bundle, run_pipeline
    from training import build_default_bundle

    out, res = tmp_path / "bundle", tmp_path / "results"
    argv = ["--work", str(tmp_path / "work"), "--out", str(out), "--results", str(res), "--n-train", "4",
            "--n-val", "2", "--n-test", "2", "--matrix", "160", "--n-slices", "10", "--train-plaques",
            "--ssl-steps", "3", "--ssl-batch", "8", "--seg-steps", "3", "--threads", "1", "--device", "cpu",
            "--target-sensitivity", "0.9", "--n-calibration", "3", "--n-phantoms", "2", "--n-val-phantoms", "1",
            "--phantom-seed", "700002", "--n-test-phantoms", "1", "--non-gated-every", "2", "--cut-fields", "0.3"]
    assert build_default_bundle.main(argv) == 0
    # every 2nd training study is its non-gated reconstruction; the held-out ones stay gated
    assert sorted(p.name for p in (tmp_path / "work" / "studies").iterdir()) == [
        "synth-001000", "synth-001002", "synth-nongated-001001", "synth-nongated-001003"]
    assert all(p.name.startswith("synth-9") for p in (tmp_path / "work" / "heldout").iterdir())
    metrics = json.loads((res / "ccdino-default-metrics.json").read_text())["metrics"]
    h = metrics["heldout_synthetic"]
    assert h["n_studies"] == 2 and "zero_scored_zero" in h["pipeline"]
    assert "baseline_gbm_hand_features" in metrics and metrics["phantom"]["slices"] == 47
    assert metrics["heldout_synthetic_phantoms"]["n_studies"] == 1
    # the training cache holds the chest wall's candidates too; validation only the region's
    assert load_cache(tmp_path / "work" / "train.npz")["meta"]["outside_region"] is True
    assert "outside_region" not in load_cache(tmp_path / "work" / "val.npz")["meta"]
    # --cut-fields 0.3: a share of the training and validation studies cut to a heart-centred field;
    # the held-out ones never
    assert load_cache(tmp_path / "work" / "train.npz")["meta"]["cut_share"] == 0.3
    assert load_cache(tmp_path / "work" / "val.npz")["meta"]["cut_share"] == 0.3
    assert "cut_share" not in load_cache(tmp_path / "work" / "test.npz")["meta"]
    commands = json.loads((res / "ccdino-default-commands.json").read_text())
    assert "--seg-outside-max-mm2 20.0" in commands["stages"]["supervised"]
    # the segmenter's draw settings always passed (the defaults: 0.6.7's)
    assert "--seg-size-power 0.5 --seg-coarse-dropout 0.5 --seg-dropped-learn calcium" in commands["stages"]["supervised"]
    assert sorted(p.name for p in (tmp_path / "work" / "phantoms").iterdir()) == ["synth-phantom-700002", "synth-phantom-700003"]
    b = load_bundle(out)
    assert "one in 2 of them (2) as its non-gated" in b.manifest["trained_on"]
    assert "0.3 share of the training and validation studies was cut" in (out / "MODEL_CARD.md").read_text()
    assert b.phantom_detector is not None and 0 < b.phantom_threshold < 1
    from training.train_candidates import COARSE_CONTEXT

    assert b.segmenter.config.calcium_blind == [int(i) for i in COARSE_CONTEXT]  # calcium decided without the views
    assert b.manifest["candidates"] == CandidateConfig().to_dict()
    assert b.noise_rule.to_dict() == metrics["noise_rule"]["rule"] and metrics["noise_rule"]["studies"] == 3
    st = load_study(sorted((tmp_path / "work" / "heldout").iterdir())[0], with_heart=False)
    assert run_pipeline(st.ct, b, device="cpu").labels.shape == st.ct.shape
    # a second run resumes: every stage is found done, only the bundle is written again
    capsys.readouterr()
    assert build_default_bundle.main(argv + ["--overwrite"]) == 0
    log = capsys.readouterr().err
    assert "stage 3" not in log and "stage 4" not in log and "bundle written" in log
    # a changed setting re-makes the stages that depend on it, and only those
    argv[argv.index("--seg-steps") + 1] = "4"
    assert build_default_bundle.main(argv + ["--overwrite"]) == 0
    log = capsys.readouterr().err
    assert "stage 3" not in log and "supervised: inputs changed" in log and "stage 4:" in log
    assert "stage 4b" in log  # the noise rule depends on the networks
    # more threads make the same stages: nothing is made again
    argv[argv.index("--threads") + 1] = "2"
    assert build_default_bundle.main(argv + ["--overwrite"]) == 0
    log = capsys.readouterr().err
    assert "stage 3" not in log and "stage 4" not in log and "inputs changed" not in log
    # another SSL variant in the same --work: the shared studies and caches, its own networks
    work = tmp_path / "work"
    lg_sup = (work / "supervised" / "supervised.pt").read_bytes()
    argv[argv.index("--out") + 1] = str(tmp_path / "bundle-mv")
    assert build_default_bundle.main(argv + ["--ssl-variant", "dino-lg-mv"]) == 0
    log = capsys.readouterr().err
    assert "stage 3: DINO-LG + multi-view" in log and "stage 4:" in log and "inputs changed" not in log
    made = [line for line in log.splitlines() if " synth synth-" in line and "exists, skipped" not in line]
    assert not made  # no study made again
    for made in ("train-adjacent.npz", "ssl-dino-lg-mv", "supervised-dino-lg-mv", "phantom-dino-lg-mv",
                 "noise_rule-dino-lg-mv.json", "candidate-dino-lg-mv"):
        assert (work / made).exists(), made
    assert (work / "supervised" / "supervised.pt").read_bytes() == lg_sup
    ssl = torch.load(work / "ssl-dino-lg-mv" / "backbone.pt", map_location="cpu", weights_only=False)["ssl"]
    assert ssl["multiview"] == "adjacent" and ssl["label_guided"] is True
    weights = "backbone-00.safetensors"
    assert load_bundle(tmp_path / "bundle-mv").manifest["files"][weights] != b.manifest["files"][weights]
    assert "multi-view" in (tmp_path / "bundle-mv" / "MODEL_CARD.md").read_text()
    assert "multi-view" not in (out / "MODEL_CARD.md").read_text()
    timings = json.loads((res / "ccdino-dino-lg-mv-metrics.json").read_text())["timings_s"]
    assert "ssl_dino_lg_mv_s" in timings and "ssl_s" not in timings and "adjacent_s" in timings
    # --seed: the networks trained again from the same studies and caches, seeded otherwise
    argv[argv.index("--out") + 1] = str(tmp_path / "bundle-seed1")
    capsys.readouterr()
    assert build_default_bundle.main(argv + ["--seed", "1"]) == 0
    log = capsys.readouterr().err
    assert "ssl-dino-lg: inputs changed" in log and "stage 4:" in log
    assert not [line for line in log.splitlines() if " synth synth-" in line and "exists, skipped" not in line]
    stages = json.loads((res / "ccdino-default-seed1-commands.json").read_text())["stages"]
    assert all("--seed 1" in stages[k] for k in ("ssl", "supervised", "phantom"))
    assert "--seed" not in json.loads((res / "ccdino-default-commands.json").read_text())["stages"]["supervised"]
    assert load_bundle(tmp_path / "bundle-seed1").manifest["files"][weights] != b.manifest["files"][weights]


def test_another_ssl_variant_never_replaces_the_shipped_bundle(tmp_path):
    """A variant other than the default must be given its own --out: the default one is the
    shipped bundle's folder (refused before any work)."""
    from training import build_default_bundle

    with pytest.raises(SystemExit, match="needs its own --out"):
        build_default_bundle.main(["--ssl-variant", "dino-lg-mv", "--work", str(tmp_path / "w"), "--overwrite"])
    # so must another seed (an independent bundle, not the shipped one)
    with pytest.raises(SystemExit, match="--seed 1 needs its own --out"):
        build_default_bundle.main(["--seed", "1", "--work", str(tmp_path / "w"), "--overwrite"])
    with pytest.raises(SystemExit, match="--seed must be >= 0"):
        build_default_bundle.main(["--seed", "-1", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "b")])
    # the segmenter's draw settings, before any work
    with pytest.raises(SystemExit, match="--seg-coarse-dropout must be a share between 0 and 1, got 1.5"):
        build_default_bundle.main(["--seg-coarse-dropout", "1.5", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="--seg-size-power must be >= 0"):
        build_default_bundle.main(["--seg-size-power", "-1", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "b")])
    assert not (tmp_path / "w").exists()


def test_noise_rule_fit_on_a_lesion_table():
    """The fit picks the rule that zeroes the calcium-free studies without losing real lesions,
    and prefers the rule that drops the fewest lesions among equals."""
    from training.fit_noise_rule import fit, outcome

    def les(agatston, contrast, area):
        return {"agatston": agatston, "contrast_sd": contrast, "area_mm2": area}

    table = [
        {"study": "zero-a", "reference_total": 0.0, "lesions": [les(1.2, 3.1, 1.5)]},  # noise speck
        {"study": "zero-b", "reference_total": 0.0, "lesions": [les(0.8, 3.6, 2.2), les(0.5, 2.5, 1.1)]},
        {"study": "zero-c", "reference_total": 0.0, "lesions": []},
        {"study": "small", "reference_total": 3.0, "lesions": [les(3.0, 5.2, 2.0)]},  # faint but real
        {"study": "big", "reference_total": 250.0, "lesions": [les(240.0, 30.0, 20.0), les(10.0, 4.0, 9.0)]},
    ]
    none = outcome(table, 0.0, 0.0)
    assert none["power_of_zero"] == pytest.approx(1 / 3) and none["risk_accuracy"] == pytest.approx(3 / 5)
    res = fit(table)
    rule = res["rule"]
    assert res["with_rule"]["power_of_zero"] == 1.0 and res["with_rule"]["risk_accuracy"] == 1.0
    # the specks (contrast <= 3.6, area <= 2.2) go, the faint real lesion (5.2 SD) and the
    # large faint one (9 mm^2) stay; among such rules the one dropping fewest lesions wins
    assert 3.6 < rule["min_contrast_sd"] <= 5.2 and 2.2 < rule["min_area_mm2"] <= 9.0
    assert res["with_rule"]["dropped_lesions"] == 3
    assert res["without_rule"] == none


def test_noise_rule_fit_keeps_no_rule_when_no_rule_is_best():
    """A table where every small faint lesion is real: no rule beats every rule of the grid,
    so none is installed."""
    from training.fit_noise_rule import fit

    table = [
        {"study": "zero", "reference_total": 0.0, "lesions": []},
        {"study": "small", "reference_total": 1.0, "lesions": [{"agatston": 1.0, "contrast_sd": 2.5, "area_mm2": 1.2}]},
    ]
    res = fit(table)
    assert res["rule"]["min_contrast_sd"] == 0.0 and res["rule"]["min_area_mm2"] == 0.0
    assert res["with_rule"]["risk_accuracy"] == 1.0 and res["with_rule"]["dropped_lesions"] == 0


def test_noise_rule_fit_uses_the_neighbouring_slices():
    """Two faint specks of the same contrast and area: the real one shows on a neighbouring
    slice, the noise does not; the fit finds a neighbour limit between them."""
    from training.fit_noise_rule import fit

    def les(agatston, contrast, area, neighbour):
        return {"agatston": agatston, "contrast_sd": contrast, "area_mm2": area, "neighbour_sd": neighbour}

    table = [
        {"study": "zero", "reference_total": 0.0, "lesions": [les(1.0, 3.0, 1.5, 1.0)]},
        {"study": "faint", "reference_total": 1.0, "lesions": [les(1.0, 3.0, 1.5, 6.0)]},
        {"study": "big", "reference_total": 300.0, "lesions": [les(300.0, 40.0, 30.0, 20.0)]},
    ]
    res = fit(table)
    assert res["with_rule"]["power_of_zero"] == 1.0 and res["with_rule"]["risk_accuracy"] == 1.0
    assert 1.0 < res["rule"]["min_neighbour_sd"] <= 6.0
    assert res["without_rule"]["risk_accuracy"] == pytest.approx(2 / 3)


def test_noise_rule_split_check_measures_a_rule_on_studies_it_never_saw(tmp_path, capsys):
    """--split N: the rule fitted on the first N studies is measured on the others. The first
    studies' only noise speck is faint (3 SD), so their rule stops just above it; a brighter
    speck (4 SD) among the others passes that rule, and the rule fitted on all of them
    removes it. The CLI fits from a saved lesion table and refuses a bad split."""
    from training.fit_noise_rule import main, split_check

    def les(agatston, contrast, area):
        return {"agatston": agatston, "contrast_sd": contrast, "area_mm2": area}

    table = [
        {"study": "a-zero", "reference_total": 0.0, "lesions": [les(1.0, 3.0, 1.5)]},
        {"study": "a-faint", "reference_total": 2.0, "lesions": [les(2.0, 5.0, 1.5)]},
        {"study": "b-zero", "reference_total": 0.0, "lesions": [les(1.0, 4.0, 1.5)]},
        {"study": "b-zero2", "reference_total": 0.0, "lesions": []},
        {"study": "b-big", "reference_total": 200.0, "lesions": [les(200.0, 30.0, 20.0)]},
    ]
    res = split_check(table, 2)
    assert res["n_fit"] == 2 and res["n_rest"] == 3
    assert 3.0 < res["rule_fitted_on_first"]["min_contrast_sd"] <= 4.0
    assert res["first_rule_on_first"]["power_of_zero"] == 1.0
    assert res["first_rule_on_rest"]["power_of_zero"] == pytest.approx(1 / 2)  # b-zero's speck passes
    assert 4.0 < res["rule_fitted_on_all"]["min_contrast_sd"] <= 5.0
    assert res["all_rule_on_rest"]["power_of_zero"] == 1.0
    saved = tmp_path / "table.json"
    saved.write_text(json.dumps(table))
    out = tmp_path / "rule.json"
    assert main(["--from-table", str(saved), "--split", "2", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["split"] == json.loads(json.dumps(res))
    capsys.readouterr()
    assert main(["--from-table", str(saved), "--split", "5", "--out", str(tmp_path / "x.json")]) == 2
    assert "--split 5" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
    saved.write_text(json.dumps({"rule": {}}))  # a fit's output, not a lesion table
    assert main(["--from-table", str(saved), "--out", str(tmp_path / "x.json")]) == 2
    assert "not one written by --save-table" in capsys.readouterr().err
    for bad in (["--from-table", str(saved), "--split", "0"], ["--from-table", str(saved), "--bundle", "b"]):
        with pytest.raises(SystemExit) as e:
            main(bad + ["--out", str(tmp_path / "x.json")])
        assert e.value.code == 2


def test_retrain_segmenter_keeps_the_rest_of_the_bundle(tiny_cache, tmp_path, capsys):
    """training/retrain_segmenter.py: a new segmenter trained on a cache, the backbone,
    detector, threshold, noise rule and phantom head the bundle's own, tensor for tensor;
    the shipped folder, an existing --out and a cache of other candidates are refused."""
    from safetensors.torch import load_file

    from CoronaryCalciumDINOLib.models.bundle import DEFAULT_BUNDLE_DIR, load_bundle, save_random_bundle
    from training import retrain_segmenter

    _, cache = tiny_cache
    src = save_random_bundle(tmp_path / "src", phantom=True)
    out = tmp_path / "out"
    assert retrain_segmenter.main(["--bundle", str(src), "--train", str(cache), "--val", str(cache),
                                   "--out", str(out), "--steps", "3", "--threads", "1", "--device", "cpu",
                                   "--note", "Rebuilt by the commands of its results."]) == 0
    b, a = load_bundle(out), load_bundle(src)
    assert b.version == "0-seg" and "segmenter retrained" in b.manifest["trained_on"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "Rebuilt by the commands of its results." in card and card.index("Rebuilt") < card.index("## The bundle it started from")
    assert b.manifest["metrics"]["segmenter_retrained"]["steps"] == 3
    from training.candidate_data import SEGMENTER_COARSE_DROPOUT, SEGMENTER_SIZE_POWER

    assert b.manifest["metrics"]["segmenter_retrained"]["size_power"] == SEGMENTER_SIZE_POWER
    assert b.manifest["metrics"]["segmenter_retrained"]["coarse_dropout"] == SEGMENTER_COARSE_DROPOUT
    assert b.manifest["metrics"]["segmenter_retrained"]["validation"]["candidates"] > 0
    assert b.threshold == a.threshold and b.manifest["candidates"] == a.manifest["candidates"]
    for part in ("backbone", "detector", "phantom_detector"):
        old, new = load_file(src / f"{part}-00.safetensors"), load_file(out / f"{part}-00.safetensors")
        assert old.keys() == new.keys() and all(bool((old[k] == new[k]).all()) for k in old), part
    old, new = load_file(src / "segmenter-00.safetensors"), load_file(out / "segmenter-00.safetensors")
    assert any(not bool((old[k] == new[k]).all()) for k in old if k in new)
    capsys.readouterr()
    common = ["--bundle", str(src), "--train", str(cache), "--steps", "1", "--device", "cpu"]
    assert retrain_segmenter.main(common + ["--out", str(out)]) == 2
    assert retrain_segmenter.main(common + ["--out", str(DEFAULT_BUNDLE_DIR), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "exists (use --overwrite)" in err and "shipped bundle's folder" in err
    assert retrain_segmenter.main(common + ["--out", str(tmp_path / "o"), "--coarse-dropout", "2"]) == 2
    assert retrain_segmenter.main(common + ["--out", str(tmp_path / "o"), "--size-power", "-0.5"]) == 2
    err = capsys.readouterr().err
    assert "--coarse-dropout must be a share between 0 and 1, got 2" in err and "--size-power must be >= 0" in err
    assert not (tmp_path / "o").exists()


def test_retrain_segmenter_builds_its_caches_from_study_folders(tiny_cache, tmp_path, capsys):
    """--studies DIR: the caches are built with the bundle's own candidate settings (all but
    the last --n-val studies train, the last validate) and the segmenter trained on them."""
    from CoronaryCalciumDINOLib.models.bundle import load_bundle, save_random_bundle
    from training import retrain_segmenter

    dirs = [Path(d) for d in tiny_cache[0]]
    studies = dirs[0].parent
    src = save_random_bundle(tmp_path / "src")
    out = tmp_path / "out"
    common = ["--bundle", str(src), "--steps", "2", "--threads", "1", "--device", "cpu"]
    assert retrain_segmenter.main(common + ["--studies", str(studies), "--n-val", "1", "--out", str(out)]) == 0
    rec = load_bundle(out).manifest["metrics"]["segmenter_retrained"]
    val = load_cache(studies / "segmenter-val.npz")
    assert rec["train_studies"] == 2 and rec["validation"]["candidates"] == val["target"].size
    train = load_cache(studies / "segmenter-train.npz")
    assert list(train["meta"]["studies"]) == [d.name for d in dirs[:2]]
    assert list(val["meta"]["studies"]) == [dirs[2].name]
    assert train["meta"]["config"] == load_bundle(src).candidate_config.to_dict()
    capsys.readouterr()
    assert retrain_segmenter.main(common + ["--studies", str(studies), "--n-val", "3", "--out", str(tmp_path / "o2")]) == 2
    assert retrain_segmenter.main(common + ["--studies", str(studies), "--train", str(studies / "segmenter-train.npz"),
                                            "--out", str(tmp_path / "o3")]) == 2
    assert retrain_segmenter.main(common + ["--out", str(tmp_path / "o4")]) == 2
    empty = tmp_path / "none"
    empty.mkdir()
    assert retrain_segmenter.main(common + ["--studies", str(empty), "--out", str(tmp_path / "o5")]) == 2
    assert retrain_segmenter.main(common + ["--train", str(studies / "segmenter-train.npz"), "--n-val", "1",
                                            "--out", str(tmp_path / "o6")]) == 2
    err = capsys.readouterr().err
    assert "--n-val must be 1..2" in err and err.count("either --train (a cache) or --studies") == 2
    assert "holds 0 study folder(s); --studies needs at least 2" in err and "--n-val and --rebuild come with --studies" in err
    # the caches are reused while they match, built again with --rebuild
    stamp = (studies / "segmenter-train.npz").stat().st_mtime_ns
    again = common + ["--studies", str(studies), "--n-val", "1", "--out", str(out), "--overwrite"]
    assert retrain_segmenter.main(again) == 0
    assert (studies / "segmenter-train.npz").stat().st_mtime_ns == stamp
    assert retrain_segmenter.main(again + ["--rebuild"]) == 0
    assert (studies / "segmenter-train.npz").stat().st_mtime_ns != stamp


def test_retrain_segmenter_validation_figures_of_an_empty_cache():
    from training.retrain_segmenter import validation_figures

    fig = validation_figures(None, {"target": np.zeros(0, np.uint8)})
    assert fig == {"candidates": 0, "coronary": 0, "coronary_called_calcium": None, "others_called_calcium": None}


def test_retrain_segmenter_names_the_candidate_setting_a_cache_differs_in():
    from training.retrain_segmenter import mismatch

    cfg = CandidateConfig().to_dict()
    assert mismatch(cfg, dict(cfg)) is None
    assert mismatch(cfg, {**cfg, "crop_px": 24}).startswith("crop_px (bundle 32, cache 24)")
    assert mismatch(cfg, {**cfg, "windows": [[-160, 240]]}).startswith("windows")


def test_segmenter_draws_even_out_candidate_sizes():
    """size_weights: per size bin (one doubling of area), a bin's share of the draws is its
    count to the power 1 - power: power 0 draws alike, 0.5 the square root."""
    from training.train_candidates import size_weights

    ctx = np.zeros((104, len(CONTEXT_INDEX)), np.float32)
    ctx[:100, CONTEXT_INDEX["log_area_mm2"]] = np.log(3.0)  # 100 candidates in the 2-4 mm^2 bin
    ctx[100:, CONTEXT_INDEX["log_area_mm2"]] = np.log(70.0)  # 4 in the 64-128 mm^2 bin
    for power, large_share in ((0.0, 4 / 104), (0.5, 2 / (10 + 2)), (1.0, 0.5)):
        w = size_weights(ctx, power)
        assert w.sum() == pytest.approx(1.0) and (w > 0).all()
        assert w[100:].sum() == pytest.approx(large_share)
        assert np.allclose(w[:100], w[0]) and np.allclose(w[100:], w[100])


@pytest.mark.parametrize("dropout", [0.0, 0.5, 1.0])
def test_segmenter_training_drops_the_coarse_views(tiny_cache, monkeypatch, dropout):
    """train_segmenter(coarse_dropout=p): that share of the drawn candidates has its coarse views
    replaced by the training set's average (what the network standardises to 0); the other
    context features and the crops are left alone."""
    from training import train_candidates as tc

    _, cache_path = tiny_cache
    cache = load_cache(cache_path)
    seen = []
    build = tc.build_candidate_segmenter

    def spy(cfg):
        net = build(cfg)
        forward = net.forward

        def recording(x, ctx):
            if net.training:
                seen.append(ctx.detach().cpu().numpy().copy())
            return forward(x, ctx)

        net.forward = recording
        return net

    monkeypatch.setattr(tc, "build_candidate_segmenter", spy)
    cfg = tc.segmenter_config(cache)
    net = tc.train_segmenter(cache, cfg, steps=12, batch=32, seed=3, log=lambda *a: None, device="cpu",
                             coarse_dropout=dropout)
    ctx = np.concatenate(seen)
    mean = net.context_mean.numpy()
    dropped = np.all(np.isclose(ctx[:, tc.COARSE_CONTEXT], mean[tc.COARSE_CONTEXT], atol=1e-6), axis=1)
    assert len(ctx) == 12 * 32
    if dropout == 0.0:
        assert not dropped.any()
    elif dropout == 1.0:
        assert dropped.all()
    else:
        assert 0.35 < dropped.mean() < 0.65
    rest = np.setdiff1d(np.arange(ctx.shape[1]), tc.COARSE_CONTEXT)
    originals = {tuple(np.round(r, 5)) for r in cache["context"][:, rest]}
    assert all(tuple(np.round(r, 5)) in originals for r in ctx[:, rest])
    with pytest.raises(ValueError, match="coarse-dropout must be a share between 0 and 1, got 1.5"):
        tc.train_segmenter(cache, cfg, steps=1, coarse_dropout=1.5, log=lambda *a: None)
    with pytest.raises(ValueError, match="size-power must be >= 0, got -1"):
        tc.train_segmenter(cache, cfg, steps=1, size_power=-1, log=lambda *a: None)
    with pytest.raises(ValueError, match="dropped-learn must be one of arteries, calcium, got 'sides'"):
        tc.train_segmenter(cache, cfg, steps=1, coarse_dropout=0.5, dropped_learn="sides", log=lambda *a: None)


def test_segmenter_dropped_draws_learn_calcium_only(tiny_cache):
    """train_segmenter(coarse_dropout=1, dropped_learn="calcium"): no draw is asked which
    artery, so a cache with its arteries renamed trains the same network; with "arteries"
    (the five classes) it does not."""
    from training import train_candidates as tc

    _, cache_path = tiny_cache
    cache = load_cache(cache_path)
    assert len(np.unique(cache["pixel_labels"])) > 2
    renamed = dict(cache)
    renamed["pixel_labels"] = np.array([0, 3, 4, 1, 2], cache["pixel_labels"].dtype)[cache["pixel_labels"]]
    cfg = tc.segmenter_config(cache)

    def weights(c, learn):
        net = tc.train_segmenter(c, cfg, steps=4, batch=16, seed=1, log=lambda *a: None, device="cpu",
                                 coarse_dropout=1.0, dropped_learn=learn)
        return torch.cat([v.flatten().float() for v in net.state_dict().values()])

    assert torch.allclose(weights(cache, "calcium"), weights(renamed, "calcium"), atol=1e-6)
    assert not torch.allclose(weights(cache, "arteries"), weights(renamed, "arteries"), atol=1e-4)
    # the network decides calcium without the views only when its dropped draws learnt calcium only,
    # whatever config it was given
    blind = tc.SegmenterConfig.from_dict({**cfg.to_dict(), "calcium_blind": [int(i) for i in tc.COARSE_CONTEXT]})
    for learn, dropout, expected in (("calcium", 1.0, [int(i) for i in tc.COARSE_CONTEXT]), ("arteries", 1.0, []),
                                     ("calcium", 0.0, [])):
        net = tc.train_segmenter(cache, blind, steps=1, batch=8, log=lambda *a: None, device="cpu",
                                 coarse_dropout=dropout, dropped_learn=learn)
        assert net.config.calcium_blind == expected, (learn, dropout)


def test_calcium_only_loss_asks_dropped_crops_for_calcium_only():
    """calcium_only_loss: with no crop flagged it is the class-weighted cross-entropy the
    segmenter trains with; a flagged crop's loss does not change when the probability moves
    between arteries, only when it moves between calcium and background."""
    import torch
    import torch.nn.functional as F
    from training.train_candidates import calcium_only_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 6, 6, generator=g)
    y = torch.randint(0, 5, (3, 6, 6), generator=g)
    y[0, 0, 0], y[0, 0, 1] = 0, 2
    cw = torch.tensor([0.5, 2.0, 1.0, 1.5, 1.2])
    none = torch.zeros(3, dtype=torch.bool)
    assert calcium_only_loss(logits, y, cw, none).item() == pytest.approx(F.cross_entropy(logits, y, weight=cw).item(), rel=1e-5)
    first = torch.tensor([True, False, False])
    base = calcium_only_loss(logits, y, cw, first)
    swapped = logits.clone()
    swapped[0, 1:] = logits[0, [3, 4, 1, 2]]  # the first crop's arteries exchanged
    assert calcium_only_loss(swapped, y, cw, first).item() == pytest.approx(base.item(), rel=1e-5)
    assert F.cross_entropy(swapped, y, weight=cw).item() != pytest.approx(F.cross_entropy(logits, y, weight=cw).item(), rel=1e-3)
    other = logits.clone()
    other[0, 0] += 1.0  # more background in the first crop
    assert calcium_only_loss(other, y, cw, first).item() != pytest.approx(base.item(), rel=1e-3)


def test_retrain_segmenter_validation_figures_per_size(monkeypatch):
    """validation_figures: the shares called calcium, in all and per size bin."""
    from training import train_candidates
    from training.retrain_segmenter import validation_figures

    ctx = np.zeros((6, len(CONTEXT_INDEX)), np.float32)
    ctx[:, CONTEXT_INDEX["log_area_mm2"]] = np.log([2.0, 3.0, 10.0, 60.0, 70.0, 30.0])
    val = {"target": np.array([2, 0, 4, 1, 0, 0]), "context": ctx, "masks": np.ones((6, 4, 4), np.uint8)}
    p_background = np.array([0.1, 0.8, 0.9, 0.2, 0.3, 0.6])  # called calcium: 0, 3, 4
    probs = np.column_stack([p_background] + [(1 - p_background) / 4] * 4)
    monkeypatch.setattr(train_candidates, "segmenter_candidate_probs", lambda net, cache, masks: probs)
    fig = validation_figures(None, val)
    assert fig["coronary"] == 3 and fig["coronary_called_calcium"] == pytest.approx(2 / 3)
    assert fig["others_called_calcium"] == pytest.approx(1 / 3)
    assert fig["by_size"] == {"0-5": [1, 1.0, 1, 0.0], "5-20": [1, 0.0, 0, None], "20-50": [0, None, 1, 0.0],
                              "50-inf": [1, 1.0, 1, 1.0]}


def test_recipe_passes_the_segmenter_draw_settings():
    """The recipe's segmenter stage gets all three draw settings, so that a work folder whose
    segmenter was trained with others (or before they existed) is not current; the model
    card says them when set."""
    from training.build_default_bundle import parse_args, segmenter_draw_flags, segmenter_draw_text

    args = parse_args([])
    assert (args.seg_size_power, args.seg_coarse_dropout, args.seg_dropped_learn) == (0.5, 0.5, "calcium")
    assert args.cut_fields == 0.0  # the shipped bundle's recipe cuts no study
    assert segmenter_draw_flags(args) == ["--seg-size-power", "0.5", "--seg-coarse-dropout", "0.5",
                                          "--seg-dropped-learn", "calcium"]
    text = segmenter_draw_text(args)
    assert "n^-0.5" in text and "0.5 share of them the coarse views" in text and "calcium is decided without" in text
    args = parse_args(["--seg-size-power", "0", "--seg-coarse-dropout", "0", "--seg-dropped-learn", "arteries"])
    assert segmenter_draw_flags(args) == ["--seg-size-power", "0", "--seg-coarse-dropout", "0",
                                          "--seg-dropped-learn", "arteries"]
    assert segmenter_draw_text(args) == ""
    args = parse_args(["--seg-coarse-dropout", "0.25", "--seg-dropped-learn", "arteries"])
    assert "0.25 share" in segmenter_draw_text(args) and "calcium is decided" not in segmenter_draw_text(args)
    from training import train_candidates

    from training import build_default_bundle

    with pytest.raises(SystemExit, match="--cut-fields must be a share between 0 and 1, got 1.5"):
        build_default_bundle.main(["--cut-fields", "1.5", "--work", "w", "--out", "o"])
    with pytest.raises(SystemExit, match="--seg-coarse-dropout must be a share between 0 and 1, got 2"):
        train_candidates.main(["--train", "t.npz", "--val", "v.npz", "--backbone", "random:0", "--out", "o",
                               "--seg-coarse-dropout", "2"])
