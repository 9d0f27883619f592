"""Fixture plugin: a hook implementation whose name matches no spec (``attackz``)."""

from __future__ import annotations

from advarena.hookimpl import hookimpl


@hookimpl
def advarena_register_attackz():
    return []
