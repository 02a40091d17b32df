#!/usr/bin/env bash
# Build the Docker image with rootful Podman, run it, and check that it behaves
# as the README says. Run it after every change to the Dockerfile,
# requirements.txt, gunicorn.conf.py or wsgi.py:
#
#   bash scripts/check-container.sh [--cache] [--keep-image] [--rebuild-base]
#   bash scripts/check-container.sh --print-mirror
#
#   --cache         reuse the layers of an earlier run (quick rebuilds while you
#                   iterate; the build time printed is then not a full build's)
#   --keep-image    leave localhost/clip-service:check behind (several GB)
#   --rebuild-base  rebuild the local python:3.11-slim stand-in
#   --print-mirror  print the Debian mirror the stand-in would be built from, and
#                   stop (needs neither root nor Podman)
#
# It needs root, a Debian host, the package registries, and a Python that can
# import open_clip (.venv/bin/python when there is one, else python3; or set
# PYTHON=...). First it sets up, idempotently, what it needs: Debian's podman,
# runc and debootstrap; a containers.conf drop-in; a local stand-in for
# python:3.11-slim (Docker Hub is out of reach here), bootstrapped from the
# Debian mirror this host's apt already uses (or DEBIAN_MIRROR=...). Then it builds the image
# with this machine's pip configuration (its local torch wheels) and a
# fixed-seed random ViT-B-32 baked in (no model hub here either), starts it and
# checks: /health answers 200 within 60 s; /health/ready answers 200;
# /embed/text returns one 512-d unit vector; every process runs as a non-root
# uid; Gunicorn is PID 1; and `podman stop -t 10` makes it exit 0 within 10 s.
# It prints the build time and the image size, and stops at the first failure
# with a "FAIL:" line (exit 1).

# debian_mirror SUITE [APT_DIR]: the first archive apt's sources (APT_DIR, by
# default /etc/apt) take SUITE's packages from, in apt's own reading order:
# sources.list, then sources.list.d/ by name, one-line *.list and deb822
# *.sources alike. An archive for SUITE itself, so neither the security
# archive (SUITE-security) nor another vendor's repository is taken for it.
debian_mirror() {
  local suite=$1 dir=${2:-/etc/apt} files=() file
  [ -f "$dir/sources.list" ] && files+=("$dir/sources.list")
  for file in "$dir"/sources.list.d/*; do
    case "$file" in *.list | *.sources) [ -f "$file" ] && files+=("$file") ;; esac
  done
  [ "${#files[@]}" -gt 0 ] || return 1
  awk -v suite="$suite" '
    function has(list, word,   n, i, items) {
      n = split(list, items, /[ \t]+/)
      for (i = 1; i <= n; i++) if (items[i] == word) return 1
      return 0
    }
    function take(uris,   n, i, items) {  # the first http(s) or file address, without a trailing slash
      n = split(uris, items, /[ \t]+/)
      for (i = 1; i <= n; i++) if (items[i] ~ /^(https?|file):/) { sub(/\/+$/, "", items[i]); print items[i]; found = 1; exit }
    }
    function stanza() {  # a deb822 paragraph, once it has ended
      if (has(fields["types"], "deb") && tolower(fields["enabled"]) != "no" && has(fields["suites"], suite))
        take(fields["uris"])
      split("", fields); last = ""
    }
    FNR == 1 { if (deb822) stanza(); deb822 = FILENAME ~ /\.sources$/ }
    deb822 && /^[ \t]*#/ { next }
    deb822 && /^[ \t]*$/ { stanza(); next }
    deb822 && /^[ \t]/ { if (last != "") fields[last] = fields[last] " " $0; next }  # a continued field
    deb822 {
      name = tolower(substr($0, 1, index($0, ":") - 1)); value = substr($0, index($0, ":") + 1)
      gsub(/^[ \t]+|[ \t]+$/, "", value)
      fields[name] = value; last = name; next
    }
    {  # one-line style: deb [options] URI SUITE COMPONENT...
      sub(/#.*/, ""); if ($1 != "deb") next
      i = 2
      if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
      if ($(i + 1) == suite) take($i)
    }
    END { if (deb822 && !found) stanza(); exit !found }
  ' "${files[@]}"
}

