"""pyvene, imported without its optional-backend notice, and the patch that lets its ``generate`` take ``**inputs``.

pyvene 0.1.8 prints "nnsight is not detected. Please install via 'pip install nnsight' for nnsight backend." to
stdout when it is imported without nnsight, a backend matsteer does not use. That line lands in every notebook and
command output, so the import captures stdout, drops exactly that notice and passes anything else through.
"""

from __future__ import annotations

import contextlib
import functools
import io
import sys
from types import ModuleType
from typing import Any

from matsteer.steering.call_context import split_inputs

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


def install_generate_shim(intervention_cls: type[Any]) -> None:
    """Let ``pv.IntervenableModel.generate(**inputs, **gen_kwargs)`` (the reference README call) work.

    pyvene 0.1.8's signature is ``generate(base, ...)``, so the README call raises ``TypeError: missing 'base'``.
    The shim only handles calls that would raise that error and whose model holds an ``intervention_cls``
    (:class:`~matsteer.steering.intervention.MatSteerIntervention`, which installs it); it gathers the input
    tensors into ``base`` and defaults to ``unit_locations=None, intervene_on_prompt=True`` (every forward call). Every other call goes to pyvene unchanged. Idempotent.

    Class-wide, not on a subclass of our own: the README flow constructs pyvene's ``IntervenableModel`` itself.
    """
    cls = import_pyvene().IntervenableModel
    if getattr(cls.generate, "_matsteer_shim", False):
        return
    original = cls.generate

    @functools.wraps(original)
    def generate(self: Any, base: Any = None, *args: Any, **kwargs: Any) -> Any:
        mats = [iv for iv in self.interventions.values() if isinstance(iv, intervention_cls)]
        if base is not None or args or not mats or not any(k in kwargs for k in ("input_ids", "inputs_embeds")):
            return original(self, base, *args, **kwargs)
        base, rest = split_inputs(kwargs)
        rest.setdefault("unit_locations", None)
        rest.setdefault("intervene_on_prompt", True)
        contexts = {id(iv.context): iv.context for iv in mats}.values()
        # The plain class strips all model hooks when the call starts; keep ours alive for this call only.
        own = "_remove_forward_hooks" in self.__dict__
        if not own:
            object.__setattr__(self, "_remove_forward_hooks", lambda: None)
        handles = [self.model.register_forward_pre_hook(c.pre_hook, with_kwargs=True) for c in contexts]
        try:
            return original(self, base, **rest)
        finally:
            for h in handles:
                h.remove()
            for c in contexts:
                c.clear()
            if not own:
                del self.__dict__["_remove_forward_hooks"]
                self._remove_forward_hooks()  # what pyvene would have done at the end of the call

    generate._matsteer_shim = True  # type: ignore[attr-defined]
    cls.generate = generate
