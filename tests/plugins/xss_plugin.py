"""Fixture plugin: a defense whose name, paper, description and parameter carry
script-injection payloads, for ``tests/test_trust.py``: the rendered HTML leaderboard must show
them as text, never as markup. It trains plainly."""

from __future__ import annotations

from advarena.api import Defense
from advarena.hookimpl import hookimpl
from advarena.params import param

NAME_PAYLOAD = "xss/../<script>alert('name')</script>"
PAPER_PAYLOAD = "<script>alert('paper')</script>"
PARAM_PAYLOAD = "<img src=x onerror=alert('param')>"
DOC_PAYLOAD = "<svg onload=alert('doc')>"
PAYLOADS = (NAME_PAYLOAD, PAPER_PAYLOAD, PARAM_PAYLOAD, DOC_PAYLOAD)


class ScriptInjection(Defense):
    """<svg onload=alert('doc')> trains plainly; every visible string is a payload."""

    name = NAME_PAYLOAD
    paper = PAPER_PAYLOAD
    note: str = param(PARAM_PAYLOAD, help="<b onmouseover=alert('help')>help</b>")


@hookimpl
def advarena_register_defenses():
    return [ScriptInjection]
