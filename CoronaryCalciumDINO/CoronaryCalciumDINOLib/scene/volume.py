"""CT volumes <-> MRML scalar volume nodes, and label arrays <-> oriented image data.

Geometry: :class:`~CoronaryCalciumDINOLib.io.CTVolume` is in LPS with arrays (z, y, x);
MRML is in RAS with image data (x fastest). The two frames differ by a sign flip of the
first two axes: ``IJKToRAS = diag(-1, -1, 1, 1) @ IJKToLPS``. The array memory layout is the
same in both (C order (z, y, x) is VTK's x-fastest order), so voxel [k, j, i] of the array is
VTK point (i, j, k).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..io.volume import CTVolume, check_volume_values
from ..limits import KVP_RANGE

#: LPS <-> RAS (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


#: Volume node attribute holding the CT's tube voltage (kVp).
KVP_ATTRIBUTE = "CoronaryCalciumDINO.kVp"


def _vtk():
    import vtk
    from vtk.util import numpy_support

    return vtk, numpy_support


def nodes_by_class(scene, class_name: str) -> list:
    """The nodes of ``scene`` of class ``class_name`` (subclasses included), as a list.

    ``vtkMRMLScene.GetNodesByClass`` returns a new collection that the caller owns; the
    Python wrapper adds its own reference, so the collection (and with it a reference to
    every node it holds) would outlive the call unless released here, as ``slicer.util``
    does.
    """
    collection = scene.GetNodesByClass(class_name)
    collection.UnRegister(None)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def matrix_to_numpy(matrix) -> np.ndarray:
    """4x4 numpy copy of a vtkMatrix4x4."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def numpy_to_matrix(array: np.ndarray):
    """vtkMatrix4x4 from a 4x4 array."""
    vtk, _ = _vtk()
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


def ijk_to_ras(ct: CTVolume) -> np.ndarray:
    """4x4 IJK -> RAS matrix of a CT volume."""
    return LPS_TO_RAS @ ct.ijk_to_lps()


def _image_from_array(array: np.ndarray, vtk_type: int | None = None):
    vtk, ns = _vtk()
    array = np.ascontiguousarray(array)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = ns.numpy_to_vtk(array.ravel(), deep=True, array_type=vtk_type)
    image.GetPointData().SetScalars(scalars)
    return image


def _hu_storage(hu: np.ndarray) -> np.ndarray:
    """int16 when every HU value is an integer in range (DICOM CT), else float32."""
    if hu.size and np.all(np.mod(hu, 1) == 0) and hu.min() >= -32768 and hu.max() <= 32767:
        return hu.astype(np.int16)
    return hu.astype(np.float32)


def ct_to_volume_node(scene, ct: CTVolume, name: str = "CT", node=None):
    """Add (or refill ``node``) a vtkMRMLScalarVolumeNode holding ``ct`` with its geometry.

    Attributes ``CoronaryCalciumDINO.kVp`` and ``CoronaryCalciumDINO.Source`` keep the tube
    voltage and the source path so :func:`volume_node_to_ct` can give them back.
    """
    import slicer

    if node is None:
        node = slicer.vtkMRMLScalarVolumeNode()
        node.SetName(name)
        scene.AddNode(node)
    node.SetAndObserveImageData(_image_from_array(_hu_storage(np.asarray(ct.hu))))
    node.SetIJKToRASMatrix(numpy_to_matrix(ijk_to_ras(ct)))
    if ct.kvp is not None:
        node.SetAttribute(KVP_ATTRIBUTE, repr(float(ct.kvp)))
    if ct.source:
        node.SetAttribute("CoronaryCalciumDINO.Source", str(ct.source))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        display.AutoWindowLevelOff()
        display.SetWindowLevel(1500.0, 300.0)
    return node


def volume_kvp(node) -> float | None:
    """The tube voltage kept on a volume node (:func:`ct_to_volume_node`); None if unknown."""
    text = node.GetAttribute(KVP_ATTRIBUTE) if node is not None else None
    try:
        kvp = float(text) if text else None
    except ValueError:
        return None
    if kvp is not None and not (np.isfinite(kvp) and KVP_RANGE[0] <= kvp <= KVP_RANGE[1]):
        return None  # a damaged attribute: the tube voltage is unknown
    return kvp


def node_ijk_to_ras(node) -> np.ndarray:
    """4x4 IJK -> RAS matrix of a volume node (or anything with GetIJKToRASMatrix)."""
    vtk, _ = _vtk()
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return matrix_to_numpy(m)


