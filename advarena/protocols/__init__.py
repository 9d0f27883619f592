"""The protocol matrix, registered through the ``advarena`` entry point like any plugin."""

from ..hookimpl import hookimpl


@hookimpl
def advarena_register_protocols():
    from .white_box import WhiteBox

    return [WhiteBox]
