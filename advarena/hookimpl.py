"""The marker plugins use: ``from advarena.hookimpl import hookimpl``."""

import pluggy

hookimpl = pluggy.HookimplMarker("advarena")
