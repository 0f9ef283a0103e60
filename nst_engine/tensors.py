"""Pictures as the network's tensors and back: ``1×3×H×W`` float32 on the run's device."""

from __future__ import annotations

import numpy as np
import torch

from .pictures import as_tensor


def to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    return tensor.contiguous().to(device)


def photo_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """The full-size photo the scales are resized from. On the CPU a view of the layer
    as received (no 300 MB copy of a 24-megapixel layer before the first step; what
    is resized or run through the network from it is the same to the bit), on a GPU
    a copy there."""
    view = as_tensor(rgb).permute(2, 0, 1)[None]
    return view if device.type == "cpu" else view.contiguous().to(device)


def to_array(image: torch.Tensor) -> np.ndarray:
    """``H×W×3`` float32 in [0, 1], contiguous (made so by torch: several threads)."""
    return image[0].detach().float().clamp(0, 1).permute(1, 2, 0).contiguous().cpu().numpy()
