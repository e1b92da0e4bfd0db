"""Geometry end to end for CTs not stored in the plain axial identity orientation.

Every check compares voxels through their physical (LPS) positions, computed independently
from ``CTVolume.ijk_to_lps`` of each volume: two volumes of the same physical image must
hold the same value at the same point, whatever their storage order.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from CoronaryCalciumDINOLib.io.dicom import read_dicom_series
from CoronaryCalciumDINOLib.io.segfile import read_seg_labels, read_seg_nrrd, write_seg_nrrd
from CoronaryCalciumDINOLib.io.volume import CTVolume, read_label_file, read_volume_file, write_volume

PHANTOM = Path(__file__).resolve().parents[1] / "Testing" / "Data" / "qrm-phantom-canon"
N_SLICES = 8  # a contiguous part of the phantom keeps the tests fast


# ----------------------------------------------------------------------------- helpers


def _physical_map(a: CTVolume, b: CTVolume) -> tuple[np.ndarray, ...]:
    """For every voxel of ``a``: the (k, j, i) index of ``b``'s voxel at the same LPS point.

    Asserts that every such point falls exactly on a voxel centre of ``b`` inside it.
    """
    nz, ny, nx = a.shape
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    ijk1 = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    lps = a.ijk_to_lps() @ ijk1
    ijk_b = np.linalg.solve(b.ijk_to_lps(), lps)[:3]
    idx = np.rint(ijk_b)
    assert np.allclose(ijk_b, idx, atol=1e-3), "voxel centres do not coincide"
    ib, jb, kb = (idx[n].astype(int).reshape(a.shape) for n in range(3))
    assert ib.min() >= 0 and jb.min() >= 0 and kb.min() >= 0
    assert kb.max() < b.shape[0] and jb.max() < b.shape[1] and ib.max() < b.shape[2]
    return kb, jb, ib


def _assert_same_physical(a: CTVolume, b: CTVolume, arr_a=None, arr_b=None) -> None:
    """Both volumes cover the same voxels and hold the same value at every physical point."""
    assert a.shape == b.shape
    kb, jb, ib = _physical_map(a, b)
    arr_a = a.hu if arr_a is None else arr_a
    arr_b = b.hu if arr_b is None else arr_b
    np.testing.assert_array_equal(np.asarray(arr_b)[kb, jb, ib], np.asarray(arr_a))


def _phantom_files() -> list[tuple[Path, object]]:
    """(path, data set) of N_SLICES consecutive phantom slices, sorted by z."""
    import pydicom

    items = []
    for f in sorted(PHANTOM.iterdir()):
        if f.name in ("README.md", "LICENSE"):
            continue
        items.append((f, pydicom.dcmread(f, stop_before_pixels=True)))
    items.sort(key=lambda t: float(t[1].ImagePositionPatient[2]))
    mid = len(items) // 2
    return items[mid - N_SLICES // 2 : mid + N_SLICES - N_SLICES // 2]


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("orig")
    for f, _ in _phantom_files():
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def phantom(phantom_dir) -> CTVolume:
    ct = read_dicom_series(phantom_dir)
    assert np.allclose(ct.direction, np.eye(3))  # the source is plain axial
    return ct


def _write_variant(out: Path, row_dir, col_dir, flip_rows: bool, flip_cols: bool, reverse_names: bool) -> Path:
    """Phantom slices rewritten with another in-plane storage order and orientation.

    Pixels are flipped in memory and ImageOrientationPatient / ImagePositionPatient are set
    to describe the same physical image; file names can be given in reversed slice order.
    """
    import pydicom

    out.mkdir()
    items = _phantom_files()
    n = len(items)
    for rank, (f, _) in enumerate(items):
        ds = pydicom.dcmread(f)
        arr = ds.pixel_array
        rows, cols = arr.shape
        dy, dx = (float(v) for v in ds.PixelSpacing)
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        # Position of the pixel that becomes the new first one (original IOP is identity).
        if flip_cols:
            arr = arr[:, ::-1]
            ipp = ipp + np.array([(cols - 1) * dx, 0.0, 0.0])
        if flip_rows:
            arr = arr[::-1, :]
            ipp = ipp + np.array([0.0, (rows - 1) * dy, 0.0])
        ds.PixelData = np.ascontiguousarray(arr).tobytes()
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [float(v) for v in ipp]
        ds.InstanceNumber = n - rank  # feet-first numbering: 1 is the most superior slice
        name = f"s{(n - 1 - rank) if reverse_names else rank:03d}"
        ds.save_as(out / name)
    return out


# ----------------------------------------------------------------------------- (1) DICOM


def test_dicom_reversed_file_order_same_physical_image(phantom, tmp_path):
    d = _write_variant(tmp_path / "rev", (1, 0, 0), (0, 1, 0), False, False, reverse_names=True)
    ct = read_dicom_series(d)
    np.testing.assert_allclose(ct.ijk_to_lps(), phantom.ijk_to_lps(), atol=1e-4)
    np.testing.assert_array_equal(ct.hu, phantom.hu)


def test_dicom_feet_first_stack_same_physical_image(phantom, tmp_path):
    # Rows run posterior -> anterior: slice normal row x col = x * (-y) = -z, so the sort
    # along the normal stacks the slices superior -> inferior.
    d = _write_variant(tmp_path / "ff", (1, 0, 0), (0, -1, 0), True, False, reverse_names=False)
    ct = read_dicom_series(d)
    np.testing.assert_allclose(ct.direction, np.diag([1.0, -1.0, -1.0]), atol=1e-6)
    top = max(p[2] for p in (phantom.ijk_to_lps() @ np.array([0, 0, k, 1]) for k in range(N_SLICES)))
    assert ct.origin[2] == pytest.approx(top)  # first slice is the most superior one
    _assert_same_physical(phantom, ct)


def test_dicom_rows_and_columns_flipped_same_physical_image(phantom, tmp_path):
    d = _write_variant(tmp_path / "flip", (-1, 0, 0), (0, -1, 0), True, True, reverse_names=True)
    ct = read_dicom_series(d)
    np.testing.assert_allclose(ct.direction, np.diag([-1.0, -1.0, 1.0]), atol=1e-6)
    _assert_same_physical(phantom, ct)
    # Independent expectation: the stored array is the original flipped in-plane.
    np.testing.assert_array_equal(ct.hu, phantom.hu[:, ::-1, ::-1])


# ----------------------------------------------------------------------------- (2) files, scene


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx


DIRECTIONS = {
    "flipped_xy": np.diag([-1.0, -1.0, 1.0]),
    "feet_first": np.diag([1.0, -1.0, -1.0]),
    "mirror_x": np.diag([-1.0, 1.0, 1.0]),  # left-handed index frame
    "rotated": _rotation([0.3, -0.5, 1.0], 33.0) @ np.diag([1.0, -1.0, 1.0]),
    "permuted": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
}


def _toy_ct(direction: np.ndarray) -> tuple[CTVolume, np.ndarray]:
    rng = np.random.default_rng(1)
    hu = rng.integers(-1000, 1500, size=(5, 7, 9)).astype(np.float32)
    labels = rng.integers(0, 5, size=hu.shape).astype(np.uint8)
    ct = CTVolume(hu=hu, spacing=(2.5, 0.7, 0.6), origin=(-12.5, 30.25, 101.0), direction=direction)
    return ct, labels


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_volume_file_round_trip_keeps_physical_voxels(name, suffix, tmp_path):
    ct, labels = _toy_ct(DIRECTIONS[name])
    back = read_volume_file(write_volume(ct.hu, ct, tmp_path / f"ct{suffix}"))
    np.testing.assert_allclose(back.ijk_to_lps(), ct.ijk_to_lps(), atol=1e-4)
    _assert_same_physical(ct, back)
    lab = read_label_file(write_volume(labels, ct, tmp_path / f"lab{suffix}"), ct)
    np.testing.assert_array_equal(lab, labels)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_seg_nrrd_round_trip_keeps_physical_voxels(name, tmp_path):
    ct, labels = _toy_ct(DIRECTIONS[name])
    path = write_seg_nrrd(labels, ct, tmp_path / "calc.seg.nrrd")
    out, names, geom = read_seg_nrrd(path)
    seg = CTVolume(hu=out, spacing=geom["spacing"], origin=geom["origin"], direction=geom["direction"])
    np.testing.assert_allclose(seg.ijk_to_lps(), ct.ijk_to_lps(), atol=1e-4)
    _assert_same_physical(ct, seg, labels, out)
    np.testing.assert_array_equal(read_seg_labels(path, ct), labels)
    # The NRRD header itself, decoded by hand: origin + sum(index * space direction).
    import nrrd

    _, header = nrrd.read(str(path), index_order="C")
    assert header["space"] == "left-posterior-superior"
    i, j, k = 8, 3, 4
    point = np.asarray(header["space origin"]) + np.array([i, j, k]) @ np.asarray(header["space directions"])
    np.testing.assert_allclose(point, (ct.ijk_to_lps() @ [i, j, k, 1])[:3], atol=1e-6)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_scene_volume_node_keeps_physical_voxels(name):
    slicer = pytest.importorskip("slicer")
    from CoronaryCalciumDINOLib.scene.volume import ct_to_volume_node, volume_node_to_ct

    ct, _ = _toy_ct(DIRECTIONS[name])
    scene = slicer.vtkMRMLScene()
    node = ct_to_volume_node(scene, ct, "oriented")
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    # RAS = LPS with x and y negated (hand derivation, independent of the glue).
    np.testing.assert_allclose(np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras, ct.ijk_to_lps(), atol=1e-6)
    back = volume_node_to_ct(node)
    np.testing.assert_allclose(back.ijk_to_lps(), ct.ijk_to_lps(), atol=1e-6)
    _assert_same_physical(ct, back)


# ----------------------------------------------------------------------------- (3) pipeline


def _body_ct(n: int = 64, nz: int = 6) -> CTVolume:
    """A toy chest: elliptic body with an off-centre soft-tissue blob and dense spots."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:n, :n]
    hu = np.full((nz, n, n), -1000.0, np.float32)
    hu[:, ((yy - n / 2) / (0.4 * n)) ** 2 + ((xx - n / 2) / (0.47 * n)) ** 2 < 1] = -80.0
    hu[:, (yy - 0.4 * n) ** 2 + (xx - 0.6 * n) ** 2 < (0.2 * n) ** 2] = 45.0
    hu += rng.normal(0, 8, hu.shape).astype(np.float32)
    for z in range(nz):
        hu[z, 20 + z : 23 + z, 30 + 2 * z : 34 + 2 * z] = 200.0 + 80.0 * z
    return CTVolume(hu=hu, spacing=(3.0, 1.5, 1.5), origin=(-40.0, -60.0, 100.0))


