"""What the run window shows (``nst_run_state``, no GTK): the engine's events and the
photographer's clicks turned into its texts and buttons; the plug-in's strings through
its own text domain; the arguments as GIMP declares them."""

import os
import struct
import subprocess
import sys
from pathlib import Path

import nst_arguments
import nst_client
from nst_run_state import RunState

from nst_contract.knobs import KNOBS
from nst_contract.wire import encode

PLUGIN = Path(__file__).resolve().parent.parent / "gimp_plugin" / "neural-style-transfer"
REPO = PLUGIN.parent.parent


def progress(step, total=40, *, scale=1, scales=3, detail=False, tile=1, tiles=1,
             width=128, height=96, eta=75.0):
    event = {"event": "progress", "step": step, "total": total, "fraction": step / total,
             "eta_s": eta, "scale": scale, "scales": scales, "detail": detail, "tile": tile,
             "tiles": tiles, "width": width, "height": height}
    return nst_client.parse_event(encode(event)[:-1])


def test_a_run_from_start_to_result():
    state = RunState("this computer")
    assert state.waiting == "Starting the engine…"
    assert not state.keep_enabled and state.cancel_enabled  # nothing to keep yet
    state.on_event({"event": "queued", "ahead": 3})
    assert state.waiting == "Waiting for the engine: 3 pictures are ahead of this one"
    state.on_event({"event": "queued", "ahead": 1})  # the queue moved
    assert state.waiting == "Waiting for the engine: another picture is being painted"
    assert state.progress_text == "Neural style transfer: waiting, 1 picture ahead"
    state.on_event({"event": "started", "device": "cpu", "precision": "bf16", "width": 1080,
                    "height": 720, "max_size": 512})
    assert state.waiting == "Working out the style…"
    assert state.status == ("1080×720 px, worked out at up to 512 px on the processor of "
                            "this computer (fast bf16 arithmetic)")
    state.on_event(progress(3, scale=2, tiles=4, tile=2))
    assert (state.step, state.scale, state.remaining) == (
        "3 of 40", "2 of 3 (128×96, tile 2 of 4)", "at most 1 min 15 s")
    assert state.keep_enabled and state.fraction == 3 / 40
    assert state.progress_text == "Neural style transfer: step 3 of 40"
    state.picture_shown()
    assert state.waiting is None
    state.tick(3725, engine_silent=False)
    assert state.elapsed == "1 h 02 min"
    state.on_event({"event": "result"})
    assert state.status == "Adding the layer…"


def test_the_remaining_time_is_what_runs_here_took_not_the_step_cap():
    """A photographer saw "at most 2 h 00 min" for a run that ended by itself after
    12 min: with runs measured here, the remaining time is an estimate (the top scale
    stopping where runs at its size stopped) and says so, the cap beside it."""
    started = {"event": "started", "device": "cpu", "precision": "fp32", "width": 1080,
               "height": 720, "max_size": 128, "scales": [[64, 48, 10, 1], [128, 96, 20, 1]]}
    calibration = {"device": "cpu", "precision": "fp32", "top_fractions": {"128": 0.5}}
    state = RunState("this computer", calibration)
    state.on_event(started)
    state.on_event(progress(5, total=30, eta=60.0))
    # left at the cap: 5 steps of 64×48 and 20 of 128×96; typically: 5 and 10
    assert state.remaining == "about 32 s (at most 1 min 00 s)"
    state.on_event(progress(21, total=30, eta=10.0))  # past where runs here stopped
    assert state.remaining == "any moment now (at most 10 s)"
    capped = RunState("this computer", {**calibration, "top_fractions": {"128": 1.0}})
    capped.on_event(started)  # runs here went to the cap: the cap is the estimate
    capped.on_event(progress(5, total=30, eta=60.0))
    assert capped.remaining == "about 1 min 00 s"
    for other in ({**calibration, "device": "cuda"}, {**calibration, "top_fractions": {}},
                  None):  # measured elsewhere, at another size, or not at all
        state = RunState("this computer", other)
        state.on_event(started)
        state.on_event(progress(5, total=30, eta=60.0))
        assert state.remaining == "at most 1 min 00 s"


def test_keep_during_the_refinement_says_which_picture_is_kept():
    state = RunState("gpu-box")
    state.on_event({"event": "started", "device": "cuda", "precision": "fp32", "width": 6000,
                    "height": 4000, "max_size": 1024})
    assert state.status.endswith("on the GPU of gpu-box")
    state.on_event(progress(30, detail=True, tile=2, tiles=6))
    assert state.scale == "full size, tile 2 of 6"
    state.keep()
    assert state.status == "Keeping the picture as it was before the full-size pass…"
    assert not state.keep_enabled and not state.cancel_enabled
    state.on_event(progress(31, detail=True, tile=2, tiles=6))
    assert not state.keep_enabled  # pressed once is enough


