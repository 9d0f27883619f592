"""An example third-party advarena plugin: one attack (``step-ll``) and one defense
(``input-gradient-reg``), registered through the ``advarena`` entry point group.

advarena imports this module when it builds its plugin manager and calls the hooks below; the
classes are imported inside the hooks, so importing the package stays cheap.
"""

from advarena.hookimpl import hookimpl

__version__ = "0.1.0"


@hookimpl
def advarena_register_attacks():
    from .step_ll import StepLL

    return [StepLL]


@hookimpl
def advarena_register_defenses():
    from .input_gradient import InputGradientRegularization

    return [InputGradientRegularization]
