"""Slicer scene glue: CT volume nodes, the result segmentation, score tables, attention
overlay, edit tracking, compute and rescore.

Functions take the scene, nodes and module logics explicitly (no Qt, no ``slicer.mrmlScene``
global), so they run in Slicer and on the ``slicer-core`` package alike. ``slicer`` and
``vtk`` are imported inside the functions: importing this package needs neither.

Main entry points (in :mod:`.logic`): :func:`~.logic.compute`, :func:`~.logic.rescore`,
:class:`~.logic.ResultSession` (edit tracking + automatic rescoring),
:func:`~.logic.create_core_scene`; in :mod:`.volume`: :func:`~.volume.ct_to_volume_node`,
:func:`~.volume.volume_node_to_ct`; in :mod:`.assign`: :class:`~.assign.LesionAssigner`
(click-to-assign with undo), :func:`~.assign.show_candidates`.
"""
