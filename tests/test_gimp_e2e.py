"""End-to-end: the real plug-in in a real, headless GIMP 3.0 and 3.2, with the real engine.

The engine runs with random weights (``NST_WEIGHTS=random``), tiny sizes and a few
steps. Where no GIMP 3 can be found or provisioned these tests skip, except when
``NST_REQUIRE_GIMP=1`` (set by ``.ci/run``), where a would-be skip fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from gimp_env import Gimp, GimpUnavailable
from PIL import Image
from sshd import SSHServer, SSHUnavailable

pytestmark = pytest.mark.gimp

SCENARIOS = ["registration", "basic", "deep", "float", "gray", "selection", "missing_style",
             "bad_style", "group", "two_layers", "killed", "kept_early", "refined",
             "linear_wide_gamut", "series", "style_from_layer", "recipe", "batch_of_three"]
SCENARIO_FUNCS = {"float": "deep_float_levels", "group": "in_group"}


@pytest.fixture(scope="module", params=["3.0", "3.2"])
def results(request):
    gimp = Gimp(request.param)
    try:
        gimp.setup()
    except GimpUnavailable as why:
        if os.environ.get("NST_REQUIRE_GIMP") == "1":
            pytest.fail(f"GIMP {request.param} is required here (NST_REQUIRE_GIMP=1): {why}")
        pytest.skip(f"GIMP {request.param} not available: {why}")
    try:
        style = gimp.scratch / "style-painting.png"
        Image.effect_mandelbrot((80, 64), (-2, -1.2, 1, 1.2), 60).convert("RGB").save(style)
        script = (gimp.host_path(gimp.inside(gimp.scratch / "src"))
                  / "tests/gimp/scenarios.py").read_text()
        names = ",".join(SCENARIO_FUNCS.get(n, n) for n in SCENARIOS)
        marker = gimp.scratch / "marker"
        watcher = Watcher(gimp, marker)
        watcher.start()
        done = gimp.batch(script, {"NST_E2E_STYLE": gimp.inside(style),
                                   "NST_E2E_SCENARIOS": names,
                                   "NST_E2E_MARKER": gimp.inside(marker)})
        watcher.stop()
        remote = over_ssh(gimp, script, style)
        parsed = {}
        for match in re.finditer(r"^NST-RESULT (\S+) (.*)$", done.stdout + remote["log"],
                                 re.MULTILINE):
            parsed[match.group(1)] = json.loads(match.group(2))
        leftovers = [p.name for p in (gimp.host_path("/tmp")).glob("nst-gimp-*")]
        pluginrc = gimp.profile / "pluginrc"  # what GIMP recorded of the plug-ins it queried
        yield {"runs": parsed, "log": done.stdout + remote["log"], "rc": done.returncode,
               "version": request.param, "leftovers": leftovers, "gimp": gimp,
               "pluginrc": pluginrc.read_text(errors="replace") if pluginrc.exists() else "",
               "watched": {**watcher.seen, **remote["watched"]}}
    finally:
        gimp.teardown()


def over_ssh(gimp, script: str, style: Path) -> dict:
    """The plug-in in GIMP's root reaching the engine on 'another machine' (this host's
    venv) through a real sshd on 127.0.0.1: a run, and a connection dropped mid-run."""
    folder = gimp.scratch / "ssh"  # inside the root: the plug-in's ssh reads the keys
    folder.mkdir()
    runtime = Path(tempfile.mkdtemp(prefix="nst-remote-run-"))
    try:
        server = SSHServer(folder, {"NST_WEIGHTS": "random", "NST_SERVICE_IDLE_S": "5",
                                    "XDG_RUNTIME_DIR": str(runtime)})
    except SSHUnavailable as why:
        if os.environ.get("CI"):
            pytest.fail(f"an sshd is required in CI: {why}")
        return {"log": f"no sshd: {why}", "watched": {}}
    profile = gimp.scratch / "profile-remote"
    shutil.copytree(gimp.profile, profile)
    config = profile / "plug-ins" / "neural-style-transfer" / "nst-engine.json"
    settings = json.loads(config.read_text())
    settings["remote"] = {"host": server.host, "python": sys.executable}
    config.write_text(json.dumps(settings))
    options = (f"-p {server.port} -i {gimp.inside(folder / 'user')} -o IdentitiesOnly=yes "
               f"-o UserKnownHostsFile={gimp.inside(folder / 'known_hosts')} "
               "-o StrictHostKeyChecking=yes")
    marker = gimp.scratch / "marker"
    marker.write_text("")
    marker.with_name("marker.measured").unlink(missing_ok=True)
    watcher = Watcher(gimp, marker, server, runtime)
    watcher.start()
    try:
        done = gimp.batch(script, {"NST_E2E_STYLE": gimp.inside(style),
                                   "NST_E2E_SCENARIOS": "over_ssh,ssh_dropped",
                                   "NST_E2E_MARKER": gimp.inside(marker),
                                   "GIMP3_DIRECTORY": gimp.inside(profile),
                                   "NST_SSH_OPTIONS": options})
    finally:
        watcher.stop()
        server.stop()
        shutil.rmtree(runtime, ignore_errors=True)
    return {"log": done.stdout, "watched": watcher.seen}


class Watcher(threading.Thread):
    """Acts on the marked runs (the scenario names the one on in a marker file): kills
    the plug-in of a 'kill-me' run (as GIMP's progress-bar cancel does), or sends
    SIGUSR1 (Keep this result) to the plug-in of a 'keep-me' run, once the engine has
    worked for a while; records how long the engine kept working on the killed run."""

    def __init__(self, gimp, marker: Path, server=None, remote_runtime=None):
        super().__init__(daemon=True)
        self.gimp, self.marker = gimp, marker
        self.server, self.remote_runtime = server, remote_runtime
        self.done = threading.Event()
        self.seen = {}

    def run(self):
        first_seen = {}
        while not self.done.wait(0.2):
            try:
                marker = self.marker.read_text().strip()
            except OSError:
                continue
            if marker in self.seen:
                continue
            if marker == "drop-me":
                self.drop_connection(first_seen)
                continue
            for pid, parent in self.gimp.engines(b"connect").items():
                first_seen.setdefault(pid, time.monotonic())
                if time.monotonic() - first_seen[pid] < 8:  # a few steps in
                    continue
                if marker == "keep-me":
                    os.kill(parent, signal.SIGUSR1)
                    self.seen[marker] = {"signalled": True}
                    break
                services = list(self.gimp.engines(b"serve"))
                os.kill(parent, signal.SIGKILL)
                self.seen[marker] = {"engine_worked_s": self.working(pid, services)}
                self.marker.with_name("marker.measured").write_text("")
                break

    def drop_connection(self, first_seen: dict) -> None:
        """Once the run over SSH has worked a while, the server side of the connection
        ends abruptly (as when the network goes); records how long the engine on the
        far side kept working."""
        if not self.gimp.processes(b"ssh"):
            return
        first_seen.setdefault("ssh", time.monotonic())
        if time.monotonic() - first_seen["ssh"] < 8:
            return
        services = remote_services(self.remote_runtime)
        self.server.drop_connections()
        self.seen["drop-me"] = {"engine_worked_s": self.working(-1, services)}
        self.marker.with_name("marker.measured").write_text("")

    @staticmethod
    def working(relay: int, services: list[int]) -> float:
        """Seconds until the relay has gone and the services stopped using the CPU."""
        killed = time.monotonic()
        while time.monotonic() - killed < 30:
            time.sleep(1.0)
            busy = [pid for pid in services if cpu_share(pid, 0.5) > 0.2]
            if not busy and not alive(relay):
                return time.monotonic() - killed
        return 30.0

    def stop(self):
        self.done.set()
        self.join(timeout=5)


def remote_services(runtime: Path) -> list[int]:
    """The engine services started over SSH: host processes with that runtime folder."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if b"serve" in args and f"XDG_RUNTIME_DIR={runtime}".encode() in environ:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cpu_share(pid: int, seconds: float) -> float:
    """The share of a CPU the process used over ``seconds`` (0 when it has gone)."""
    def ticks():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    try:
        before = ticks()
        time.sleep(seconds)
        return (ticks() - before) / os.sysconf("SC_CLK_TCK") / seconds
    except OSError:
        return 0.0


def get(results, name):
    if name not in results["runs"]:
        pytest.fail(f"scenario {name} gave no result (GIMP rc {results['rc']}):\n"
                    f"{results['log'][-4000:]}")
    return results["runs"][name]


def test_procedure_is_registered_in_the_filters_menu(results):
    run = get(results, "registration")
    assert run["gimp"].startswith(results["version"])
    assert run["menu_paths"] == ["<Image>/Filters/Artistic"]
    assert run["label"] == "_Neural Style Transfer..."
    assert run["image_types"] == "RGB*, GRAY*"
    # style-layer came last, so scripts that pass the others by position keep working
    assert run["arguments"][-9:] == ["style-file", "style-strength", "iterations", "max-size",
                                     "preserve-colors", "seed", "detail", "device",
                                     "style-layer"]


def test_help_opens_the_plugins_own_page(results):
    """The dialog's Help button asks GIMP for the procedure's help id in the plug-in's
    help domain; GIMP's help system reads the domain's gimp-help.xml for the page
    (seen opening in GIMP 3.2.6 under Xvfb, README)."""
    found = re.search(r'\(help-def "nst-gimp" "file://([^"]+)"\)', results["pluginrc"])
    assert found, f"no help domain registered:\n{results['pluginrc'][-2000:]}"
    folder = results["gimp"].host_path(found.group(1))
    mapping = (folder / "en" / "gimp-help.xml").read_text()
    page = re.search(r'id="python-fu-neural-style-transfer" ref="([^"]+)"', mapping).group(1)
    assert "Neural Style Transfer" in (folder / "en" / page).read_text()


def test_the_arguments_are_the_engines_knobs(results):
    """Declared in GIMP from the shared knobs (nst_contract.knobs): each argument's
    name, default, range, choices and help are its knob's, in the plug-in's order."""
    import nst_arguments

    from nst_contract.knobs import KNOBS

    declared = get(results, "registration")["defaults"]
    names = [nst_arguments.argument_name(knob) for knob in nst_arguments.ARGUMENT_KNOBS]
    assert get(results, "registration")["arguments"][-len(names) - 1:-1] == names
    for knob, name in zip(nst_arguments.ARGUMENT_KNOBS, names):
        spec, meta = declared[name], KNOBS[knob]
        assert spec["default"] == nst_arguments.argument_default(knob), name
        assert spec["help"].lower() == meta["help"].lower(), name
        assert spec["label"] == nst_arguments.LABELS[knob], name  # untranslated: English
        if meta["kind"] in (int, float) and not meta["choices"]:
            assert (spec["min"], spec["max"]) == (meta["min"], meta["max"]), name
        assert spec.get("choices") == (list(meta["choices"]) if meta["choices"] else None), \
            name


def test_new_layer_above_source_with_offsets_alpha_and_name(results):
    run = get(results, "basic")
    assert run["status"] == "success", run["message"]
    assert run["stack"] == ["above", "style-painting (strength 0.5)", "photo"]
    new, source = run["new"], run["source"]
    assert (new["width"], new["height"], new["x"], new["y"]) == (60, 44, 5, 7)
    assert new["has_alpha"] and not new["has_mask"]
    assert run["source_unchanged"]
    assert run["alpha_equal"], "the alpha channel must come back exactly"
    assert run["changed"] > 0.01, "the new layer should differ from the photo"
    assert source["name"] == "photo"


def test_a_series_of_results_stacks_newest_on_top_and_leaves_the_photo_active(results):
    run = get(results, "series")
    assert [status for status, _ in run["outcomes"]] == ["success", "success"], run
    assert run["stack"] == ["above", "style-painting (strength 0.8, photo's colours)",
                            "style-painting (strength 0.3)", "photo"]
    assert run["selected"] == [["photo"], ["photo"]]
    recipe = run["recipe"]
    assert recipe["format"] == 2 and recipe["source"] == run["photo_tattoo"]
    assert recipe["style"]["name"] == "style-painting.png" and run["persistent"]
    assert recipe["settings"]["style_strength"] == 0.8
    assert recipe["settings"]["preserve_colors"] is True


def test_gimps_batch_tools_can_run_the_filter_over_several_images(results):
    """Three images in one gimp-console session, non-interactively, through the warm
    engine: each gets its result layer and nothing else (the result is added in one
    undo group on its own image), the photo unchanged and still the active layer."""
    run = get(results, "batch_of_three")
    assert [status for status, _ in run["outcomes"]] == ["success"] * 3, run
    for index, image in enumerate(run["images"]):
        assert image["stack"] == ["style-painting (strength 0.7)", "photo"], image
        assert image["size"] == [64 + 8 * index, 48]
        assert image["photo_unchanged"] and image["selected"] == ["photo"]
        assert image["dirty"]  # the result is an undo step of that image
    assert run["bystander"] == {"stack": ["photo"], "dirty": False}
    # one warm engine painted all three (the service outlives each run)
    assert len(run["services"][0]) == 1 and run["services"] == [run["services"][0]] * 3


def test_a_results_recipe_survives_the_xcf_and_paints_its_photo_again(results):
    """docs/recipe.md: every field on the result; after an .xcf save and load, a run
    from it takes its painting and settings and paints the photo, not the result."""
    import nst_recipe

    run = get(results, "recipe")
    assert run["outcomes"] == ["success", "success"], run
    saved = run["saved"]
    assert saved["format"] == nst_recipe.FORMAT and saved["source_name"] == "photo"
    style = saved["style"]
    assert style["name"] == "style-painting.png" and len(style["sha256"]) == 64
    assert style["file"].endswith("/style-painting.png")
    assert run["thumbnail_png"] == "89504e470d0a1a0a"  # a PNG
    assert saved["settings"]["seed"] == 7 and saved["settings"]["style_strength"] == 0.3
    assert saved["engine"]["version"] and saved["engine"]["device"] == "cpu"
    assert saved["engine"]["weights"] == "random"
    assert run["targets"] == ["photo"] and run["style_file"] == style["file"]
    assert run["taken"] == {"style-strength": 0.3, "seed": 7, "max-size": 64, "iterations": 3}
    assert "OK paints “photo”" in run["note"] and "not found" not in run["note"]
    assert run["stack"] == ["style-painting (strength 0.5)", "style-painting (strength 0.3)",
                            "photo"]


def test_the_painting_can_be_a_layer_of_another_open_image(results):
    run = get(results, "style_from_layer")
    assert run["outcomes"] == [["success", ""], ["success", ""]]
    assert run["largest_difference"] < 1e-5  # the file's pixels and the layer's: the same
    # Named for the painting's file and the layer; GIMP 3.0 gives an image a script
    # loaded no file at all (checked: get_file() and get_imported_file() are None even
    # after an .xcf save), so there the layer's name alone.
    painting = "style-painting – open painting" if results["version"] != "3.0" \
        else "open painting"
    assert run["stack"] == [f"{painting} (strength 0.5)", "photo"]
    assert run["painting_layers"] == 2  # the painting's image is left as it was


def test_refinement_at_full_size_keeps_offsets_alpha_and_16_bits(results):
    run = get(results, "refined")
    assert run["status"] == "success", run["message"]
    new = run["new"]
    assert (new["width"], new["height"], new["x"], new["y"]) == (150, 110, 9, 4)
    assert new["has_alpha"] and run["alpha_equal"]
    assert run["levels"] > 256
    assert run["differs"] > 0, "Detail 'full' must refine beyond the enlargement"


def test_16_bit_image_keeps_more_than_256_levels(results):
    run = get(results, "deep")
    assert run["status"] == "success", run["message"]
    assert run["levels"] > 256


def test_float_image_keeps_more_than_256_levels(results):
    run = get(results, "float")
    assert run["status"] == "success", run["message"]
    assert run["levels"] > 256


def test_linear_light_wide_gamut_layer_keeps_its_colours(results):
    """32-bit linear light in Adobe RGB, Preserve colours: the result differs from the
    photo by a luma shift only, read the way the plug-in reads it (a linear/perceptual
    or colour-space mix-up showed a spread of 0.26 here)."""
    run = get(results, "linear_wide_gamut")
    assert run["status"] == "success", run["message"]
    assert run["precision"] == "float-linear" and run["alpha_equal"]
    assert run["checked"] > run["pixels"] // 4 and run["moved"] > 0.01
    assert run["spread"] < 1e-4


def test_grayscale_layer(results):
    run = get(results, "gray")
    assert run["status"] == "success", run["message"]
    assert run["new"]["gray"] and not run["new"]["has_alpha"]
    assert len(run["stack"]) == 2


def test_selection_limits_the_area_and_adds_a_mask(results):
    run = get(results, "selection")
    assert run["status"] == "success", run["message"]
    new = run["new"]
    assert new["has_mask"]
    assert (new["x"], new["y"], new["width"], new["height"]) == (10, 8, 40, 30)


def test_missing_style_file_is_an_error_and_changes_nothing(results):
    run = get(results, "missing_style")
    # GIMP 3 itself refuses a missing file for an "open" file argument (calling error);
    # the plug-in's own check ("does not exist") covers files deleted in between.
    assert run["status"] in ("calling-error", "execution-error"), run["message"]
    assert "style-file" in run["message"] or "does not exist" in run["message"]
    assert run["layers"] == 1 and run["source_unchanged"]


def test_unreadable_style_reports_the_engine_message(results):
    run = get(results, "bad_style")
    assert run["status"] == "execution-error"
    assert "broken.jpg" in run["message"]
    assert run["layers"] == ["photo"] and run["channels"] == 0 and not run["dirty"]


def test_killed_plugin_leaves_the_image_and_undo_as_they_were(results):
    """GIMP's progress-bar cancel kills the plug-in process: nothing may survive."""
    run = get(results, "killed")
    assert results["watched"].get("kill-me"), "the watcher never saw the run"
    assert run["status"] != "success"
    assert run["layers"] == ["photo"] and run["channels"] == 0 and not run["dirty"]
    assert run["source_unchanged"]
    # the engine stops working on the killed plug-in's run within 10 s
    assert results["watched"]["kill-me"]["engine_worked_s"] < 10


def test_keep_this_result_early_adds_exactly_one_layer(results):
    run = get(results, "kept_early")
    assert results["watched"].get("keep-me"), f"the watcher never saw the run: {run}"
    assert run["status"] == "success", run["message"]
    assert run["layers"] == ["keep-me-style (strength 0.5)", "photo"]
    assert run["channels"] == 0


def test_layer_inside_a_group(results):
    run = get(results, "group")
    assert run["status"] == "success", run["message"]
    assert run["top"] == ["group", "photo"]
    assert run["children"] == ["style-painting (strength 0.5)", "inner"]
    assert (run["new"]["x"], run["new"]["y"]) == (3, 4)


def test_several_layers_selected_is_refused(results):
    run = get(results, "two_layers")
    assert run["status"] == "execution-error"
    assert "exactly one layer" in run["message"]
    assert run["layers"] == 2


def test_no_temporary_folders_left(results):
    assert results["leftovers"] == []


def test_a_run_over_ssh_adds_the_layer(results):
    run = get(results, "over_ssh")
    assert run["status"] == "success", run["message"]
    assert run["layers"] == ["style-painting (strength 0.5)", "photo"]
    assert run["channels"] == 0


def test_a_dropped_ssh_connection_is_a_clear_message_and_cancels_there(results):
    run = get(results, "ssh_dropped")
    assert results["watched"].get("drop-me"), f"the watcher never dropped it: {run}"
    assert run["status"] == "execution-error"
    assert "connection" in run["message"] and "127.0.0.1" in run["message"]
    assert run["layers"] == ["photo"] and run["channels"] == 0 and not run["dirty"]
    assert results["watched"]["drop-me"]["engine_worked_s"] < 10
