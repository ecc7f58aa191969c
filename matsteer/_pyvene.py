"""pyvene, imported without its optional-backend notice.

pyvene 0.1.8 prints "nnsight is not detected. Please install via 'pip install nnsight' for nnsight backend." to
stdout when it is imported without nnsight, a backend matsteer does not use. That line lands in every notebook and
command output, so the import captures stdout, drops exactly that notice and passes anything else through.
"""

from __future__ import annotations

import contextlib
import io
import sys
from types import ModuleType

_NOTICE = "nnsight is not detected"


def import_pyvene() -> ModuleType:
    """``import pyvene``, minus the nnsight notice (other output, warnings and errors are untouched)."""
    if "pyvene" in sys.modules:
        return sys.modules["pyvene"]
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        import pyvene
    for line in captured.getvalue().splitlines(keepends=True):
        if not line.startswith(_NOTICE):
            sys.stdout.write(line)
    return pyvene
