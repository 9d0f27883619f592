"""First-party defenses, one module each, registered through the ``advarena`` entry point."""

from advarena.hookimpl import hookimpl


@hookimpl
def advarena_register_defenses():
    from .brelu import BReLUDefense
    from .gda import GDA
    from .gda_brelu import GDABReLU
    from .none import NoDefense

    return [NoDefense, BReLUDefense, GDA, GDABReLU]
