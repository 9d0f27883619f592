"""Fixture plugin: a module that raises when imported (``tests/test_hostile.py`` installs it
as a distribution with an ``advarena`` entry point)."""

raise RuntimeError("hostile import failure")
