"""The protocol matrix, registered through the ``advarena`` entry point like any plugin."""

from ..hookimpl import hookimpl


@hookimpl
def advarena_register_protocols():
    from .black_box import BlackBox
    from .ensemble_transfer import EnsembleTransfer
    from .loss_sensitivity import LossSensitivity
    from .minimal_perturbation import MinimalPerturbation
    from .training_cost import TrainingCost
    from .white_box import WhiteBox

    return [WhiteBox, BlackBox, EnsembleTransfer, MinimalPerturbation, LossSensitivity,
            TrainingCost]