# Sourced (to try debian_mirror on other sources): the function only.
[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0

set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=localhost/clip-service:check
CONTAINER=clip-service-check
BASE=docker.io/library/python:3.11-slim
SUITE=bookworm  # python:3.11-slim's Debian
MINBASE=localhost/clip-service-minbase:$SUITE
CONF=/etc/containers/containers.conf.d/50-clip-service.conf
CHECKPOINT=weights/vit-b-32-random-seed0.pt
# The project's virtualenv when there is one (README's set-up), else python3.
if [[ -z "${PYTHON:-}" && -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; fi
PYTHON=${PYTHON:-python3}

cache=false keep_image=false rebuild_base=false print_mirror=false
for arg in "$@"; do
  case "$arg" in
    --cache) cache=true ;;
    --keep-image) keep_image=true ;;
    --rebuild-base) rebuild_base=true ;;
    --print-mirror) print_mirror=true ;;
    *) echo "usage: $0 [--cache] [--keep-image] [--rebuild-base] | --print-mirror" >&2; exit 2 ;;
  esac
done

# The mirror the stand-in is bootstrapped from: DEBIAN_MIRROR, else the one apt uses here.
mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then printf '%s\n' "$DEBIAN_MIRROR"; return; fi
  debian_mirror "$SUITE" || {
    echo "FAIL: no Debian archive for $SUITE in /etc/apt/sources.list or /etc/apt/sources.list.d/; set DEBIAN_MIRROR=..." >&2
    return 1
  }
}
if [ "$print_mirror" = true ]; then mirror; exit; fi

say() { printf '%s\n' "$*"; }
ok() { printf 'ok    %s\n' "$*"; }
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  if podman container exists "$CONTAINER" 2>/dev/null; then
    echo "--- last lines of the container's log ---" >&2
    podman logs --tail 30 "$CONTAINER" >&2 || true
  fi
  exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

