"""Neural style transfer (Gatys et al., VGG19) for GIMP and the command line."""

from .errors import EngineError
from .images import Picture, load_picture, save_picture
from .transfer import Progress, Settings, StyleTransfer

__all__ = [
    "EngineError", "Picture", "Progress", "Settings", "StyleTransfer",
    "load_picture", "save_picture",
]
__version__ = "0.1.0"
