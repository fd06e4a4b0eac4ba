"""The MiM method: masking geometry, losses, decoder and the model that ties them together."""

from .config import MiMConfig
from .geometry import Level, make_levels
from .model import MiM, build_mim

__all__ = ["Level", "MiM", "MiMConfig", "build_mim", "make_levels"]
