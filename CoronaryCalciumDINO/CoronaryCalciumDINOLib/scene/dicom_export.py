"""Export a result of the scene as DICOM SEG + SR (the Slicer module's Export DICOM button).

The CT volume node must come from a DICOM series: Slicer's DICOM module records the SOP
Instance UIDs of its slices in the node attribute ``DICOM.instanceUIDs``, and the DICOM
database gives each instance's file (``file_for_instance``, in Slicer
``slicer.dicomDatabase.fileForInstance``); the module's own DICOM loading may set
:data:`SOURCE_FILES_ATTRIBUTE` instead (the files, separated by ``|``). The SEG holds the
current artery segments, the SR the scores of the current segments: when the score table
does not match them (an edit not rescored yet), the result is rescored first, so that SEG
and SR always agree. Files: ``<folder>/<CT name>.seg.dcm`` and ``.sr.dcm``, never
replacing existing ones unless ``overwrite``.

Everything takes nodes and callables explicitly (no Qt, no ``slicer`` module), so it is
tested on slicer-core.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from ..constants import ARTERIES
from ..errors import InputError
from .segmentation import read_labels
from .volume import volume_node_to_ct

#: Attribute of a volume loaded by Slicer's DICOM module: its instances' SOP Instance UIDs.
INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
#: Attribute holding the source files themselves (``|``-separated), where a loader sets it.
SOURCE_FILES_ATTRIBUTE = "CoronaryCalciumDINO.SourceFiles"


def source_files(volume_node, file_for_instance: Callable[[str], str] | None = None) -> list[str]:
    """The DICOM files of ``volume_node``'s series; one-line InputError when it was not
    loaded from DICOM or a file is no longer there."""
    name = volume_node.GetName()
    listed = volume_node.GetAttribute(SOURCE_FILES_ATTRIBUTE) or ""
    files = [f for f in listed.split("|") if f]
    if not files:
        uids = (volume_node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
        if not uids:
            raise InputError(f"volume '{name}' was not loaded from DICOM (load the CT series with the DICOM module); "
                             "a DICOM SEG and SR must reference the source series")
        if file_for_instance is None:
            raise InputError(f"volume '{name}': no DICOM database to find its files in")
        files = [file_for_instance(uid) or "" for uid in uids]
        if not all(files):
            raise InputError(f"volume '{name}': {sum(1 for f in files if not f)} of its DICOM instances are not in "
                             "the DICOM database any more")
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise InputError(f"volume '{name}': its DICOM file {missing[0]} is gone"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return files


def export_paths(folder: str | os.PathLike, volume_node) -> tuple[Path, Path]:
    """(SEG, SR) files of an export of ``volume_node``'s result into ``folder``."""
    from ..report.dicom import dicom_output_paths

    stem = re.sub(r"[^\w.-]+", "_", volume_node.GetName()).strip("._") or "ct"
    return dicom_output_paths(folder, stem)


def _same_scores(report: dict, result) -> bool:
    current = result.to_dict()
    return all(report.get("arteries", {}).get(a) == current["arteries"][a] for a in ARTERIES) \
        and report.get("total") == current["total"]


def export_dicom(segmentation_node, volume_node, folder: str | os.PathLike,
                 file_for_instance: Callable[[str], str] | None = None, overwrite: bool = False):
    """Write the DICOM SEG and SR of the result ``segmentation_node`` (on ``volume_node``)
    into ``folder``; returns :class:`..report.dicom.DicomResults`. One-line InputError
    (nothing written) for a CT not from DICOM, existing files (unless ``overwrite``) or a
    missing highdicom."""
    from ..outputs import check_output_files
    from ..report.dicom import write_dicom_results
    from ..requirements import require_dicom_out
    from .logic import SCORE_TABLE_REF, _linked, params_from_report, rescore, score_box, scoring_params_for
    from .segmentation import read_labels_box
    from .table import report_from_table

    require_dicom_out("Export DICOM")
    files = source_files(volume_node, file_for_instance)
    seg_path, sr_path = export_paths(folder, volume_node)
    check_output_files([(seg_path, "DICOM SEG"), (sr_path, "DICOM SR")], overwrite=overwrite)

    scene = volume_node.GetScene()
    table = _linked(scene, segmentation_node, SCORE_TABLE_REF)
    report = report_from_table(table) if table is not None else {}
    params = params_from_report(report) if report else None
    ct = volume_node_to_ct(volume_node, copy=False)
    box, offset, _ = read_labels_box(segmentation_node, volume_node)
    current = score_box(ct.hu, box, offset, ct.spacing, scoring_params_for(volume_node, params))
    if not report or not _same_scores(report, current):
        report = rescore(segmentation_node, volume_node, params)  # the table follows the segments
    labels, _ = read_labels(segmentation_node, volume_node)
    return write_dicom_results(labels, ct, report, seg_path, sr_path, files=files)
