"""A plain reference implementation of the seed's method, for the benchmark only.

Single scale, L-BFGS with strong-Wolfe line search, Gatys's layers, the objective
of docs/losses.md written out directly, no engine code. Its one concession to
practice: L-BFGS restarts when a step makes no progress (see ``stylize``); without
it, torch's L-BFGS stops improving after a handful of steps on this objective.
"""

from __future__ import annotations

import time

import torch
from torchvision.models.vgg import cfgs, make_layers

MEAN_BGR = torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
CONTENT, STYLE = 22, (1, 6, 11, 20, 29)  # relu4_2; relu1_1 … relu5_1 in vgg19.features


def vgg(state: dict) -> torch.nn.Sequential:
    net = make_layers(cfgs["E"])
    net.load_state_dict(state)
    return net[:30].eval().requires_grad_(False)


def normalize(rgb):
    """RGB in [0, 1] to the original VGG19's input: BGR, 0-255, mean pixel subtracted."""
    return rgb.flip(1) * 255 - MEAN_BGR


def activations(net, rgb):
    x = normalize(rgb)
    out = {}
    for index, layer in enumerate(net):
        x = layer(x)
        out[index] = x
    return out


def gram(f):
    _, c, h, w = f.shape
    f = f.reshape(c, h * w)
    return f @ f.T / (h * w)


def stylize(state: dict, content: torch.Tensor, style: torch.Tensor, steps: int,
            beta: float = 10.0) -> tuple[torch.Tensor, float]:
    """Runs ``steps`` L-BFGS iterations; returns the image (clamped for display) and
    the wall time in seconds."""
    net = vgg(state)
    with torch.no_grad():
        target = activations(net, content)[CONTENT]
        style_acts = activations(net, style)
        grams = {i: gram(style_acts[i]) for i in STYLE}
    image = content.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([image], lr=1, max_iter=20, history_size=50,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        acts = activations(net, image)
        loss = (acts[CONTENT] - target).pow(2).sum() / target.pow(2).sum()
        style_loss = sum((gram(acts[i]) - grams[i]).pow(2).sum() / grams[i].pow(2).sum()
                         for i in STYLE) / len(STYLE)
        loss = loss + beta * style_loss
        loss.backward()
        return loss

    start, done, previous = time.perf_counter(), 0, float("inf")
    while done < steps:
        optimizer.param_groups[0]["max_iter"] = min(20, steps - done)
        before = optimizer.state[image].get("n_iter", 0)
        loss = optimizer.step(closure).item()  # the loss when the call began
        done += optimizer.state[image]["n_iter"] - before
        if loss >= previous:
            # torch's L-BFGS stalls for good once its line search fails (it returns a
            # zero step and repeats the same direction): restart its memory.
            optimizer.state.clear()
        previous = loss
    return image.detach().clamp(0, 1), time.perf_counter() - start
