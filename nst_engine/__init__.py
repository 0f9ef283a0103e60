"""Neural style transfer (Gatys et al., VGG19) for GIMP and the command line."""

from .errors import EngineError
from .images import Picture, load_picture, save_picture
from .settings import Settings
from .transfer import Control, Iterate, Result, StyleTransfer

__all__ = [
    "Control", "EngineError", "Iterate", "Picture", "Result", "Settings", "StyleTransfer",
    "load_picture", "save_picture",
]
__version__ = "0.2.0"
