"""Volume file I/O: geometry and values survive NRRD / NIfTI / MHA round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from CoronaryCalciumDINOLib.errors import InputError
from CoronaryCalciumDINOLib.io import load_ct, read_label_file, read_volume_file, write_volume
from CoronaryCalciumDINOLib.io.volume import CTVolume

PHANTOM = Path(__file__).resolve().parents[1] / "Testing" / "Data" / "qrm-phantom-canon"


def _rotation(ax: float, az: float) -> np.ndarray:
    """A proper rotation (det +1): about x by ``ax`` then about z by ``az`` (radians)."""
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


@pytest.fixture()
def oblique_ct():
    rng = np.random.default_rng(3)
    hu = rng.integers(-1024, 1500, size=(4, 5, 6)).astype(np.float32)
    return CTVolume(hu=hu, spacing=(2.5, 0.7, 0.6), origin=(-12.5, 30.25, 101.0), direction=_rotation(0.3, 0.5))


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_round_trip_keeps_geometry_and_values(tmp_path, oblique_ct, suffix):
    path = write_volume(oblique_ct.hu.astype(np.int16), oblique_ct, tmp_path / f"ct{suffix}")
    back = read_volume_file(path)
    assert back.shape == oblique_ct.shape
    np.testing.assert_array_equal(back.hu, oblique_ct.hu)
    assert back.spacing == pytest.approx(oblique_ct.spacing, abs=1e-5)
    assert back.origin == pytest.approx(oblique_ct.origin, abs=1e-4)
    assert np.allclose(back.direction, oblique_ct.direction, atol=1e-5)
    # the voxel -> LPS mapping is the same, so every voxel lands at the same place
    assert np.allclose(back.ijk_to_lps(), oblique_ct.ijk_to_lps(), atol=1e-4)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left


def test_label_file_grid_mismatch_refused(tmp_path, oblique_ct):
    labels = np.zeros(oblique_ct.shape, np.uint8)
    shifted = CTVolume(hu=oblique_ct.hu, spacing=oblique_ct.spacing, origin=(0.0, 0.0, 0.0),
                       direction=oblique_ct.direction)
    write_volume(labels, shifted, tmp_path / "lab.nrrd")
    with pytest.raises(InputError, match="geometry"):
        read_label_file(tmp_path / "lab.nrrd", oblique_ct)
    small = CTVolume(hu=oblique_ct.hu[:3], spacing=oblique_ct.spacing, origin=oblique_ct.origin,
                     direction=oblique_ct.direction)
    write_volume(labels[:3], small, tmp_path / "small.nrrd")
    with pytest.raises(InputError, match="shape"):
        read_label_file(tmp_path / "small.nrrd", oblique_ct)
    write_volume(labels, oblique_ct, tmp_path / "ok.nrrd")
    assert read_label_file(tmp_path / "ok.nrrd", oblique_ct).shape == oblique_ct.shape


def test_label_file_non_integer_refused(tmp_path, oblique_ct):
    labels = np.zeros(oblique_ct.shape, np.float32)
    labels[1, 2, 3] = 1.5
    write_volume(labels, oblique_ct, tmp_path / "frac.nrrd")
    with pytest.raises(InputError, match="non-integer"):
        read_label_file(tmp_path / "frac.nrrd", oblique_ct)


def test_dicom_phantom_to_nrrd_overlays_exactly(tmp_path):
    ct = load_ct(PHANTOM)
    write_volume(ct.hu.astype(np.int16), ct, tmp_path / "phantom.nrrd")
    back = read_volume_file(tmp_path / "phantom.nrrd")
    assert back.same_grid(ct, tol=1e-6)
    np.testing.assert_array_equal(back.hu, ct.hu)


def test_one_rule_for_volume_file_names():
    from CoronaryCalciumDINOLib.data.studies import study_name, volume_stem
    from CoronaryCalciumDINOLib.filenames import LABEL_SUFFIXES, VOLUME_SUFFIXES, split_volume_suffix

    assert split_volume_suffix("a.seg.nrrd") == ("a", ".seg.nrrd")
    assert split_volume_suffix("Study.NII.GZ") == ("Study", ".NII.GZ")
    assert split_volume_suffix("x.mhd") == ("x", ".mhd") and split_volume_suffix("notes.txt") is None
    assert split_volume_suffix(".nrrd") is None
    assert LABEL_SUFFIXES[0] == ".seg.nrrd" and set(LABEL_SUFFIXES[1:]) == set(VOLUME_SUFFIXES)
    for name, stem in (("p1.nii.gz", "p1"), ("p1.nhdr", "p1"), ("p1.dcm", "p1"), ("cd1/DICOMDIR", "cd1"),
                       ("cd1/dicomdir", "cd1")):  # a media index is named after the media's folder
        assert study_name(name) == stem, name
    # a folder of studies: volumes are studies, segmentations are not
    assert volume_stem("p1.mha") == "p1" and volume_stem("p1.seg.nrrd") is None and volume_stem("p1.csv") is None


def test_atomic_writes_keep_the_old_file_on_failure(tmp_path):
    import pytest

    from CoronaryCalciumDINOLib.io.atomic import atomic_path, write_text_atomic
    from CoronaryCalciumDINOLib.io.jsonfile import read_json, write_json

    target = tmp_path / "sub" / "r.json"
    write_json({"a": np.float32(1.5), "b": np.arange(2)}, target)
    assert read_json(target) == {"a": 1.5, "b": [0, 1]}
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert read_json(target) == {"a": 1.5, "b": [0, 1]}
    with pytest.raises(InputError, match="non-finite"):
        write_json({"x": float("nan")}, target)
    assert read_json(target)["a"] == 1.5
    with atomic_path(tmp_path / "v.nii.gz", keep_suffix=True) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    write_text_atomic(tmp_path / "t.txt", "text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "t.txt", "v.nii.gz"]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["r.json"]
