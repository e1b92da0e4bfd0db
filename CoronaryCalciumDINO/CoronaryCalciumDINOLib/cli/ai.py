"""``ccdino score`` without ``--labels``: run the AI pipeline and write its outputs (the
command line's side of the AI: options in, files and messages out; the pipeline itself is
:mod:`..pipeline`).

Files written (only those asked for; an existing file of the same name is replaced, since
the user named it):

``<out>/<stem>.labels.nrrd``
    per-artery label map (uint8 0 bg, 1 LM, 2 LAD, 3 LCX, 4 RCA) on the CT grid.
``<out>/<stem>.seg.nrrd``
    the same labels as a Slicer segmentation file (segments LM, LAD, LCX, RCA), each segment
    tagged with the fingerprint of the AI's voxels (the Slicer module recognises the file
    loaded on its own and tracks edits of it).
``--attention FILE``
    mean attention over heads as a scalar volume on the CT grid (NRRD or NIfTI by the
    suffix), plus one file per head next to it: ``<name>.head1<suffix>``, ... Values are
    attention weights (0 on slices the detector did not select).
``--attention-codes FILE`` (for the Slicer module, not in ``--help``)
    the same maps quantised as the module keeps them (:mod:`..io.attention`), one file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .. import pipeline
from ..io.segfile import write_seg_nrrd
from ..io.volume import CTVolume, write_volume
from ..report import build_report
from ..report.flags import review_flags
from .common import attention_paths, write_dicom
from .progress import CUDA_WORD, progress_line_printer, progress_printer


def write_attention(attention, ct: CTVolume, path: str | Path) -> list[Path]:
    """Write (heads+1, z, y, x) attention maps: the mean to ``path``, heads beside it."""
    paths = attention_paths(path, attention.shape[0] - 1)
    for arr, p in zip(attention, paths):
        write_volume(arr.astype("float32"), ct, p)
    return paths


def print_cuda_line(device) -> None:
    """``CUDA 1`` or ``CUDA 0``: whether PyTorch found a CUDA GPU (called by the pipeline
    once it has imported torch and resolved ``device``, before any network runs)."""
    import torch  # imported by the pipeline already

    print(f"{CUDA_WORD} {int(bool(torch.cuda.is_available()))}", flush=True)


def on_device(device, cuda_line: bool = False) -> None:
    """Called by the pipeline with its device before any network runs: on the CPU, the
    networks use only the CPUs that are not busy (:func:`..pipeline.device.use_free_cpus`);
    with ``cuda_line``, :func:`print_cuda_line`."""
    from ..pipeline.device import use_free_cpus

    if getattr(device, "type", "cpu") == "cpu":
        use_free_cpus()
    if cuda_line:
        print_cuda_line(device)


def score_with_ai(ct: CTVolume, args, params, stem: str, out_dir: Path | None, dicom=None) -> dict:
    """Run the pipeline for the ``score`` subcommand and return its report dict.

    The pipeline gets the bundle's path: it verifies the manifest first (a bad bundle stops
    it before any work), runs the stages up to the candidates without torch, and builds the
    networks after them; so the first progress comes before the AI's imports."""
    quiet = getattr(args, "quiet", False)
    lines = bool(getattr(args, "progress_lines", False))  # for a program reading stdout (the Slicer module)
    progress = progress_line_printer() if lines else progress_printer(in_place=True, quiet=quiet)
    res = pipeline.run_pipeline(
        ct,
        getattr(args, "bundle", None),
        device=getattr(args, "device", "auto") or "auto",
        params=params,
        attention=bool(getattr(args, "attention", None) or getattr(args, "attention_codes", None)),
        progress=progress,
        on_device=lambda dev: on_device(dev, cuda_line=lines),
        naming=getattr(args, "naming", None) or "aorta",
    )
    # the report first (it checks every value): a run that fails here has written nothing
    report = build_report(
        res.score, getattr(args, "input", ct.source), kvp=ct.kvp, warnings=[*ct.warnings, *res.warnings], **res.report_extra()
    )
    region = res.heart_region() if hasattr(res, "heart_region") else None  # where the pipeline looked
    report["review_flags"] = review_flags(ct, report, region)  # when the study needs a human look
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_volume(res.labels, ct, out_dir / f"{stem}.labels.nrrd")
        write_seg_nrrd(res.labels, ct, out_dir / f"{stem}.seg.nrrd", ai_result=True)
    if getattr(args, "attention", None):
        write_attention(res.attention, ct, args.attention)
    if getattr(args, "attention_codes", None):  # quantised here, not in the program that reads them
        from ..io.attention import AttentionMaps

        AttentionMaps(res.attention).save(args.attention_codes)
    if dicom is not None:  # (SEG, SR) paths: ``--dicom-out`` / ``--dicom-seg`` + ``--dicom-sr``
        write_dicom(res.labels, ct, report, dicom, quiet=quiet)
    # the CT's own warnings (ct.warnings, e.g. a contrast-enhanced CT) were printed by the caller
    for message in res.warnings:
        print(f"ccdino: warning: {message}", file=sys.stderr)
    return report