work=$(mktemp -d)
cleanup() {
  podman rm -f -i "$CONTAINER" >/dev/null 2>&1 || true
  rm -f "$CHECKPOINT"
  if [ "$keep_image" = false ] && [ "$cache" = false ]; then
    podman rmi -f -i "$IMAGE" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || fail "run as root: the check uses rootful Podman"
"$PYTHON" -c 'import open_clip, torch' 2>/dev/null \
  || fail "$PYTHON cannot import open_clip and torch: activate the project's virtualenv or set PYTHON=..."

say "== set-up"

# Debian's packages. crun (Podman's default runtime) rejects this host's hybrid
# cgroup layout, so runc is installed and named in the drop-in below.
missing=()
for pkg in podman runc debootstrap curl; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
ok "packages: $(podman --version), $(runc --version | head -1)"

# Containers' default limits may not exceed the caller's hard limits: raising
# them needs a capability these machines lack, and runc then refuses to start
# anything ("error setting rlimits").
nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=1048576
[ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
mkdir -p "$(dirname "$CONF")"
cat > "$work/containers.conf" <<EOF
# Written by clip-service's scripts/check-container.sh.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
cmp -s "$work/containers.conf" "$CONF" || cp "$work/containers.conf" "$CONF"
ok "containers.conf: $CONF (runc, cgroupfs, nofile=$nofile, nproc=$nproc)"

# A local stand-in for python:3.11-slim: Debian's minimal root file system with
# python3, and a virtualenv over /usr/local so `python` and `pip` sit where the
# real image has them. Tagged with the real name, so the Dockerfile's FROM stays
# as it is and --pull=never fetches nothing. It trusts this machine's extra CA
# certificates (this network intercepts TLS).
if [ "$rebuild_base" = true ] || ! podman image exists "$BASE"; then
  if [ "$rebuild_base" = true ] || ! podman image exists "$MINBASE"; then
    debian=$(mirror) || exit 1
    say "debootstrap --variant=minbase $SUITE from $debian (about a minute)"
    debootstrap --variant=minbase "$SUITE" "$work/rootfs" "$debian" > "$work/debootstrap.log" 2>&1 \
      || { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap failed"; }
    tar -C "$work/rootfs" -c . | podman import - "$MINBASE" >/dev/null 2>&1 || fail "podman import failed"
    rm -rf "$work/rootfs"
  fi
  mkdir -p "$work/base/certs"
  find /usr/local/share/ca-certificates -name '*.crt' -exec cp {} "$work/base/certs/" \; 2>/dev/null || true
  cat > "$work/base/Containerfile" <<EOF
FROM $MINBASE
ENV LANG=C.UTF-8
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      python3 python3-venv ca-certificates && rm -rf /var/lib/apt/lists/*
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
RUN python3 -m venv /usr/local
LABEL org.opencontainers.image.description="clip-service's local stand-in for python:3.11-slim"
CMD ["python3"]
EOF
  podman build --pull=never --layers=false -t "$BASE" "$work/base" > "$work/base.log" 2>&1 \
    || { tail -20 "$work/base.log" >&2; fail "building the python:3.11-slim stand-in failed"; }
fi
ok "base image: $BASE ($(podman run --rm --pull=never "$BASE" python -V 2>&1), $(podman image inspect --format \
  '{{index .Labels "org.opencontainers.image.description"}}' "$BASE" | grep -q stand-in && echo local stand-in || echo as pulled))"

say "== build"

# The checkpoint the image bakes in: a fixed-seed random ViT-B-32 (the real
# architecture and size), made as tests/conftest.py's write_random_checkpoint does.
"$PYTHON" - "$CHECKPOINT" <<'EOF'
import logging
import sys

import open_clip
import torch

logging.disable(logging.WARNING)  # open_clip's "initialized randomly" is the point here
torch.manual_seed(0)
torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), sys.argv[1])
EOF
ok "checkpoint: $CHECKPOINT ($(du -h "$CHECKPOINT" | cut -f1), seed 0)"

# The build uses this machine's pip configuration: the settings that say where
# packages come from go into one pip.conf, mounted over /etc/pip.conf for the
# build's RUN steps only, and every local path they name is mounted read-only
# at the same place. TORCH_INDEX_URL is the index pip uses here, whose
# extra indexes (local folders) hold torch 2.14.1.
mounts=()
while IFS= read -r mount; do mounts+=(-v "$mount"); done < <("$PYTHON" - "$work/pip.conf" <<'EOF'
import ast
import os
import subprocess
import sys

WHERE = ("index-url", "extra-index-url", "find-links", "constraint", "trusted-host", "timeout", "default-timeout")
listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                        check=True).stdout
files, env = {}, {}
for line in listed.splitlines():
    name, _, value = line.partition("=")
    section, _, key = name.rpartition(".")
    if key in WHERE:
        # Environment variables (":env:") win over files, as they do for pip.
        (env if section == ":env:" else files)[key] = ast.literal_eval(value)
settings = {**files, **env}
with open(sys.argv[1], "w") as conf:
    conf.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
print(f"{sys.argv[1]}:/etc/pip.conf:ro")
paths = set()
for key in ("index-url", "extra-index-url", "find-links", "constraint"):
    for item in settings.get(key, "").split():
        path = item.removeprefix("file://")
        if path.startswith("/") and os.path.exists(path):
            # A local simple index's pages link outside it (to ../../files here).
            paths.add(os.path.dirname(path.rstrip("/")) if path.rstrip("/").endswith("/simple") else path)
print("\n".join(f"{p}:{p}:ro" for p in sorted(paths)))
EOF
)
[ -s "$work/pip.conf" ] || fail "could not read this machine's pip configuration (pip config list)"
index_url=$(sed -n 's/^index-url = //p' "$work/pip.conf")
# None configured: pip's own default index, asked of pip rather than written here.
[ -n "$index_url" ] || index_url=$("$PYTHON" -c 'from pip._internal.models.index import PyPI; print(PyPI.simple_url)')
say "pip configuration for the build:"; sed 's/^/      /' "$work/pip.conf"
say "build-time mounts: ${mounts[*]}"

layers=(--layers=false --no-cache)
[ "$cache" = true ] && layers=(--layers=true)
build_log="${TMPDIR:-/tmp}/clip-service-check-build.log"
say "podman build (full log: $build_log)"
started=$(now)
podman build --pull=never "${layers[@]}" -t "$IMAGE" \
  --build-arg TORCH_INDEX_URL="$index_url" \
  --build-arg CLIP_PRETRAINED="$CHECKPOINT" \
  "${mounts[@]}" . 2>&1 | tee "$build_log" | grep -E --line-buffered '^(STEP [0-9]+/|COMMIT|Successfully tagged)' \
  || { tail -30 "$build_log" >&2; fail "podman build failed"; }
build_seconds=$(since "$started")
torch_wheel=$(grep -m1 -oE '(Processing|Downloading) [^ ]*torch-2[^ ]*\.whl' "$build_log" || echo "?")
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
ok "build time: ${build_seconds} s$([ "$cache" = true ] && echo ' (layers from earlier runs reused)')"
ok "image size: $(awk -v b="$size" 'BEGIN { printf "%.2f GB (%.2f GiB)", b / 1e9, b / 2^30 }')"
ok "torch from: $torch_wheel"

say "== run"

port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
podman rm -f -i "$CONTAINER" >/dev/null
started=$(now)
podman run -d --pull=never --name "$CONTAINER" -p "127.0.0.1:$port:8080" "$IMAGE" >/dev/null \
  || fail "podman run failed"

# /health within 60 s of the start (the weights load from the image's disk).
code=000
while awk -v s="$(since "$started")" 'BEGIN { exit !(s < 60) }'; do
  [ "$(podman inspect --format '{{.State.Running}}' "$CONTAINER")" = true ] \
    || fail "the container exited during start-up (status $(podman inspect --format '{{.State.ExitCode}}' "$CONTAINER"))"
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/health" || true)
  [ "$code" = 200 ] && break
  sleep 0.5
done
[ "$code" = 200 ] || fail "/health did not answer 200 within 60 s (last: $code)"
ok "/health: 200 after $(since "$started") s"

code=$(curl -s -o "$work/ready.json" -w '%{http_code}' --max-time 30 "$url/health/ready" || true)
[ "$code" = 200 ] || fail "/health/ready answered $code: $(cat "$work/ready.json" 2>/dev/null)"
ok "/health/ready: 200 $(cat "$work/ready.json")"

code=$(curl -s -o "$work/embed.json" -w '%{http_code}' --max-time 30 -H 'Content-Type: application/json' \
  -d '{"texts": ["a photo of a cat"]}' "$url/embed/text" || true)
[ "$code" = 200 ] || fail "/embed/text answered $code: $(head -c 300 "$work/embed.json" 2>/dev/null)"
verdict=$("$PYTHON" - "$work/embed.json" <<'EOF'
import json
import math
import sys

body = json.load(open(sys.argv[1]))
vectors = body["embeddings"]
norm = math.sqrt(sum(x * x for x in vectors[0])) if vectors else 0.0
good = len(vectors) == 1 and len(vectors[0]) == 512 and abs(norm - 1) < 1e-4
print(("ok" if good else "bad"), f"{len(vectors)} vector(s), {len(vectors[0]) if vectors else 0} dimensions,",
      f"norm {norm:.6f}, model {body.get('model')} / {body.get('pretrained')}")
EOF
)
[ "${verdict%% *}" = ok ] || fail "/embed/text: ${verdict#* } (want 1 vector of 512 dimensions, norm 1)"
ok "/embed/text: 200, ${verdict#ok }"

# Every process of the container, as the kernel sees it (the exec'd shell included).
uids=$(podman exec "$CONTAINER" sh -c 'for s in /proc/[0-9]*/status; do awk "/^Uid:/ { print \$2 }" "$s"; done' \
  | sort -u | tr '\n' ' ')
[ -n "$uids" ] && ! grep -qw 0 <<<"$uids" || fail "a process runs as root (uids: $uids)"
ok "uids of the processes: $uids(image user: $(podman image inspect --format '{{.Config.User}}' "$IMAGE"))"

pid1=$(podman exec "$CONTAINER" sh -c 'cat /proc/1/comm; tr "\0" " " < /proc/1/cmdline')
[ "$(head -1 <<<"$pid1")" = gunicorn ] || fail "PID 1 is not Gunicorn: $pid1"
ok "PID 1: $(tail -1 <<<"$pid1")"

say "== stop"
started=$(now)
podman stop -t 10 "$CONTAINER" >/dev/null
stop_seconds=$(since "$started")
status=$(podman inspect --format '{{.State.ExitCode}}' "$CONTAINER")
podman logs --tail 4 "$CONTAINER" 2>&1 | sed 's/^/      log: /'
[ "$status" = 0 ] || fail "exit status $status after podman stop -t 10 (137 means SIGKILL: SIGTERM was not handled in time)"
awk -v s="$stop_seconds" 'BEGIN { exit !(s < 10) }' || fail "stopping took ${stop_seconds} s (limit 10 s)"
ok "podman stop -t 10: exit status 0 after ${stop_seconds} s (SIGTERM handled)"

say "== all checks passed (build ${build_seconds} s, image $(awk -v b="$size" 'BEGIN { printf "%.2f GB", b / 1e9 }'))"
