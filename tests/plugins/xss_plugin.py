"""Fixture plugin: a defense whose paper, description and parameter carry script-injection
payloads, for ``tests/test_trust.py``: the rendered HTML leaderboard must show them as text,
never as markup. It trains plainly. (A name cannot carry one: the registry refuses names
outside ASCII letters, digits, '-', '_' and '.'; ``NAME_PAYLOAD`` is kept for that test.)"""

from __future__ import annotations

from advarena.api import Defense
from advarena.hookimpl import hookimpl
from advarena.params import param

NAME = "xss-injection"
NAME_PAYLOAD = "xss/../<script>alert('name')</script>"
PAPER_PAYLOAD = "<script>alert('paper')</script>"
PARAM_PAYLOAD = "<img src=x onerror=alert('param')>"
DOC_PAYLOAD = "<svg onload=alert('doc')>"
PAYLOADS = (NAME_PAYLOAD, PAPER_PAYLOAD, PARAM_PAYLOAD, DOC_PAYLOAD)


class ScriptInjection(Defense):
    """<svg onload=alert('doc')> trains plainly; every visible string is a payload."""

    name = NAME
    paper = PAPER_PAYLOAD
    note: str = param(PARAM_PAYLOAD, help="<b onmouseover=alert('help')>help</b>")


@hookimpl
def advarena_register_defenses():
    return [ScriptInjection]
