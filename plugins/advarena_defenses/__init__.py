"""First-party defenses, one module each, registered through the ``advarena`` entry point."""

from advarena.hookimpl import hookimpl


@hookimpl
def advarena_register_defenses():
    from advarena.api import Defense
    from advarena.plugins import collect

    return collect(__name__, Defense)
