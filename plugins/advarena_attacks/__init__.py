"""First-party attacks, one module each, registered through the ``advarena`` entry point."""

from advarena.hookimpl import hookimpl


@hookimpl
def advarena_register_attacks():
    from advarena.api import Attack
    from advarena.plugins import collect

    return collect(__name__, Attack)
