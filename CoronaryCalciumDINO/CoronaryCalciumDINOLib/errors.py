"""Errors the user can act on.

:class:`InputError` carries a one-line message naming the problem with the input; the CLI
prints it without a traceback and exits non-zero.
"""

from __future__ import annotations


class CCDinoError(Exception):
    """Base class of the project's user-facing errors (one-line message)."""


class InputError(CCDinoError):
    """The input (CT, labels, bundle, options) cannot be used as given."""


class ModelBundleError(CCDinoError):
    """A model bundle is missing, incomplete or fails its checksum."""


class Cancelled(CCDinoError):
    """Long work was cancelled by the user (progress ``cancel`` callback returned True)."""


class MissingDependencyError(CCDinoError):
    """An optional part (the AI: PyTorch, timm, MONAI) is not installed."""