def _flipped(ct: CTVolume, axes: tuple[int, ...]) -> CTVolume:
    """The same physical image stored with array ``axes`` (0=z, 1=y, 2=x) reversed."""
    m = ct.ijk_to_lps()
    nz, ny, nx = ct.shape
    last = {0: (2, nz), 1: (1, ny), 2: (0, nx)}  # array axis -> (ijk column, size)
    direction = np.asarray(ct.direction, float).copy()
    origin = np.asarray(ct.origin, float).copy()
    for a in axes:
        col, size = last[a]
        origin = origin + m[:3, col] * (size - 1)
        direction[:, col] = -direction[:, col]
    return CTVolume(hu=np.ascontiguousarray(np.flip(ct.hu, axes)), spacing=ct.spacing, origin=tuple(origin),
                    direction=direction)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    pytest.importorskip("torch")
    from CoronaryCalciumDINOLib.models.bundle import save_random_bundle
    from CoronaryCalciumDINOLib.pipeline import load_bundle

    path = save_random_bundle(tmp_path_factory.mktemp("geo") / "b", threshold=0.01)
    return load_bundle(path)


@pytest.mark.parametrize("axes", [(2,), (1, 2), (0,), (0, 1, 2)])
def test_pipeline_same_physical_labels_for_flipped_storage(tiny_bundle, axes):
    import torch

    from CoronaryCalciumDINOLib.pipeline import run_pipeline

    torch.set_num_threads(1)
    ct = _body_ct()
    other = _flipped(ct, axes)
    _assert_same_physical(ct, other)  # the helper really keeps the physical image
    a = run_pipeline(ct, tiny_bundle, device="cpu", all_slices=True, attention=True)
    b = run_pipeline(other, tiny_bundle, device="cpu", all_slices=True, attention=True)
    assert (a.labels > 0).any()  # the comparison is not between two empty label maps
    _assert_same_physical(ct, other, a.labels, b.labels)
    for h in range(a.attention.shape[0]):
        _assert_same_physical(ct, other, a.attention[h], b.attention[h])
    zb = _physical_map(ct, other)[0][:, 0, 0]  # slice of `other` holding each slice of `ct`
    np.testing.assert_array_equal(b.slice_probabilities[zb], a.slice_probabilities)
    assert b.score.total.agatston == pytest.approx(a.score.total.agatston)


