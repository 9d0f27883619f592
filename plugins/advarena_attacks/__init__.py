"""First-party attacks, one module each, registered through the ``advarena`` entry point."""

from advarena.hookimpl import hookimpl


@hookimpl
def advarena_register_attacks():
    from .fgsm import FGSM
    from .pgd import PGD

    return [FGSM, PGD]
