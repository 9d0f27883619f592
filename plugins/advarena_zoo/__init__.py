"""First-party datasets and architectures, registered through the ``advarena`` entry point."""

from advarena.hookimpl import hookimpl


@hookimpl
def advarena_register_datasets():
    from .datasets import DATASETS

    return list(DATASETS)


@hookimpl
def advarena_register_architectures():
    from .architectures import ARCHITECTURES

    return list(ARCHITECTURES)