def test_pipeline_warns_for_permuted_axes(tiny_bundle):
    from CoronaryCalciumDINOLib.pipeline import run_pipeline

    ct = _body_ct()
    ct.direction = DIRECTIONS["permuted"]
    with pytest.warns(UserWarning, match="not close to axial LPS"):
        res = run_pipeline(ct, tiny_bundle, device="cpu")
    assert len(res.warnings) == 1 and "not close to axial LPS" in res.warnings[0]
    assert "\n" not in res.warnings[0]
    # a standard axial CT gives no warning
    ct.direction = np.eye(3)
    assert run_pipeline(ct, tiny_bundle, device="cpu").warnings == []


def test_canonical_flips_by_hand():
    from CoronaryCalciumDINOLib.pipeline.preprocess import canonical_flips

    assert canonical_flips(np.eye(3)) == (False, False, False)
    assert canonical_flips(np.diag([-1.0, -1.0, 1.0])) == (False, True, True)
    assert canonical_flips(np.diag([1.0, 1.0, -1.0])) == (True, False, False)
    assert canonical_flips(_rotation([0, 0, 1], 10.0)) == (False, False, False)  # slightly rotated
    assert canonical_flips(_rotation([0, 0, 1], 45.0)) is None  # ambiguous in-plane rotation
    assert canonical_flips(DIRECTIONS["permuted"]) is None