def volume_node_to_ct(node, kvp: float | None = None, copy: bool = True) -> CTVolume:
    """Read a scalar volume node back into a CTVolume (values taken as HU).

    ``copy=True`` gives the HU as a float32 copy (what the pipeline needs). ``copy=False``
    gives a read-only view of the node's own voxels in their stored type (e.g. int16): no
    copy of the CT, for rescoring, which only reads the voxels under the segments.

    Raises InputError for an empty, 2D, multi-component or transformed-by-parent volume.
    """
    _, ns = _vtk()
    if node is None or node.GetImageData() is None or node.GetImageData().GetPointData().GetScalars() is None:
        raise InputError("the selected volume has no image data")
    image = node.GetImageData()
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"volume '{node.GetName()}' is not a scalar volume")
    if node.GetParentTransformNode() is not None:
        raise InputError(
            f"volume '{node.GetName()}' is under a transform; harden or remove the transform first"
        )
    nx, ny, nz = image.GetDimensions()
    if nz < 2:
        raise InputError(f"volume '{node.GetName()}' holds a single slice; a calcium score needs a volume")
    hu = ns.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(nz, ny, nx)
    if copy:
        hu = hu.astype(np.float32)
    else:
        hu = hu.view()
        hu.flags.writeable = False
    lps = LPS_TO_RAS @ node_ijk_to_ras(node)
    axes = lps[:3, :3]
    sizes = np.linalg.norm(axes, axis=0)
    if np.any(sizes <= 0):
        raise InputError(f"volume '{node.GetName()}' has a zero voxel spacing")
    direction = axes / sizes
    if kvp is None:
        kvp = volume_kvp(node)
    ct = CTVolume(
        hu=hu,
        spacing=(float(sizes[2]), float(sizes[1]), float(sizes[0])),
        origin=tuple(float(v) for v in lps[:3, 3]),  # type: ignore[arg-type]
        direction=direction,
        kvp=kvp,
        source=node.GetAttribute("CoronaryCalciumDINO.Source") or node.GetName(),
        meta={"volume_node_id": node.GetID(), "name": node.GetName()},
    )
    check_volume_values(ct, f"volume '{node.GetName()}'")  # finite, plausible spacing, origin and HU
    return ct


def oriented_image_from_array(array: np.ndarray, ijk_to_ras_matrix: np.ndarray):
    """vtkOrientedImageData (uint8) holding ``array`` (z, y, x) on the given grid."""
    import slicer

    vtk, ns = _vtk()
    array = np.ascontiguousarray(array, dtype=np.uint8)
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    ns.vtk_to_numpy(image.GetPointData().GetScalars())[:] = array.ravel()
    image.SetImageToWorldMatrix(numpy_to_matrix(ijk_to_ras_matrix))
    return image


def reference_oriented_image(volume_node):
    """An empty vtkOrientedImageData with the geometry (extent, IJK->RAS) of a volume node."""
    import slicer

    image = slicer.vtkOrientedImageData()
    image.SetExtent(volume_node.GetImageData().GetExtent())
    image.SetImageToWorldMatrix(numpy_to_matrix(node_ijk_to_ras(volume_node)))
    return image


def array_from_oriented_image(image, reference) -> np.ndarray:
    """Resample ``image`` (nearest neighbour) onto ``reference``'s grid; (z, y, x) array."""
    import slicer

    _, ns = _vtk()
    out = slicer.vtkOrientedImageData()
    ext = reference.GetExtent()
    shape = (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
    if image is None or image.GetPointData().GetScalars() is None or image.IsEmpty():
        return np.zeros(shape, dtype=np.uint8)
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        image, reference, out, False, True
    ):
        raise InputError("cannot resample a segment onto the CT grid")
    # The output may cover another extent than the reference (e.g. when the input already
    # has the reference geometry): copy the overlap into a reference-sized array.
    result = np.zeros(shape, dtype=np.uint8 if out.GetScalarType() == 3 else np.int32)
    oext = out.GetExtent()
    if out.GetPointData().GetScalars() is None or oext[1] < oext[0] or oext[3] < oext[2] or oext[5] < oext[4]:
        return result
    data = ns.vtk_to_numpy(out.GetPointData().GetScalars())
    data = data.reshape(oext[5] - oext[4] + 1, oext[3] - oext[2] + 1, oext[1] - oext[0] + 1)
    lo = [max(oext[2 * a], ext[2 * a]) for a in range(3)]
    hi = [min(oext[2 * a + 1], ext[2 * a + 1]) for a in range(3)]
    if any(h < low for low, h in zip(lo, hi)):
        return result
    src = tuple(slice(lo[a] - oext[2 * a], hi[a] - oext[2 * a] + 1) for a in (2, 1, 0))
    dst = tuple(slice(lo[a] - ext[2 * a], hi[a] - ext[2 * a] + 1) for a in (2, 1, 0))
    result[dst] = data[src]
    return result


def image_array_view(image) -> np.ndarray:
    """The scalars of a single-component vtkImageData as a (z, y, x) view over its extent
    (no copy); an empty (0, 0, 0) array when it holds no voxel."""
    _, ns = _vtk()
    ext = image.GetExtent()
    shape = (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
    scalars = image.GetPointData().GetScalars()
    if min(shape) <= 0 or scalars is None or scalars.GetNumberOfTuples() != shape[0] * shape[1] * shape[2]:
        return np.zeros((0, 0, 0), dtype=np.uint8)
    return ns.vtk_to_numpy(scalars).reshape(shape)


def shares_voxel_grid(image, volume_node, tol: float = 1e-6) -> bool:
    """Whether an oriented image's voxel (i, j, k) is the volume's voxel (i, j, k): same
    IJK->RAS matrix (the extents may differ). A segment stored this way (the usual case: the
    result segmentation takes the CT's geometry) can be read without resampling."""
    vtk, _ = _vtk()
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    ours = matrix_to_numpy(m)
    theirs = node_ijk_to_ras(volume_node)
    return bool(np.allclose(ours, theirs, rtol=0.0, atol=tol * max(1.0, float(np.abs(theirs).max()))))
