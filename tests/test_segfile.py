"""Slicer segmentation files: written by the project, read back by pynrrd and by Slicer's
own segmentation storage node (slicer-core)."""

from __future__ import annotations

import numpy as np
import pytest

from CoronaryCalciumDINOLib.constants import ARTERIES, ARTERY_COLORS
from CoronaryCalciumDINOLib.errors import InputError
from CoronaryCalciumDINOLib.io.segfile import (
    ARTERY_REGION_CODES,
    read_seg_nrrd,
    terminology_entry,
    write_seg_nrrd,
)
from CoronaryCalciumDINOLib.io.volume import CTVolume


def _oblique_ct() -> CTVolume:
    a = np.radians(25.0)
    b = np.radians(10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return CTVolume(
        hu=np.zeros((5, 7, 9), np.float32), spacing=(3.0, 0.7, 0.5), origin=(-20.0, 15.5, 40.0), direction=rz @ rx
    )


def _labels(shape) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[1, 2, 3] = 1  # LM: one voxel
    lab[3, 4:6, 6:9] = 2  # LAD: a block
    lab[0, 6, 0] = 4  # RCA: a corner voxel; LCX stays empty
    return lab


def _lps_of(ct: CTVolume, zyx: np.ndarray) -> np.ndarray:
    """LPS position of (z, y, x) voxel indices, from the CT's own geometry."""
    ijk1 = np.c_[zyx[:, 2], zyx[:, 1], zyx[:, 0], np.ones(len(zyx))]
    return (ct.ijk_to_lps() @ ijk1.T).T[:, :3]


def test_pynrrd_reads_geometry_and_slicer_fields(tmp_path):
    import nrrd

    ct = _oblique_ct()
    lab = _labels(ct.shape)
    path = write_seg_nrrd(lab, ct, tmp_path / "s.seg.nrrd")
    data, header = nrrd.read(str(path))  # default Fortran order: data[i, j, k]
    assert data.dtype == np.uint8 and data.shape == (9, 7, 5)
    np.testing.assert_array_equal(data, lab.transpose(2, 1, 0))
    assert header["space"] == "left-posterior-superior"
    dz, dy, dx = ct.spacing
    np.testing.assert_allclose(header["space directions"][0], ct.direction[:, 0] * dx)
    np.testing.assert_allclose(header["space directions"][1], ct.direction[:, 1] * dy)
    np.testing.assert_allclose(header["space directions"][2], ct.direction[:, 2] * dz)
    np.testing.assert_allclose(header["space origin"], ct.origin)
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert header["Segmentation_ReferenceImageExtentOffset"] == "0 0 0"
    for n, name in enumerate(ARTERIES):
        assert header[f"Segment{n}_Name"] == name
        assert header[f"Segment{n}_LabelValue"] == str(n + 1)
        assert header[f"Segment{n}_Layer"] == "0"
        assert ARTERY_REGION_CODES[name][1] in header[f"Segment{n}_Tags"]
    # extents are (imin imax jmin jmax kmin kmax) of each label; empty: an invalid extent
    assert header["Segment0_Extent"] == "3 3 2 2 1 1"
    assert header["Segment1_Extent"] == "6 8 4 5 3 3"
    assert header["Segment2_Extent"] == "0 -1 0 -1 0 -1"
    assert header["Segment3_Extent"] == "0 0 6 6 0 0"
    assert not [p for p in tmp_path.iterdir() if p.name != "s.seg.nrrd"]  # no temporary left


def test_read_seg_nrrd_round_trip(tmp_path):
    ct = _oblique_ct()
    lab = _labels(ct.shape)
    labels, names, geom = read_seg_nrrd(write_seg_nrrd(lab, ct, tmp_path / "s.seg.nrrd"))
    np.testing.assert_array_equal(labels, lab)
    assert names == list(ARTERIES)
    assert geom["spacing"] == pytest.approx(ct.spacing)
    assert geom["origin"] == pytest.approx(ct.origin)
    np.testing.assert_allclose(geom["direction"], ct.direction, atol=1e-9)


def test_writer_refuses_bad_labels(tmp_path):
    ct = _oblique_ct()
    with pytest.raises(InputError, match="does not match"):
        write_seg_nrrd(np.zeros((2, 2, 2), np.uint8), ct, tmp_path / "x.seg.nrrd")
    bad = _labels(ct.shape)
    bad[0, 0, 0] = 7
    with pytest.raises(InputError, match="0..4"):
        write_seg_nrrd(bad, ct, tmp_path / "x.seg.nrrd")


def test_slicer_opens_four_segments_with_geometry(tmp_path):
    slicer = pytest.importorskip("slicer")
    import vtk
    from vtk.util import numpy_support

    ct = _oblique_ct()
    lab = _labels(ct.shape)
    path = write_seg_nrrd(lab, ct, tmp_path / "s.seg.nrrd")

    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    seg = node.GetSegmentation()
    assert seg.GetNumberOfSegments() == 4
    source = getattr(seg, "GetSourceRepresentationName", None) or seg.GetMasterRepresentationName
    assert source() == "Binary labelmap"
    for n, name in enumerate(ARTERIES):
        segment = seg.GetNthSegment(n)
        assert segment.GetName() == name
        assert seg.GetNthSegmentID(n) == name
        assert segment.GetLabelValue() == n + 1
        assert segment.GetColor() == pytest.approx(ARTERY_COLORS[name], abs=1e-3)
        tag = vtk.reference("")
        assert segment.GetTag("TerminologyEntry", tag)
        assert str(tag) == terminology_entry(name)

        image = segment.GetRepresentation("Binary labelmap")
        ext = image.GetExtent()
        dims = (ext[1] - ext[0] + 1, ext[3] - ext[2] + 1, ext[5] - ext[4] + 1)
        values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
        kk, jj, ii = np.nonzero(values == n + 1)
        ijk = np.c_[ii + ext[0], jj + ext[2], kk + ext[4], np.ones(len(ii))]
        m = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(m)
        ras = (np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)]) @ ijk.T).T[:, :3]
        lps = ras * np.array([-1.0, -1.0, 1.0])
        expected = _lps_of(ct, np.argwhere(lab == n + 1))
        assert len(lps) == len(expected)
        order = lambda a: a[np.lexsort(np.round(a, 3).T)]  # noqa: E731
        np.testing.assert_allclose(order(lps), order(expected), atol=1e-6)


