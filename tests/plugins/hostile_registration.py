"""Fixture plugin: a malformed registration (a bare class where a list goes, and an object
that is not a plugin class), for ``tests/test_hostile.py``."""

from __future__ import annotations

from advarena.api import Attack
from advarena.hookimpl import hookimpl


class NotAList(Attack):
    """Registered on its own, not in a list."""

    name = "hostile-not-a-list"


@hookimpl
def advarena_register_attacks():
    return NotAList


@hookimpl
def advarena_register_defenses():
    return [object()]