def test_keep_at_a_working_scale_and_cancel():
    state = RunState("this computer")
    state.on_event(progress(5))
    state.keep()
    assert state.status == "Finishing: enlarging the picture to the layer's size…"
    cancelled = RunState("this computer")
    cancelled.on_event(progress(1))
    cancelled.cancel()
    assert cancelled.cancelled and cancelled.status == "Cancelling…"
    cancelled.on_event(progress(2))  # steps still arriving before the engine stops
    assert not cancelled.keep_enabled and not cancelled.cancel_enabled


def test_a_silent_engine_is_said_once_and_stays_said():
    state = RunState("this computer")
    state.tick(40, engine_silent=True)
    assert state.status == "The engine stopped answering."
    state.tick(41, engine_silent=False)
    assert state.status == "The engine stopped answering."


def test_each_argument_is_its_knob_with_the_dialogs_label():
    declared = nst_arguments.arguments()
    assert [a.knob for a in declared] == list(nst_arguments.ARGUMENT_KNOBS)
    detail = next(a for a in declared if a.knob == "detail")
    assert [nick for nick, _ in detail.choices] == list(KNOBS["detail"]["choices"])
    assert dict(detail.choices)["full"] == "Refine at full size (sharp at 100 %)"
    size = next(a for a in declared if a.knob == "max_size")
    assert (size.name, size.default, size.kind) == ("max-size", 0, int)  # 0: automatic
    assert (size.minimum, size.maximum) == (KNOBS["max_size"]["min"], KNOBS["max_size"]["max"])


def write_catalogue(path: Path, translations: dict[str, str]) -> None:
    """A GNU gettext ``.mo`` file (the format msgfmt writes)."""
    items = sorted(translations.items())
    ids = b"".join(k.encode() + b"\0" for k, _ in items)
    strs = b"".join(v.encode() + b"\0" for _, v in items)
    start = 7 * 4 + 16 * len(items)
    offsets, position = [], 0
    for key, _ in items:
        offsets += [len(key.encode()), start + position]
        position += len(key.encode()) + 1
    value_offsets, position = [], 0
    for _, value in items:
        value_offsets += [len(value.encode()), start + len(ids) + position]
        position += len(value.encode()) + 1
    header = struct.pack("<7I", 0x950412DE, 0, len(items), 7 * 4, 7 * 4 + 8 * len(items),
                         0, 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(header + struct.pack(f"<{len(offsets)}I", *offsets)
                     + struct.pack(f"<{len(value_offsets)}I", *value_offsets) + ids + strs)


def test_a_catalogue_in_the_plugins_locale_folder_translates_it(tmp_path):
    """The text domain is real: a German catalogue beside the plug-in is used, values
    move within the translated sentence, and English stays without one."""
    catalogue = PLUGIN / "locale" / "de" / "LC_MESSAGES" / "nst-gimp.mo"
    assert not catalogue.exists()
    copy = tmp_path / "plugin"
    copy.mkdir()
    for module in PLUGIN.glob("nst_*.py"):
        (copy / module.name).write_bytes(module.read_bytes())
    write_catalogue(copy / "locale" / "de" / "LC_MESSAGES" / "nst-gimp.mo",
                    {"{minutes} min {seconds:02d} s": "{minutes} Min. {seconds:02d} s",
                     "processor": "Prozessor"})
    script = ("import nst_messages as m\nprint(m.format_eta(75), '|', m.device_name('cpu'))")
    env = {**os.environ, "PYTHONPATH": f"{copy}{os.pathsep}{REPO}"}
    for language, expected in (("de", "1 Min. 15 s | Prozessor"),
                               ("C", "1 min 15 s | processor")):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env={**env, "LANGUAGE": language, "LC_ALL": "C"}, timeout=60)
        assert done.stdout.strip() == expected, done.stderr


def test_a_result_is_named_for_the_painting_and_the_strength():
    from nst_messages import result_name

    assert result_name("mosaic", {"style_strength": 0.5}) == "mosaic (strength 0.5)"
    assert result_name("udnie", {"style_strength": 0.75, "preserve_colors": True}) == \
        "udnie (strength 0.75, photo's colours)"
