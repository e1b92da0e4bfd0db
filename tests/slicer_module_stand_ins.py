"""Load the Slicer module file (``CoronaryCalciumDINO/CoronaryCalciumDINO.py``) on slicer-core.

slicer-core has the MRML classes and ``slicer.util`` but no Qt and no application. This
puts small stand-ins in their place: ``qt`` (QTimer, Qt.WaitCursor), ``slicer.i18n``,
``slicer.parameterNodeWrapper``, ``slicer.ScriptedLoadableModule`` and ``slicer.app``
(a layout manager and a cursor that record what is done to them), with ``slicer.mrmlScene``
a real scene made by ``scene.logic.create_core_scene``. The module's Logic then runs on
real MRML; only what needs a Qt application is replaced.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE_PY = REPO / "CoronaryCalciumDINO" / "CoronaryCalciumDINO.py"


class QTimer:
    def __init__(self):
        self.active, self.callbacks = False, []

    def setSingleShot(self, value):
        pass

    def setInterval(self, ms):
        pass

    def connect(self, signal, callback):
        self.callbacks.append(callback)

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


class LayoutManager:
    def __init__(self):
        self.layouts = []

    def setLayout(self, layout):
        self.layouts.append(layout)


class App:
    """slicer.app: the application logic of the core scene, a layout manager, the cursor."""

    def __init__(self, app_logic):
        self._app_logic = app_logic
        self._layout_manager = LayoutManager()
        self.cursor_stack = []
        self.events = []

    def layoutManager(self):
        return self._layout_manager

    def applicationLogic(self):
        return self._app_logic

    def setOverrideCursor(self, cursor):
        self.cursor_stack.append(cursor)
        self.events.append("wait cursor on")

    def restoreOverrideCursor(self):
        self.cursor_stack.pop()
        self.events.append("wait cursor off")

    def connect(self, *args):
        pass


def _module(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def load_module(monkeypatch, core):
    """Import the module file with the stand-ins; returns (module, app)."""
    import slicer

    qt = _module("qt", QTimer=QTimer, Qt=types.SimpleNamespace(WaitCursor="WaitCursor"))
    i18n = _module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text)
    wrapper = _module(
        "slicer.parameterNodeWrapper",
        parameterNodeWrapper=lambda cls: cls,
        Choice=lambda choices: ("Choice", tuple(choices)),
        WithinRange=lambda low, high: ("WithinRange", low, high),
    )

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

    class ScriptedLoadableModuleTest(unittest.TestCase):
        messages: list = []

        def delayDisplay(self, message, msec=None):
            type(self).messages.append(message)

    scripted = _module(
        "slicer.ScriptedLoadableModule",
        ScriptedLoadableModule=type("ScriptedLoadableModule", (), {"__init__": lambda self, parent: None}),
        ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleWidget=type("ScriptedLoadableModuleWidget", (), {}),
        ScriptedLoadableModuleTest=ScriptedLoadableModuleTest,
    )
    for name, module in (("qt", qt), ("slicer.i18n", i18n), ("slicer.parameterNodeWrapper", wrapper),
                         ("slicer.ScriptedLoadableModule", scripted)):
        monkeypatch.setitem(sys.modules, name, module)
        if name.startswith("slicer."):
            monkeypatch.setattr(slicer, name.split(".", 1)[1], module, raising=False)
    app = App(core.app_logic)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", core.scene, raising=False)
    spec = importlib.util.spec_from_file_location("CoronaryCalciumDINO_module_under_test", MODULE_PY)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module, app
