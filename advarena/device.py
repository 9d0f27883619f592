"""Device selection and reproducibility helpers."""

from __future__ import annotations

import random

import numpy as np
import torch

from .errors import AdvarenaError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA where present, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AdvarenaError("--device cuda was asked for but no CUDA device is available; "
                            "use --device cpu or --device auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise AdvarenaError(f"unknown device '{name}'; use auto, cpu or cuda") from None


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def generator_on(device: torch.device, seed: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen
