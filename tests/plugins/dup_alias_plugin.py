"""Fixture plugin: a defense with a fresh name whose alias clashes with the first-party
``gda``'s alias ``gda-relu``."""

from __future__ import annotations

from advarena.api import Defense
from advarena.hookimpl import hookimpl


class AliasSquatter(Defense):
    """Fresh name, taken alias."""

    name = "alias-squatter"
    aliases = ("gda-relu",)


@hookimpl
def advarena_register_defenses():
    return [AliasSquatter]