def test_cropped_slicer_style_file_is_placed_on_the_ct_grid(tmp_path):
    """Slicer saves segmentations cropped to their extent: the labels go back in place."""
    from CoronaryCalciumDINOLib.io.segfile import read_seg_labels

    ct = _oblique_ct()
    lab = _labels(ct.shape)
    # the file's grid: CT voxels k 1..3, j 2..5, i 3..8 (holding LM and LAD), names reordered
    sub = ct.ijk_to_lps() @ np.array([3, 2, 1, 1.0])
    crop = CTVolume(hu=np.zeros((3, 4, 6), np.float32), spacing=ct.spacing, origin=tuple(sub[:3]),
                    direction=ct.direction)
    part = lab[1:4, 2:6, 3:9]
    swapped = np.where(part == 1, 2, np.where(part == 2, 1, 0)).astype(np.uint8)
    write_seg_nrrd(swapped, crop, tmp_path / "crop.seg.nrrd", segment_names=("LAD", "LM"))
    placed = read_seg_labels(tmp_path / "crop.seg.nrrd", ct)
    expected = np.where(np.isin(lab, (1, 2)), lab, 0)
    np.testing.assert_array_equal(placed, expected)
    bad = CTVolume(hu=crop.hu, spacing=ct.spacing, origin=tuple(sub[:3] + 0.2), direction=ct.direction)
    write_seg_nrrd(swapped, bad, tmp_path / "bad.seg.nrrd", segment_names=("LAD", "LM"))
    with pytest.raises(InputError, match="off the CT"):
        read_seg_labels(tmp_path / "bad.seg.nrrd", ct)
    write_seg_nrrd(swapped, crop, tmp_path / "names.seg.nrrd", segment_names=("Aorta", "LM"))
    with pytest.raises(InputError, match="Aorta"):
        read_seg_labels(tmp_path / "names.seg.nrrd", ct)
