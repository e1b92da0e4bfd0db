"""File-name conventions: the suffixes of volume, segmentation and label-map files.

Standard library only, so that the command line's option help can use them without loading
NumPy. :mod:`.io.volume` re-exports them.
"""

from __future__ import annotations

#: Suffixes of volume files (NRRD, NIfTI, MetaImage), in order of preference.
VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii.gz", ".nii", ".mha", ".mhd")
#: Volume suffixes whose header and data are one file: what outputs are written in (a
#: ``.nhdr`` / ``.mhd`` header keeps its data in a second file, which one atomic rename
#: cannot replace together with it).
SINGLE_FILE_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".mha")
#: Suffix of a Slicer segmentation file (a NRRD with segment metadata).
SEG_SUFFIX = ".seg.nrrd"
#: Suffixes of label-map files, in order of preference: a segmentation, then any volume.
LABEL_SUFFIXES = (SEG_SUFFIX, *VOLUME_SUFFIXES)


def split_volume_suffix(name: str) -> tuple[str, str] | None:
    """``(stem, suffix)`` of a volume or segmentation file name (the longest matching suffix,
    any case: ``a.seg.nrrd`` -> ``("a", ".seg.nrrd")``); None for other names."""
    low = name.lower()
    for suffix in sorted(LABEL_SUFFIXES, key=len, reverse=True):
        if low.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return None
