"""What a user sees must be true: output names that cannot collide, nothing overwritten
without --overwrite, one-line errors for bad output paths, one definition of a study,
label maps found in the project's own layouts, binary masks warned about, the model
caveat only where a model ran, rounded figures for people, report pictures that show
every lesion, and a README that agrees with the parser."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from CoronaryCalciumDINOLib.cli import main
from CoronaryCalciumDINOLib.constants import ARTERY_COLORS
from CoronaryCalciumDINOLib.data.studies import Study, write_study
from CoronaryCalciumDINOLib.io import CTVolume, write_volume

ROOT = Path(__file__).resolve().parents[1]


def _ct(n=6, size=48, spacing=(3.0, 0.5, 0.5)):
    hu = np.full((n, size, size), 40.0, np.float32)
    return CTVolume(hu=hu, spacing=spacing)


def _lesion(ct, labels, k, r, c, h, w, artery, hu=450.0):
    ct.hu[k, r:r + h, c:c + w] = hu
    labels[k, r:r + h, c:c + w] = artery


def _project_study(root, name, lesion_area_px=8) -> Path:
    """A study folder of the project's format (ct.nrrd, labels.nrrd, study.json)."""
    ct = _ct()
    labels = np.zeros(ct.shape, np.uint8)
    _lesion(ct, labels, 2, 10, 10, 2, lesion_area_px // 2, 2)
    return write_study(Study(id=name, ct=ct, labels=labels, meta={"source": "test"}), root)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


# 1. outputs named after the study; never overwritten without asking ---------------------------

def test_studies_with_the_same_file_name_get_their_own_outputs_and_nothing_is_overwritten(tmp_path, capsys):
    out = tmp_path / "out"
    paths = []
    for name in ("study-123", "study-124", "study-125"):
        ct = _ct()
        labels = np.zeros(ct.shape, np.uint8)
        _lesion(ct, labels, 2, 10, 10, 2, 4, 2, hu=300.0 + 100 * len(paths))
        folder = tmp_path / name
        paths.append((write_volume(ct.hu.astype(np.int16), ct, folder / "ct.nrrd"),
                      write_volume(labels, ct, folder / "labels.nrrd")))
    for ct_path, lab_path in paths:
        assert main(["score", str(ct_path), "--labels", str(lab_path), "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.glob("*.json")) == ["study-123.json", "study-124.json", "study-125.json"]
    first = (out / "study-123.json").read_text()
    assert json.loads(first)["study"] == "study-123"
    # scoring into the same folder again: refused, one line, exit 2, nothing touched
    capsys.readouterr()
    assert main(["score", str(paths[0][0]), "--labels", str(paths[0][1]), "--out", str(out)]) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("ccdino: error:") and "--overwrite" in err[0]
    assert (out / "study-123.json").read_text() == first
    # an explicitly named --json file is not replaced silently either
    named = tmp_path / "mine.json"
    named.write_text("my notes")
    assert main(["score", str(paths[0][0]), "--labels", str(paths[0][1]), "--json", str(named)]) == 2
    assert named.read_text() == "my notes"
    assert main(["score", str(paths[0][0]), "--labels", str(paths[0][1]), "--json", str(named), "--overwrite",
                 "--quiet"]) == 0
    assert json.loads(named.read_text())["study"] == "study-123"


# 2. bad output paths: one line, exit 2 -----------------------------------------------------------

@pytest.fixture()
def study_dir(tmp_path):
    return _project_study(tmp_path / "studies", "synth-000125")


def _one_line_exit_2(capsys, argv, *words):
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = _error_lines(captured.err)
    assert len(err) == 1, captured.err
    assert err[0].startswith("ccdino: error:") and "Traceback" not in captured.err
    for w in words:
        assert w in err[0]


def test_score_out_existing_file_is_one_line_exit_2(study_dir, tmp_path, capsys):
    existing = tmp_path / "existing"
    existing.write_text("x")
    _one_line_exit_2(capsys, ["score", str(study_dir), "--labels", str(study_dir / "labels.nrrd"),
                              "--out", str(existing)], "is a file, not a folder")


def test_batch_out_existing_file_is_one_line_exit_2(study_dir, tmp_path, capsys):
    existing = tmp_path / "existing"
    existing.write_text("x")
    _one_line_exit_2(capsys, ["batch", str(study_dir.parent), "--out", str(existing), "--labels-dir",
                              str(study_dir.parent)], "is a file, not a folder")
    assert existing.read_text() == "x"


def test_batch_out_that_cannot_be_created_is_one_line_exit_2(study_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_exit_2(capsys, ["batch", str(study_dir.parent), "--out", str(blocker / "sub"), "--labels-dir",
                              str(study_dir.parent)], "cannot be created")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_score_json_in_unwritable_place_is_one_line_exit_2(study_dir, tmp_path, capsys):
    _one_line_exit_2(capsys, ["score", str(study_dir), "--labels", str(study_dir / "labels.nrrd"),
                              "--json", "/proc/x.json"], "/proc/x.json")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_exit_2(capsys, ["score", str(study_dir), "--labels", str(study_dir / "labels.nrrd"),
                              "--csv", str(blocker / "x.csv")], "x.csv")


def test_two_outputs_of_one_name_are_refused_before_anything_is_written(study_dir, tmp_path, capsys):
    """--json and --csv (or --out's report and --json) naming one file: one line, exit 2, and
    not even the --out folder is created."""
    same = tmp_path / "a.csv"
    _one_line_exit_2(capsys, ["score", str(study_dir), "--labels", str(study_dir / "labels.nrrd"),
                              "--json", str(same), "--csv", str(same)], "name the same file")
    out = tmp_path / "o"
    _one_line_exit_2(capsys, ["score", str(study_dir), "--labels", str(study_dir / "labels.nrrd"),
                              "--out", str(out), "--json", str(out / "synth-000125.json")], "name the same file")
    assert not same.exists() and not out.exists()


def test_two_file_volume_formats_are_refused_for_outputs(tmp_path, capsys):
    """A .mhd / .nhdr header keeps its data in a second file, which one atomic rename cannot
    move with it: outputs are written in single-file formats only, said in one line."""
    from CoronaryCalciumDINOLib.errors import InputError

    ct = CTVolume(hu=np.zeros((2, 4, 4), np.float32), spacing=(3.0, 0.5, 0.5))
    for name in ("a.mhd", "a.nhdr"):
        with pytest.raises(InputError, match="one file"):
            write_volume(np.zeros((2, 4, 4), np.uint8), ct, tmp_path / name)
    assert not list(tmp_path.iterdir())
    assert write_volume(np.zeros((2, 4, 4), np.uint8), ct, tmp_path / "a.nrrd").is_file()
    phantom = Path(__file__).resolve().parents[1] / "Testing" / "Data" / "qrm-phantom-canon"
    _one_line_exit_2(capsys, ["score", str(phantom), "--attention", str(tmp_path / "att.mhd")], "att.mhd")


# 3. one definition of a study -------------------------------------------------------------------

def test_score_accepts_the_study_folders_batch_accepts(study_dir, tmp_path, capsys):
    from CoronaryCalciumDINOLib.data.studies import list_study_inputs, study_input

    (batch_study,) = list_study_inputs(study_dir.parent)
    assert study_input(study_dir) == batch_study
    assert study_input(study_dir / "ct.nrrd") == batch_study  # ct.* is named after its folder
    assert batch_study.name == "synth-000125" and batch_study.labels == study_dir / "labels.nrrd"
    out = tmp_path / "out"
    assert main(["score", str(study_dir), "--labels", str(study_dir / "labels.nrrd"), "--out", str(out),
                 "--quiet"]) == 0
    assert (out / "synth-000125.json").is_file()
    assert main(["batch", str(study_dir.parent), "--out", str(tmp_path / "b"), "--labels-dir",
                 str(study_dir.parent), "--quiet"]) == 0
    a = json.loads((out / "synth-000125.json").read_text())
    b = json.loads((tmp_path / "b" / "synth-000125.json").read_text())
    assert a["total"] == b["total"] and a["study"] == b["study"]
    assert a["input"] == b["input"] == str(study_dir)  # the path given for the study, not its ct.nrrd


def test_evaluate_coca_refuses_unlabelled_studies(tmp_path):
    from CoronaryCalciumDINOLib.cli.evaluate import coca_study_dirs
    from CoronaryCalciumDINOLib.errors import InputError

    root = tmp_path / "coca"
    good = _project_study(root, "coca-1")
    assert coca_study_dirs(root) == [good]
    ct = _ct()
    write_volume(ct.hu.astype(np.int16), ct, root / "plain.nrrd")
    with pytest.raises(InputError, match="plain"):
        coca_study_dirs(root)


# 4. --labels-dir finds labels.nrrd in the study folders of `ccdino synth`; errors printed once --

def test_batch_labels_dir_finds_study_folder_labels(tmp_path, capsys):
    root = tmp_path / "synth"
    for name in ("synth-1", "synth-2"):
        _project_study(root, name)
    assert main(["batch", str(root), "--out", str(tmp_path / "out"), "--labels-dir", str(root)]) == 0
    for name in ("synth-1", "synth-2"):
        report = json.loads((tmp_path / "out" / f"{name}.json").read_text())
        assert report["labels"].endswith(f"{name}/labels.nrrd")
        assert report["total"]["agatston"] > 0


def test_batch_prints_each_error_once(tmp_path, capsys):
    root = tmp_path / "synth"
    for name in ("synth-1", "synth-2"):
        _project_study(root, name)
    empty = tmp_path / "nolabels"
    empty.mkdir()
    for quiet in ([], ["--quiet"]):
        capsys.readouterr()
        assert main(["batch", str(root), "--out", str(tmp_path / f"out{len(quiet)}"), "--labels-dir", str(empty),
                     *quiet]) == 1
        err = capsys.readouterr().err
        for name in ("synth-1", "synth-2"):
            assert err.count(f"no label map for study {name}") == 1, err


# 5. binary masks are not per-artery labels --------------------------------------------------------

def test_binary_mask_as_labels_is_warned_about(study_dir, tmp_path, capsys):
    from CoronaryCalciumDINOLib.io import read_volume_file

    ct = read_volume_file(study_dir / "ct.nrrd")
    mask = np.zeros(ct.shape, np.uint8)
    mask[:, 5:40, 5:40] = 1  # a "heart mask"
    mask_path = write_volume(mask, ct, tmp_path / "heart.nrrd")
    capsys.readouterr()
    assert main(["score", str(study_dir), "--labels", str(mask_path), "--json", str(tmp_path / "r.json"),
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "ccdino: warning: heart.nrrd holds only the values 0 and 1" in err and "binary mask" in err
    report = json.loads((tmp_path / "r.json").read_text())
    assert any("binary mask" in w for w in report["warnings"])
    # per-artery labels: no such warning
    capsys.readouterr()
    assert main(["score", str(study_dir), "--labels", str(study_dir / "labels.nrrd"), "--quiet",
                 "--json", str(tmp_path / "r2.json")]) == 0
    assert "binary mask" not in capsys.readouterr().err


def test_batch_labels_dir_binary_mask_warned_in_report(study_dir, tmp_path):
    from CoronaryCalciumDINOLib.io import read_volume_file

    ct = read_volume_file(study_dir / "ct.nrrd")
    mask = np.zeros(ct.shape, np.uint8)
    mask[2, 8:14, 8:14] = 1
    labels_dir = tmp_path / "masks"
    write_volume(mask, ct, labels_dir / "synth-000125.nrrd")
    assert main(["batch", str(study_dir.parent), "--out", str(tmp_path / "out"), "--labels-dir", str(labels_dir),
                 "--quiet"]) == 0
    report = json.loads((tmp_path / "out" / "synth-000125.json").read_text())
    assert any("binary mask" in w for w in report["warnings"])


# 6. the model caveat only where a model ran ---------------------------------------------------------

def test_labels_mode_disclaimer_does_not_speak_of_a_model(study_dir, tmp_path, capsys):
    capsys.readouterr()
    assert main(["score", str(study_dir), "--labels", str(study_dir / "labels.nrrd"),
                 "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "Research use only" in out and "model" not in out.lower()
    assert "model" not in json.loads((tmp_path / "r.json").read_text())["disclaimer"].lower()


def test_ai_report_disclaimer_speaks_of_the_model():
    from CoronaryCalciumDINOLib.report import build_report
    from CoronaryCalciumDINOLib.scoring import score

    MODEL_CAVEAT = "The default model is trained on synthetic studies"
    ct = _ct()
    result = score(ct.hu, np.zeros(ct.shape, np.uint8), ct.spacing)
    assert MODEL_CAVEAT in build_report(result, "x", model={"name": "m"})["disclaimer"]
    assert MODEL_CAVEAT not in build_report(result, "x")["disclaimer"]


# 7. figures for people are rounded ---------------------------------------------------------------------

def test_evaluate_summary_is_rounded():
    from CoronaryCalciumDINOLib.cli.evaluate import summary_line

    metrics = {"n_studies": 20,
               "slices": {"at_threshold": {"sensitivity": 0.9642857142857143, "specificity": float("nan")},
                          "auroc": 0.8507887817703769},
               "pipeline": {"risk": {"accuracy": 0.85}}, "unet_all_slices": {"risk": {"accuracy": 2 / 3}}}
    line = summary_line(metrics)
    assert "sensitivity 0.964" in line and "AUROC 0.851" in line and "specificity -" in line
    assert not re.search(r"\d\.\d{4,}", line), line


# 8. report pictures: every lesion visible, titled by study, nothing below the minimum -------------

def _colour_count(png, colour, tol=0.02) -> int:
    import matplotlib.image as mpimg

    rgb = mpimg.imread(str(png))[..., :3]
    return int(np.all(np.abs(rgb - np.asarray(colour)) < tol, axis=-1).sum())


def _big_ct():
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 10, size=(12, 384, 384)).astype(np.float32)
    return CTVolume(hu=hu, spacing=(3.0, 0.5, 0.5))


def test_picture_shows_every_small_lesion_zoomed_and_marked(tmp_path):
    from CoronaryCalciumDINOLib.report import build_report
    from CoronaryCalciumDINOLib.report.picture import write_report_png
    from CoronaryCalciumDINOLib.scoring import score

    ct = _big_ct()
    empty = np.zeros(ct.shape, np.uint8)
    base = write_report_png(ct, empty, build_report(score(ct.hu, empty, ct.spacing), "s"), tmp_path / "empty.png")
    labels = np.zeros(ct.shape, np.uint8)
    # one 1-4 mm^2 lesion (4-16 pixels of a 384-pixel slice) per artery, on different slices
    for artery, (k, r, c, h, w) in enumerate([(2, 100, 100, 2, 2), (4, 200, 150, 2, 4),
                                               (7, 250, 300, 4, 4), (9, 120, 260, 3, 3)], start=1):
        _lesion(ct, labels, k, r, c, h, w, artery)
    result = score(ct.hu, labels, ct.spacing, keep_lesion_voxels=True)
    assert result.total.lesions == 4
    png = write_report_png(ct, labels, build_report(result, "s"), tmp_path / "small.png", result=result)
    for name in ARTERY_COLORS:
        added = _colour_count(png, ARTERY_COLORS[name]) - _colour_count(base, ARTERY_COLORS[name])
        # the lesion itself is 4-16 pixels; its circle and zoomed outline make it far larger
        assert added > 150, (name, added)


def test_picture_title_names_the_study():
    from CoronaryCalciumDINOLib.report.picture import study_title

    assert study_title({"study": "patient-7"}) == "patient-7"
    assert study_title({"input": "/data/study-123/ct.nrrd"}) == "study-123"
    assert study_title({"input": "/data/p01.nii.gz"}) == "p01"


def test_picture_of_zero_score_study_shows_no_sub_minimum_label(tmp_path):
    from CoronaryCalciumDINOLib.report import build_report
    from CoronaryCalciumDINOLib.report.picture import key_slices, scored_lesions, write_report_png
    from CoronaryCalciumDINOLib.scoring import score

    ct = _big_ct()
    labels = np.zeros(ct.shape, np.uint8)
    _lesion(ct, labels, 5, 100, 100, 1, 2, 2)  # 0.5 mm^2: below the 1 mm^2 minimum
    report = build_report(score(ct.hu, labels, ct.spacing), "s")
    assert report["total"]["agatston"] == 0
    assert scored_lesions(ct, labels, report) == []
    empty = np.zeros(ct.shape, np.uint8)
    png = write_report_png(ct, labels, report, tmp_path / "zero.png")
    base = write_report_png(ct, empty, build_report(score(ct.hu, empty, ct.spacing), "s"), tmp_path / "e.png")
    # the same slices and no artery colour beyond the legend: the sub-minimum label is not drawn
    assert key_slices(empty) == key_slices(empty)
    assert _colour_count(png, ARTERY_COLORS["LAD"]) == _colour_count(base, ARTERY_COLORS["LAD"])


# 9. README and docs agree with the program ------------------------------------------------------------

def test_readme_synopsis_is_the_parser_s():
    from CoronaryCalciumDINOLib.cli._synopsis import readme_block, synopsis

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_block(text) == synopsis(), "run: python -m CoronaryCalciumDINOLib.cli._synopsis --write README.md"
    for option in ("--labels-dir", "--overwrite", "--quiet"):
        assert option in synopsis()
    assert "ccdino evaluate [--bundle PATH]" in synopsis()  # optional, as in the parser


def test_readme_json_section_names_every_report_key(study_dir):
    from CoronaryCalciumDINOLib.report import build_report
    from CoronaryCalciumDINOLib.scoring import score

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Report format (JSON)", 1)[1].split("## How the numbers", 1)[0]
    ct = _ct()
    report = build_report(score(ct.hu, np.zeros(ct.shape, np.uint8), ct.spacing), "x", study="s", labels="l")
    for key in report:
        assert f'"{key}"' in section, key


def test_docs_name_only_files_the_program_writes_and_slicer_needs_pytorch_first():
    docs = (ROOT / "docs" / "slicer.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "scores.csv" not in docs and "scores.csv" not in readme
    slicer = readme.split("## 3D Slicer", 1)[1].split("## Batch scoring", 1)[0]
    assert "PyTorch** extension first" in slicer


def test_quickstart_passes_overwrite_so_it_can_run_twice():
    text = (ROOT / "scripts" / "quickstart.sh").read_text(encoding="utf-8")
    assert re.search(r"ccdino score .*--overwrite", text)
