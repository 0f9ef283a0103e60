"""Big working sizes run in overlapping tiles against the global style targets."""

import numpy as np
import pytest
import torch
from conftest import real_weights_dir

from nst_contract.plan import tile_grid, tile_overlap
from nst_engine import EngineError, Settings, StyleTransfer, load_picture
from nst_engine.blending import blend_ramp
from nst_engine.pictures import Picture
from nst_engine.tensors import to_tensor


def test_tile_grid_covers_with_overlap():
    tiles = tile_grid(512, 384, 288, 48)
    assert len(tiles) == 4
    covered = np.zeros((384, 512), bool)
    for x0, y0, x1, y1 in tiles:
        assert x1 - x0 <= 288 and y1 - y0 <= 288
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert tiles[1][0] < tiles[0][2] - 40  # neighbours overlap by at least the blend width
    assert tile_grid(100, 80, 288, 48) == [(0, 0, 100, 80)]


def test_blend_ramp_rises_only_towards_earlier_tiles():
    tiles = [(0, 0, 140, 200), (100, 0, 300, 200)]  # 40 px of overlap, one row
    ramp = blend_ramp(tiles[1], tiles, torch.device("cpu"))[0, 0]
    assert ramp[:, 0].max() < 0.05 and ramp[:, 40].min() == 1 and ramp[0, 199] == 1
    assert torch.all(ramp[:, 1:40] > ramp[:, :39])
    assert torch.all(ramp[0] == ramp[199])  # nothing above it: no ramp down the rows


def test_blend_ramp_follows_each_axis_overlap_of_the_grid():
    tiles = tile_grid(700, 400, 300, 48)
    for tile in tiles:
        x0, y0, x1, y1 = tile
        ramp = blend_ramp(tile, tiles, torch.device("cpu"))[0, 0]
        left = max((t[2] - x0 for t in tiles if t[0] < x0 < t[2]), default=0)
        top = max((t[3] - y0 for t in tiles if t[1] < y0 < t[3]), default=0)
        # rises over exactly the overlap with the tiles before it, on each axis
        assert (ramp[-1] < 1).sum().item() == left
        assert (ramp[:, -1] < 1).sum().item() == top
        assert left >= 48 or x0 == 0
        assert top >= 48 or y0 == 0


def test_the_smallest_tile_is_the_budgets_edge():
    """A budget that leaves the work just room for MIN_TILE_SIDE² pixels plans tiles of
    that side; one byte per pixel less is out of memory, with what to raise."""
    from nst_contract.plan import BYTES_PER_PIXEL, MIN_TILE_SIDE, PHOTO_BYTES_PER_PIXEL
    from nst_engine.devices import CPU_FIXED_BYTES

    side = 512
    photo = PHOTO_BYTES_PER_PIXEL * side * side
    edge = CPU_FIXED_BYTES + photo + BYTES_PER_PIXEL * MIN_TILE_SIDE ** 2

    def plan(budget_bytes):
        settings = Settings(max_size=side, memory_budget=budget_bytes / 1e9, device="cpu")
        return StyleTransfer(settings).plan(side, side)

    top = plan(edge + 1)[-1]  # a little over: float rounding of the GB figure
    assert top.tiles and max(x1 - x0 for x0, _, x1, _ in top.tiles) == MIN_TILE_SIDE
    with pytest.raises(EngineError) as info:
        plan(edge - MIN_TILE_SIDE ** 2)
    assert info.value.kind == "out_of_memory" and "--memory-budget" in info.value.message


def test_style_grams_in_strips_match_the_whole_image():
    image = to_tensor(structured_photo(96, 448).rgb, torch.device("cpu"))
    engine = StyleTransfer(Settings(device="cpu"))
    whole = engine.targets.grams(image, 1e9)
    # 0.03 GB: strips of 256 rows (+ 64-row margins) for a 96-px-wide image
    strips = engine.targets.grams(image, 0.03e9)
    for name, gram in whole.items():
        error = ((strips[name] - gram).norm() / gram.norm()).item()
        assert error < 0.02, (name, error)


