"""Score table and per-slice detector table (vtkMRMLTableNode) and the probability plot.

Score table: the layout of :func:`CoronaryCalciumDINOLib.report.tables.write_score_csv` —
one row per metric (``agatston``, ``volume_mm3``, ``mass_mg``, ``lesions``, then
``risk_category`` and ``cac_drs`` in the ``total`` column), columns ``metric``, ``LM``,
``LAD``, ``LCX``, ``RCA``, ``total``. Cells are strings rounded for display (2 decimals, an
integer for ``lesions``, empty for a mass without calibration); the unrounded report is kept
as JSON in the node attribute ``CoronaryCalciumDINO.Report`` and the disclaimer in
``CoronaryCalciumDINO.Disclaimer`` (also the last row).

Slice table: columns ``slice`` (int), ``probability`` (double), ``selected`` (0/1).
"""

from __future__ import annotations

import json

import numpy as np

from ..constants import ARTERIES, DISCLAIMER
from ..io.jsonfile import json_default
from ..report.tables import METRICS, build_report

REPORT_ATTRIBUTE = "CoronaryCalciumDINO.Report"
DISCLAIMER_ATTRIBUTE = "CoronaryCalciumDINO.Disclaimer"
COLUMNS = ("metric", *ARTERIES, "total")


def format_cell(metric: str, value) -> str:
    """Display text of a score value (2 decimals; integer lesion counts; '' for None)."""
    if value is None:
        return ""
    if metric == "lesions":
        return str(int(value))
    return f"{float(value):.2f}"


def score_rows(report: dict) -> list[list[str]]:
    """The table rows (strings) of a report dict from :func:`build_report`."""
    rows = []
    for metric in METRICS:
        values = [report["arteries"][a][metric] for a in ARTERIES] + [report["total"][metric]]
        rows.append([metric] + [format_cell(metric, v) for v in values])
    blank = [""] * len(ARTERIES)
    rows.append(["risk_category", *blank, str(report["risk_category"])])
    rows.append(["cac_drs", *blank, str(report["cac_drs"])])
    rows.append(["disclaimer", *blank, report.get("disclaimer", DISCLAIMER)])
    return rows


def _fill_string_table(table_node, columns, rows) -> None:
    import vtk

    table = table_node.GetTable()
    was = table_node.StartModify()
    table.Initialize()
    for name in columns:
        col = vtk.vtkStringArray()
        col.SetName(name)
        table.AddColumn(col)
    table.SetNumberOfRows(len(rows))
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            table.GetColumn(c).SetValue(r, value)
    table.Modified()
    table_node.EndModify(was)


def new_table(scene, name: str):
    import slicer

    node = slicer.vtkMRMLTableNode()
    node.SetName(name)
    scene.AddNode(node)
    return node


def update_score_table(table_node, result, input_name: str, warnings=None, **extra) -> dict:
    """Fill ``table_node`` from a ScoreResult; returns the report dict stored on the node."""
    report = build_report(result, input_name, warnings=warnings, **extra)
    _fill_string_table(table_node, COLUMNS, score_rows(report))
    table_node.SetAttribute(REPORT_ATTRIBUTE, json.dumps(report, default=json_default))
    table_node.SetAttribute(DISCLAIMER_ATTRIBUTE, report["disclaimer"])
    table_node.SetUseColumnTitleAsColumnHeader(True)
    table_node.SetLocked(True)
    return report


def report_from_table(table_node) -> dict:
    """The unrounded report stored on a score table node."""
    text = table_node.GetAttribute(REPORT_ATTRIBUTE)
    return json.loads(text) if text else {}


def table_cell(table_node, metric: str, column: str) -> str:
    """Display text of one cell of the score table (row ``metric``, column ``column``)."""
    table = table_node.GetTable()
    metric_col = table.GetColumnByName("metric")
    col = table.GetColumnByName(column)
    for r in range(table.GetNumberOfRows()):
        if metric_col.GetValue(r) == metric:
            return col.GetValue(r)
    raise KeyError(metric)


def update_slice_table(table_node, probabilities: np.ndarray, selected: np.ndarray) -> None:
    """Fill the per-slice detector table (slice, probability, selected)."""
    import vtk
    from vtk.util import numpy_support as ns

    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    selected = np.asarray(selected, dtype=bool).ravel()
    if probabilities.shape != selected.shape:
        raise ValueError("slice probabilities and selection flags differ in length")
    table = table_node.GetTable()
    was = table_node.StartModify()
    table.Initialize()
    for name, values, vtk_type in (
        ("slice", np.arange(probabilities.size, dtype=np.int32), vtk.VTK_INT),
        ("probability", probabilities, vtk.VTK_DOUBLE),
        ("selected", selected.astype(np.int32), vtk.VTK_INT),
    ):
        col = ns.numpy_to_vtk(values, deep=True, array_type=vtk_type)
        col.SetName(name)
        table.AddColumn(col)
    table.Modified()
    table_node.EndModify(was)
    table_node.SetLocked(True)


#: Slice table attribute linking to its plot chart.
PLOT_CHART_REF = "CoronaryCalciumDINO.PlotChart"


def ensure_probability_plot(scene, table_node, name: str):
    """Plot chart (probability vs slice) of a slice table; returns the chart node."""
    import slicer

    chart_id = table_node.GetAttribute(PLOT_CHART_REF)
    chart = scene.GetNodeByID(chart_id) if chart_id else None
    if chart is None:
        series = slicer.vtkMRMLPlotSeriesNode()
        series.SetName(f"{name} probability")
        scene.AddNode(series)
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName("slice")
        series.SetYColumnName("probability")
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        chart = slicer.vtkMRMLPlotChartNode()
        chart.SetName(f"{name} slice probability")
        scene.AddNode(chart)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
        chart.SetXAxisTitle("slice")
        chart.SetYAxisTitle("calcium probability")
        table_node.SetAttribute(PLOT_CHART_REF, chart.GetID())
    return chart
