#!/usr/bin/env bash
# Screenshots of the plug-in in a real GIMP 3 under Xvfb, for the docs: the dialog with
# its time estimate, then the session window with the picture forming, and what a
# photographer does there (NST_SHOT_AFTER).
#   tests/gimp/screenshot.sh 3.0|3.2 OUTDIR PHOTO STYLE [WEIGHTS_DIR]
# Needs root, Xvfb, xdotool and ImageMagick's import on the host (and openbox for
# NST_SHOT_WM), and a root from provision.sh. WEIGHTS_DIR holds vgg19-original.pth (real weights: real looks).
# Writes OUTDIR/dialog-gimp-V.png, OUTDIR/run-window-gimp-V.png and the timings
# the plug-in printed (OUTDIR/timings-gimp-V.txt). NST_SHOT_DETAIL (auto, working, full)
# and NST_SHOT_MAX_SIZE (0: automatic) preset the dialog; NST_SHOT_RUN_WAIT is how
# long after OK the run window is taken (45 s); NST_SHOT_SELECT="x,y,w,h" selects an
# ellipse before the dialog opens; NST_SHOT_DEVICES_AT="x y" opens the Device list there
# and takes it (devices-gimp-V.png). NST_SHOT_MODE=WITH_LAST_VALS runs as
# Filters ▸ Repeat Last does (no dialog): only the run window is taken.
# NST_SHOT_CHOOSER_AT="x y" opens the style chooser there (chooser-gimp-V.png);
# NST_SHOT_HELP_AT="x y" presses Help there and takes what opens (help-gimp-V.png).
# NST_SHOT_PAINTINGS=DIR: paintings used first (recent paintings); NST_SHOT_OPEN_PAINTING=1
# opens the style image too (a layer to choose); NST_SHOT_ON_RESULT=1 opens the dialog
# on the first run's result (its recipe); NST_SHOT_CLICKS="x y,x y" clicks in the dialog
# and takes the screen after each click (click-N-gimp-V.png); NST_SHOT_BUSY=1 starts a
# command-line run through the same warm engine before OK, so that this run waits;
# NST_SHOT_KEEP_COLOURS=1 ticks Keep the photo's colours; NST_SHOT_WM=1 runs openbox;
# NST_SHOT_CANVAS_AT="x y" clicks the image window once the run window was taken.
set -euo pipefail
version=$1 out=$2 photo=$3 style=$4 weights=${5:-}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(bash "$here/provision.sh" "$version")
work=$(mktemp -d "$root/tmp/nst-shot-XXXX")
inside=/${work#"$root"/}
display=:$((90 + RANDOM % 9))
mkdir -p -m 1777 /tmp/.X11-unix  # Xvfb makes it too, but the bind mount below may come first
Xvfb "$display" -screen 0 1600x1000x24 -nolisten tcp >/dev/null 2>&1 & xvfb=$!
wm=""  # NST_SHOT_WM=1: a window manager (openbox), for what stacks windows (transience)
if [ "${NST_SHOT_WM:-}" = 1 ]; then sleep 1; DISPLAY=$display openbox >/dev/null 2>&1 & wm=$!; fi
cleanup() {
  pkill -f "gimp-$version --no-splash" 2>/dev/null || true
  pkill -f "$inside/busy.png" 2>/dev/null || true
  pkill -f "$inside/venv/bin/python -m nst_engine" 2>/dev/null || true  # the warm engine too
  [ -z "$wm" ] || kill "$wm" 2>/dev/null || true
  kill "$xvfb" 2>/dev/null || true
  sleep 1
  umount "$root/tmp/.X11-unix" "$root/proc" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mount -t proc proc "$root/proc"
mkdir -p "$root/tmp/.X11-unix" && mount --bind /tmp/.X11-unix "$root/tmp/.X11-unix"
mkdir -p "$work/src" && (cd "$here/../.." && git ls-files -z | xargs -0 cp --parents -t "$work/src")
cp "$photo" "$work/photo.${photo##*.}" && cp "$style" "$work/style.${style##*.}"
mkdir -p "$work/data" "$work/paintings"
[ -n "${NST_SHOT_PAINTINGS:-}" ] && cp "$NST_SHOT_PAINTINGS"/* "$work/paintings/"
weights_env=NST_WEIGHTS=random
if [ -n "$weights" ]; then cp "$weights/vgg19-original.pth" "$work/data/"; weights_env=NST_WEIGHTS=original; fi
run() { chroot "$root" env -i PATH=/usr/bin:/bin HOME="$inside" LANG=C.UTF-8 \
  NST_DATA_DIR="$inside/data" "$weights_env" NST_PLUGIN_TIMINGS=1 "$@"; }
# NST_SHOT_FIRST=1: the dialog before any run, estimated by the installer's speed test.
speed_test=--no-speed-test
[ "${NST_SHOT_FIRST:-}" = 1 ] && speed_test=""
run bash "$inside/src/install.sh" --python /usr/bin/python3 --venv "$inside/venv" \
  --no-weights ${speed_test} --gimp-profile "$inside/profile" >/dev/null
cat > "$work/shots.py" <<PY
from gi.repository import Gimp, Gio
image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path("$inside/photo.${photo##*.}"))
Gimp.Display.new(image)
proc = Gimp.get_pdb().lookup_procedure("python-fu-neural-style-transfer")

def call(mode, **settings):
    cfg = proc.create_config()
    cfg.set_property("run-mode", mode)
    cfg.set_property("image", image)
    cfg.set_core_object_array("drawables", image.get_selected_layers())
    cfg.set_property("style-file", Gio.File.new_for_path("$inside/style.${style##*.}"))
    for key, value in settings.items():
        cfg.set_property(key, value)
    return proc.run(cfg)

# A first, short run measures this computer's speed for the dialog's estimate.
if "${NST_SHOT_FIRST:-}" != "1":
    call(Gimp.RunMode.NONINTERACTIVE, iterations=40, **{"max-size": 256})
# NST_SHOT_PAINTINGS=DIR: a short run with each painting there first (the dialog then
# offers them as recent paintings); their results are removed again.
import glob
for painting in sorted(glob.glob("$inside/paintings/*")):
    cfg_painting = Gio.File.new_for_path(painting)
    cfg = proc.create_config()
    for key, value in {"run-mode": Gimp.RunMode.NONINTERACTIVE, "image": image,
                       "style-file": cfg_painting, "iterations": 2, "max-size": 64}.items():
        cfg.set_property(key, value)
    cfg.set_core_object_array("drawables", image.get_layers()[-1:])
    proc.run(cfg)
    image.remove_layer(image.get_layers()[0])
if "${NST_SHOT_OPEN_PAINTING:-}" == "1":  # the painting open too: a layer to choose
    Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path("$inside/style.${style##*.}"))
open("$inside/calibrated", "w").close()
if "${NST_SHOT_ON_RESULT:-}" == "1":  # the dialog on the first run's result: its recipe
    image.set_selected_layers(image.get_layers()[:1])
if "${NST_SHOT_SELECT:-}":  # "x,y,w,h": an ellipse the dialog then names
    image.select_ellipse(Gimp.ChannelOps.REPLACE, *map(int, "${NST_SHOT_SELECT:-}".split(",")))
layers_before = [layer.get_name() for layer in image.get_layers()]
call(Gimp.RunMode.${NST_SHOT_MODE:-INTERACTIVE}, detail="${NST_SHOT_DETAIL:-auto}",
     **{"max-size": ${NST_SHOT_MAX_SIZE:-0},
        "preserve-colors": "${NST_SHOT_KEEP_COLOURS:-}" == "1"})
with open("$inside/layers.txt", "w") as handle:
    handle.write("before: %s\nafter: %s\n" % (layers_before,
                                            [layer.get_name() for layer in image.get_layers()]))
PY
run DISPLAY="$display" GIMP3_DIRECTORY="$inside/profile" timeout 900 "gimp-$version" \
  --no-splash --batch-interpreter=python-fu-eval \
  -b "exec(open('$inside/shots.py').read())" >"$work/gimp.log" 2>&1 & gimp=$!
for _ in $(seq 600); do [ -e "$work/calibrated" ] && break; sleep 1; done
mkdir -p "$out"
if [ "${NST_SHOT_MODE:-INTERACTIVE}" = INTERACTIVE ]; then
  dialog=""
  for _ in $(seq 60); do
    dialog=$(DISPLAY=$display xdotool search --name "^Neural Style Transfer$" 2>/dev/null | head -1) || true
    [ -n "$dialog" ] && break; sleep 1
  done
  [ -n "$dialog" ] || { echo "no dialog appeared" >&2; cat "$work/gimp.log" >&2; exit 1; }
  sleep 3
  import -display "$display" -window root "$out/dialog-gimp-$version.png"
  # No window manager under Xvfb: focus the dialog by hand, then press its default button.
  DISPLAY=$display xdotool windowfocus --sync "$dialog" || true
  if [ -n "${NST_SHOT_DEVICES_AT:-}" ]; then  # "x y": where the Device list is; opened
    DISPLAY=$display xdotool mousemove ${NST_SHOT_DEVICES_AT} click 1
    sleep 2
    import -display "$display" -window root "$out/devices-gimp-$version.png"
    DISPLAY=$display xdotool click 1  # the current entry lies over the list: it closes
    sleep 1
    DISPLAY=$display xdotool windowfocus --sync "$dialog" || true
  fi
  if [ -n "${NST_SHOT_CHOOSER_AT:-}" ]; then  # "x y": the style chooser; its dialog taken
    DISPLAY=$display xdotool mousemove ${NST_SHOT_CHOOSER_AT} click 1
    sleep 3
    import -display "$display" -window root "$out/chooser-gimp-$version.png"
    chooser=$(DISPLAY=$display xdotool search --onlyvisible --name "^(Style image|Select a File)" 2>/dev/null | tail -1) || true
    if [ -n "$chooser" ]; then
      DISPLAY=$display xdotool windowfocus --sync "$chooser" key --clearmodifiers Escape || true
    fi
    sleep 1
    DISPLAY=$display xdotool windowfocus --sync "$dialog" || true
  fi
  IFS=, read -ra clicks <<< "${NST_SHOT_CLICKS:-}"  # "x y,x y": each clicked and taken
  for index in "${!clicks[@]}"; do
    DISPLAY=$display xdotool mousemove ${clicks[$index]} click 1
    sleep 3
    import -display "$display" -window root "$out/click-$((index + 1))-gimp-$version.png"
  done
  if [ -n "${NST_SHOT_HELP_AT:-}" ]; then  # "x y": the Help button; what it opens taken
    DISPLAY=$display xdotool mousemove ${NST_SHOT_HELP_AT} click 1
    sleep "${NST_SHOT_HELP_WAIT:-8}"
    import -display "$display" -window root "$out/help-gimp-$version.png"
    DISPLAY=$display xdotool windowfocus --sync "$dialog" || true
  fi
  if [ "${NST_SHOT_BUSY:-}" = 1 ]; then  # another picture painting first: this run queues
    run "$inside/venv/bin/python" -m nst_engine stylize "$inside/photo.${photo##*.}" \
      "$inside/style.${style##*.}" --iterations 400 --no-converge -o "$inside/busy.png" \
      >"$work/busy.log" 2>&1 &
    sleep 5
  fi
  DISPLAY=$display xdotool key --clearmodifiers Return
fi
sleep "${NST_SHOT_RUN_WAIT:-45}"
import -display "$display" -window root "$out/run-window-gimp-$version.png"
# NST_SHOT_AFTER="click X Y;ctrl X Y;wait S;shot NAME;focus TITLE;key KEYS;move X Y
# TITLE;…": what a
# photographer does in the session window then, one step after another (shot:
# NAME-gimp-V.png; focus, move: the window whose title matches; key: xdotool's keys).
# The image's layers once the plug-in has returned: layers-gimp-V.txt.
IFS=';' read -ra steps <<< "${NST_SHOT_AFTER:-}"
for step in "${steps[@]}"; do
  read -ra words <<< "$step"
  case "${words[0]:-}" in
    click) DISPLAY=$display xdotool mousemove "${words[1]}" "${words[2]}" click 1; sleep 1 ;;
    ctrl) DISPLAY=$display xdotool mousemove "${words[1]}" "${words[2]}" keydown ctrl \
            click 1 keyup ctrl; sleep 1 ;;
    wait) sleep "${words[1]}" ;;
    focus) window=$(DISPLAY=$display xdotool search --onlyvisible --name "${words[*]:1}" \
             2>/dev/null | head -1)
           [ -z "$window" ] || DISPLAY=$display xdotool windowfocus --sync "$window" || true ;;
    key) DISPLAY=$display xdotool key --clearmodifiers "${words[1]}"; sleep 1 ;;
    move) window=$(DISPLAY=$display xdotool search --onlyvisible --name "${words[*]:3}" \
            2>/dev/null | head -1)
          [ -z "$window" ] || DISPLAY=$display xdotool windowmove "$window" "${words[1]}" \
            "${words[2]}" || true ;;
    shot) import -display "$display" -window root "$out/${words[1]}-gimp-$version.png" ;;
  esac
done
if [ -n "${NST_SHOT_CANVAS_AT:-}" ]; then  # "x y": a click on the image window meanwhile
  DISPLAY=$display xdotool mousemove ${NST_SHOT_CANVAS_AT} click 1
  sleep 3
  import -display "$display" -window root "$out/after-canvas-click-gimp-$version.png"
fi
grep -h "nst-timings" "$work/gimp.log" > "$out/timings-gimp-$version.txt" || true
cp "$work/gimp.log" "$out/gimp-$version.log"
[ ! -f "$work/layers.txt" ] || cp "$work/layers.txt" "$out/layers-gimp-$version.txt"
echo "$out"
