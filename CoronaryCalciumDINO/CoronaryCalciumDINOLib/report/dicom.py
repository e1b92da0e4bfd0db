"""DICOM results that go back to a PACS: the SEG of the per-artery calcium and a
Structured Report (TID 1500 Measurement Report) of its scores, both tied to the source CT
series (same patient, study and frame of reference; the SEG references the source
instances, the SR lists them as evidence).

The SR (Comprehensive 3D SR, built with highdicom) holds, from the JSON report:

* the procedure (SCT, 426005005, "Cardiac CT for calcium scoring") and the device that made
  it (CoronaryCalciumDINO, with its version);
* per artery (LM, LAD, LCX, RCA) a measurement group (TID 1411 referencing the artery's SEG
  segment when it holds calcium, else TID 1501) with finding site the artery and
  measurements Agatston score (DCM 112058 "Calcium score", method "Agatston scoring
  method"), volume (DCM 122660 "Calcium Volume", mm3), mass (DCM 122661 "Calcium Mass",
  mg; only when a calibration factor was given) and lesion count (SCT 246206008 "Number of
  lesions");
* a group for the whole coronary tree (finding site SCT 41801008 "Coronary artery") with
  the same measurements, the threshold (DCM 122657 "Agatston Score Threshold", HU) and the
  tube voltage (DCM 113733 "KVP", kV) used, and as text evaluations (TID 1501 row 12: coded
  question, text answer) the risk category, the CAC-DRS grade, each warning of the report
  and the disclaimer (DCM 121106 "Comment");
* in every group the algorithm (TID 4019): the model bundle's name and version, with its
  sha256 and the scoring parameters as algorithm parameters, or for a given label map the
  scoring software.

Risk category and CAC-DRS have no code in DCMR; their questions are coded in the private
scheme ``99CCDINO`` (declared in the SR's Coding Scheme Identification Sequence).

Only for a CT read from DICOM (its files are known: ``ct.meta["files"]``, see
:mod:`..io.dicom`): :func:`require_dicom_input` refuses other inputs in one line. A result
without calcium has no SEG (a SEG needs a segment); the SR says so with zero scores.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..constants import ARTERIES
from ..errors import InputError
from ..filenames import VOLUME_SUFFIXES
from ..io.atomic import atomic_path
from ..io.dicom_seg import (
    ARTERY_CODES,
    SEG_SERIES_NUMBER,
    TYPE_CODE,
    build_segmentation,
    code,
    labels_on_source,
    one_line,
)
from ..io.volume import CTVolume
from ..requirements import require_dicom_out

#: File names of the DICOM results of study ``<stem>`` in a ``--dicom-out`` folder.
SEG_NAME = "{stem}.seg.dcm"
SR_NAME = "{stem}.sr.dcm"
SR_SERIES_NUMBER = SEG_SERIES_NUMBER + 1
#: Private coding scheme of the concepts DCMR has no code for.
PRIVATE_SCHEME = "99CCDINO"
RISK_CATEGORY_CODE = (PRIVATE_SCHEME, "RISKCAT", "Agatston score risk category")
CAC_DRS_CODE = (PRIVATE_SCHEME, "CACDRS", "CAC-DRS category")
WARNING_CODE = (PRIVATE_SCHEME, "WARNING", "Warning")
#: A review flag of the report (:mod:`.flags`): why the study needs a human look.
REVIEW_CODE = (PRIVATE_SCHEME, "REVIEW", "Needs a human look")
COMMENT_CODE = ("DCM", "121106", "Comment")
PROCEDURE_CODE = ("SCT", "426005005", "Cardiac CT for calcium scoring")
CORONARY_ARTERY_CODE = ("SCT", "41801008", "Coronary artery")
AGATSTON_CODE = ("DCM", "112058", "Calcium score")
VOLUME_CODE = ("DCM", "122660", "Calcium Volume")
MASS_CODE = ("DCM", "122661", "Calcium Mass")
LESIONS_CODE = ("SCT", "246206008", "Number of lesions")
THRESHOLD_CODE = ("DCM", "122657", "Agatston Score Threshold")
KVP_CODE = ("DCM", "113733", "KVP")
AGATSTON_METHOD = ("DCM", "112055", "Agatston scoring method")
VOLUME_METHOD = ("DCM", "112056", "Volume scoring method")
MASS_METHOD = ("DCM", "112057", "Mass scoring method")
QUALITATIVE_EVALUATIONS = ("UMLS", "C0034375", "Qualitative Evaluations")
UNITS = {
    "1": ("UCUM", "1", "no units"),
    "mm3": ("UCUM", "mm3", "cubic millimeter"),
    "mg": ("UCUM", "mg", "milligram"),
    "HU": ("UCUM", "[hnsf'U]", "Hounsfield unit"),
    "kV": ("UCUM", "kV", "kilovolt"),
}


@dataclass
class DicomResults:
    """What :func:`write_dicom_results` wrote: the SEG (None without calcium) and the SR."""

    seg: Path | None
    sr: Path
    notes: list[str] = field(default_factory=list)


def dicom_output_paths(out_dir: str | os.PathLike, stem: str) -> tuple[Path, Path]:
    """(SEG, SR) file of study ``stem`` in the folder ``out_dir``."""
    out = Path(out_dir)
    return out / SEG_NAME.format(stem=stem), out / SR_NAME.format(stem=stem)


def is_dicom_input(path: str | os.PathLike) -> bool:
    """Is ``path`` (a study's CT: a folder or a file) read as DICOM? (A folder is a DICOM
    folder; a file is DICOM unless it is a NIfTI / NRRD / MHA volume.)"""
    p = Path(path)
    return p.is_dir() or (p.is_file() and not p.name.lower().endswith(VOLUME_SUFFIXES))


def require_dicom_input(path: str | os.PathLike, option: str = "--dicom-out") -> None:
    """One-line InputError unless the CT at ``path`` is DICOM (a SEG / SR references it)."""
    if not is_dicom_input(path):
        raise InputError(f"{option} needs a DICOM CT (a DICOM folder or file), which the SEG and SR reference; "
                         f"{Path(path).name} is a volume file")


def _algorithm(report: dict) -> tuple[str, str] | None:
    """(name, version) of the model that drew the labels, None for a given label map."""
    model = report.get("model")
    if not isinstance(model, dict):
        return None
    return str(model.get("name") or "model"), str(model.get("version") or "unknown")


def _parameters(report: dict) -> list[str]:
    """The algorithm parameters (TID 4019) of a report: model checksum, score definition."""
    params = []
    model = report.get("model")
    if isinstance(model, dict):
        if model.get("sha256"):
            params.append(f"model sha256 {model['sha256']}")
        if model.get("trained_on"):
            params.append(f"model trained on {model['trained_on']}")
        if "arteries_named_from_aorta" in model:
            params.append(f"arteries named from the aorta: {'yes' if model['arteries_named_from_aorta'] else 'no'}")
    if report.get("labels"):
        params.append(f"labels {Path(str(report['labels'])).name}")
    params.append(f"threshold {float(report['threshold_hu']):g} HU")
    kvp = report.get("kvp")
    params.append(f"kVp {float(kvp):g}" if kvp is not None else "kVp unknown (120 kVp thresholds)")
    for key, unit in (("min_area_mm2", " mm2"), ("slice_factor", ""), ("calibration_factor", " mg/cm3 per HU")):
        if report.get(key) is not None:
            params.append(f"{key.replace('_mm2', '').replace('_', ' ')} {float(report[key]):g}{unit}")
    return params


def _measurements(hd, scores: dict) -> list:
    def num(concept, value, unit, method=None):
        return hd.sr.Measurement(name=code(concept), value=float(value), unit=code(UNITS[unit]),
                                 method=None if method is None else code(method))

    out = [num(AGATSTON_CODE, scores["agatston"], "1", AGATSTON_METHOD),
           num(VOLUME_CODE, scores["volume_mm3"], "mm3", VOLUME_METHOD)]
    if scores.get("mass_mg") is not None:
        out.append(num(MASS_CODE, scores["mass_mg"], "mg", MASS_METHOD))
    out.append(num(LESIONS_CODE, int(scores["lesions"]), "1"))
    return out


def _text_item(hd, concept, text: str):
    return hd.sr.TextContentItem(name=code(concept), value=str(text),
                                 relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def build_sr(report: dict, headers: list, seg=None):
    """The Comprehensive 3D SR (TID 1500) of ``report``, with the source CT ``headers`` as
    evidence and referencing the segments of ``seg`` (the SEG of the same result, or None)."""
    require_dicom_out()
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import generate_uid

    algorithm = _algorithm(report)
    name, version = algorithm if algorithm is not None else ("CoronaryCalciumDINO scoring", __version__)
    algorithm_id = hd.sr.AlgorithmIdentification(name=name, version=version, parameters=_parameters(report),
                                                 manufacturer="CoronaryCalciumDINO")
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["CoronaryCalciumDINO", __version__]), name="CoronaryCalciumDINO",
        manufacturer_name="CoronaryCalciumDINO", model_name=name[:64],
    )
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"), observer_identifying_attributes=device))

    segment_of = {}
    if seg is not None:
        for item in seg.SegmentSequence:
            segment_of[str(item.SegmentLabel)] = int(item.SegmentNumber)
    groups = []
    for artery in ARTERIES:
        common = dict(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{artery} calcium"),
            finding_type=code(TYPE_CODE),
            finding_sites=[hd.sr.FindingSite(code(ARTERY_CODES[artery]))],
            algorithm_id=algorithm_id,
            measurements=_measurements(hd, report["arteries"][artery]),
        )
        if artery in segment_of:
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                    segment_number=segment_of[artery],
                    source_series=hd.sr.SourceSeriesForSegmentation(str(headers[0].SeriesInstanceUID))),
                **common))
        else:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(**common))

    total = _measurements(hd, report["total"])
    total.append(hd.sr.Measurement(name=code(THRESHOLD_CODE), value=float(report["threshold_hu"]),
                                   unit=code(UNITS["HU"])))
    if report.get("kvp") is not None:
        total.append(hd.sr.Measurement(name=code(KVP_CODE), value=float(report["kvp"]), unit=code(UNITS["kV"])))
    total_group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Coronary calcium, all arteries"),
        finding_type=code(TYPE_CODE),
        finding_sites=[hd.sr.FindingSite(code(CORONARY_ARTERY_CODE))],
        algorithm_id=algorithm_id,
        measurements=total,
    )
    # TID 1501 row 12: coded questions with text answers (highdicom builds only coded ones)
    texts = [_text_item(hd, RISK_CATEGORY_CODE, report["risk_category"]),
             _text_item(hd, CAC_DRS_CODE, report["cac_drs"])]
    texts += [_text_item(hd, WARNING_CODE, w) for w in report.get("warnings") or []]
    texts += [_text_item(hd, REVIEW_CODE, f["message"]) for f in report.get("review_flags") or []
              if isinstance(f, dict) and f.get("message")]
    if seg is None:
        texts.append(_text_item(hd, COMMENT_CODE, "No calcium was found; no segmentation was written."))
    texts.append(_text_item(hd, COMMENT_CODE, report["disclaimer"]))
    total_group[0].ContentSequence.extend(texts)
    groups.append(total_group)

    content = hd.sr.MeasurementReport(observation_context=context, procedure_reported=code(PROCEDURE_CODE),
                                      imaging_measurements=groups)
    evidence = [*headers, *([seg] if seg is not None else [])]
    with warnings.catch_warnings(), one_line("the DICOM SR"):
        warnings.simplefilter("ignore")  # e.g. highdicom's doubts about the source's PatientName form
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=content[0],
            series_instance_uid=hd.UID(),
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="CoronaryCalciumDINO",
            is_complete=True,
            is_final=False,  # not verified by a reader
            series_description="Coronary calcium scores (research use only)",
        )
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "CoronaryCalciumDINO concepts"
    scheme.CodingSchemeResponsibleOrganization = "CoronaryCalciumDINO"
    sr.CodingSchemeIdentificationSequence = DicomSequence([scheme])
    return sr


def _save(ds, path: Path) -> None:
    with atomic_path(path) as tmp:
        ds.save_as(str(tmp), enforce_file_format=True)  # highdicom needs pydicom >= 3


def write_dicom_results(labels: np.ndarray, ct: CTVolume, report: dict, seg_path: str | os.PathLike,
                        sr_path: str | os.PathLike, files=None) -> DicomResults:
    """Write the SEG of ``labels`` (on ``ct``'s grid) and the SR of ``report``, referencing
    the DICOM files of ``ct`` (``files``, default ``ct.meta["files"]``). Without calcium no
    SEG is written (and one left at ``seg_path`` by an earlier run is removed, so that it
    never stands beside an SR it does not match). The caller checks beforehand that the
    files may be written (:func:`..outputs.check_output_files`)."""
    require_dicom_out()
    files = list(files if files is not None else ct.meta.get("files") or [])
    if not files:
        raise InputError("DICOM SEG / SR need a CT read from DICOM (a DICOM folder or file); "
                         f"{Path(ct.source).name or 'this CT'} is not")
    headers, labels_src = labels_on_source(labels, ct, files)
    algorithm = _algorithm(report)
    seg = build_segmentation(labels_src, headers, algorithm=algorithm, software_version=__version__)
    sr = build_sr(report, headers, seg)
    seg_path, sr_path = Path(seg_path), Path(sr_path)
    notes = []
    if seg is not None:
        _save(seg, seg_path)
    else:
        notes.append("no calcium: no DICOM SEG written (a SEG needs a segment); the SR holds the zero scores")
        if seg_path.is_file():
            seg_path.unlink()
    _save(sr, sr_path)
    return DicomResults(seg_path if seg is not None else None, sr_path, notes)


def write_study_dicom(study, out_dir: str | os.PathLike, dicom_dir: str | os.PathLike,
                      overwrite: bool = False) -> DicomResults | None:
    """The DICOM results of one study scored by ``ccdino batch`` (a
    :class:`..data.studies.StudyInput`), from its outputs in ``out_dir``: the labels of
    ``<study>.seg.nrrd`` and the report ``<study>.json``. None when its SR exists already
    (and not ``overwrite``): the batch resumes like its scoring."""
    from ..io import load_ct
    from ..io.jsonfile import read_json
    from ..io.segfile import read_seg_labels

    seg_path, sr_path = dicom_output_paths(dicom_dir, study.name)
    if sr_path.is_file() and not overwrite:
        return None
    if seg_path.is_file() and not overwrite:  # a SEG without its SR: not ours to replace
        raise InputError(f"{seg_path} exists without its SR; remove it or use --overwrite")
    require_dicom_input(study.path)
    outputs = study.outputs(out_dir)
    report = read_json(outputs["json"])
    ct = load_ct(study.path)
    labels = read_seg_labels(outputs["seg"], ct)
    return write_dicom_results(labels, ct, report, seg_path, sr_path)


def check_batch_dicom(input_dir: str | os.PathLike, out_dir: str | os.PathLike, dicom_dir: str | os.PathLike,
                      labels_dir=None) -> list:
    """Before a batch with ``--dicom-out``: every study must be DICOM and ``dicom_dir`` must
    not be taken for a study by a later run (a folder directly inside ``input_dir`` other than
    the output folder); one-line InputError otherwise. Returns the studies."""
    from ..data.studies import list_study_inputs

    require_dicom_out()
    studies = list_study_inputs(input_dir, exclude=(out_dir, labels_dir, dicom_dir))
    others = [s.name for s in studies if not is_dicom_input(s.path)]
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise InputError(f"--dicom-out needs DICOM studies (the SEG and SR reference their series); {shown} "
                         f"{'is a volume file' if len(others) == 1 else 'are volume files'}")
    dicom, root = Path(dicom_dir).resolve(), Path(input_dir).resolve()
    if dicom.parent == root and dicom != Path(out_dir).resolve():
        raise InputError(f"--dicom-out {dicom_dir} lies in INPUT_DIR, where a later batch would take it for a study; "
                         "put it inside the output folder or elsewhere")
    return studies
