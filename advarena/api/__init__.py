"""The contracts plugins are written against."""

from .architecture import Architecture
from .attack import Attack, ThreatModel
from .data import Dataset, DatasetInfo, Splits, TensorData
from .defense import Composite, Defense
from .model import Model
from .protocol import Protocol
from .records import EXPORT_KEYS, Measurement

# Plugins declare the API version they were written for; the major number must match.
API_VERSION = "1"

__all__ = ["API_VERSION", "Architecture", "Attack", "Composite", "Dataset", "DatasetInfo",
           "Defense", "EXPORT_KEYS", "Measurement", "Model", "Protocol", "Splits", "TensorData",
           "ThreatModel"]