def structured_photo(width=512, height=384) -> Picture:
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rgb = np.stack([0.5 + 0.4 * np.sin(9 * x + 3 * y), 0.5 + 0.4 * np.cos(7 * y), x], axis=2)
    # Shapes whose edges stay clear of the tile borders, so border energy means seams.
    shapes = ((0.3, 0.35, 0.12, (0.9, 0.1, 0.1)), (0.75, 0.5, 0.15, (0.1, 0.2, 0.8)))
    for cx, cy, r, color in shapes:
        rgb[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = color
    return Picture(np.clip(rgb, 0, 1).astype(np.float32))


def gradient_energy(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dx = (np.diff(rgb, axis=1) ** 2).sum(axis=2)  # between columns x and x+1
    dy = (np.diff(rgb, axis=0) ** 2).sum(axis=2)
    return dx.mean(axis=0), dy.mean(axis=1)


def seam_lines(tiles) -> tuple[set[int], set[int]]:
    """Where a tiled result can show a seam: both edges of each blend band, i.e. where
    a later tile's weight starts rising and where it reaches 1 (a tile's own far
    edges lie under the next tile's full weight, so they are not in the result).
    Returned as indices into ``gradient_energy``'s differences."""
    xs, ys = set(), set()
    for x0, y0, x1, _ in tiles:
        band = tile_overlap(x1 - x0)
        xs |= {x0 - 1, x0 + band - 1} if x0 > 0 else set()
        ys |= {y0 - 1, y0 + band - 1} if y0 > 0 else set()
    return xs, ys


def test_tiled_run_has_no_seams_and_matches_the_untiled_objective(painting, monkeypatch):
    monkeypatch.setenv("NST_DATA_DIR", str(real_weights_dir()))
    monkeypatch.delenv("NST_WEIGHTS")
    photo, style = structured_photo(), load_picture(painting)
    common = {"max_size": 512, "iterations": 21, "device": "cpu", "seed": 3}
    untiled_engine = StyleTransfer(Settings(**common))
    tiled_engine = StyleTransfer(Settings(memory_budget=1.25, **common))
    top = tiled_engine.plan(512, 384)[-1]
    assert len(top.tiles) >= 4 and not untiled_engine.plan(512, 384)[-1].tiles

    untiled = untiled_engine.stylize(photo, [style]).picture
    tiled = tiled_engine.stylize(photo, [style]).picture

    content = to_tensor(photo.rgb, untiled_engine.device)
    objective = untiled_engine.targets.objective(
        content,
        untiled_engine.targets.style_grams([to_tensor(style.rgb, content.device)], 512, 1e9))

    def value(picture):
        image = to_tensor(picture.rgb, content.device)
        with torch.no_grad():
            return objective(image, untiled_engine.network.features)[0].item()

    assert value(tiled) <= 1.10 * value(untiled), (value(tiled), value(untiled))

    assert_no_seams(tiled.rgb, top.tiles)


def assert_no_seams(rgb: np.ndarray, tiles) -> None:
    """Gradient energy along the tiles' blend bands within 1.2× of elsewhere."""
    energy_x, energy_y = gradient_energy(rgb)
    seams_x, seams_y = seam_lines(tiles)
    assert seams_x and seams_y
    near_x = sorted({x + d for x in seams_x for d in (-2, -1, 0, 1, 2)
                     if 0 <= x + d < len(energy_x)})
    near_y = sorted({y + d for y in seams_y for d in (-2, -1, 0, 1, 2)
                     if 0 <= y + d < len(energy_y)})
    away_x = np.delete(energy_x, near_x).mean()
    away_y = np.delete(energy_y, near_y).mean()
    assert energy_x[near_x].mean() <= 1.2 * away_x, (energy_x[near_x].mean(), away_x)
    assert energy_y[near_y].mean() <= 1.2 * away_y, (energy_y[near_y].mean(), away_y)
