#!/usr/bin/env bash
# Build an image on a machine with no registry and no GPU, then run it with no network: /health
# answers, a short job on a tiny checkpoint (mounted as the checkpoints volume) writes audio into
# the mounted outputs folder, and the model is freed afterwards.
#
#   sudo bash docker/smoke.sh              the t4 image (lego; freed after every job)
#   sudo bash docker/smoke.sh spark        the spark image for linux/arm64, under qemu emulation
#                                          (needs qemu-user-static; UI + API, text2music, a tiny LM)
#
# Root: it starts dockerd and debootstraps a Debian 12 base when they are missing. What differs
# from a real build: that base (instead of nvidia/cuda), and a CPU torch (the local wheel store's
# on x86_64, PyPI's aarch64 build for arm64) instead of the CUDA 12.8 one. The Dockerfile,
# constraints (torch aside), entrypoint and env file are the real ones.
# Results go to $SMOKE_OUT (default test-artifacts/docker-smoke-TARGET/).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${1:-t4}
VENV=${VENV:-.venv}
case "$TARGET" in
    t4) arch=amd64 task=lego torch=${SMOKE_TORCH_VERSION:-2.13.0} ;;
    spark) arch=arm64 task=text2music torch=${SMOKE_TORCH_VERSION:-2.9.1} ;;
    *) echo "usage: smoke.sh [t4|spark]" >&2; exit 2 ;;
esac
dit=turbo
[[ "$TARGET" == t4 ]] && dit=base
BASE=${SMOKE_BASE_IMAGE:-acestep-local/debian:bookworm-$arch}
IMAGE=acestep:$TARGET-smoke
OUT=${SMOKE_OUT:-test-artifacts/docker-smoke-$TARGET}
NAME=acestep-smoke-$$
KEY=smoke-key
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
log() { echo "[smoke $(date +%H:%M:%S)] $*"; }

# 1. A Docker engine (Debian's docker.io; started here when it is not running).
if ! docker info > /dev/null 2>&1; then
    command -v dockerd > /dev/null || apt-get install -y -q docker.io > /dev/null
    log "starting dockerd"
    (dockerd > "$OUT/dockerd.log" 2>&1 &)
    for _ in $(seq 60); do docker info > /dev/null 2>&1 && break; sleep 1; done
    docker info > /dev/null
fi

# 2. A local base image: no registry is reachable. arm64 runs through qemu's binfmt handler (the
#    engine here labels imported images with its own architecture, so no --platform is passed;
#    the smoke checks `uname -m` in the container instead).
if [[ "$arch" == arm64 && ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
    apt-get install -y -q qemu-user-static binfmt-support > /dev/null
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64
fi
if ! docker image inspect "$BASE" > /dev/null 2>&1; then
    command -v debootstrap > /dev/null || apt-get install -y -q debootstrap > /dev/null
    rootfs=$(mktemp -d)
    log "debootstrap Debian 12 ($arch) into $rootfs"
    debootstrap --arch="$arch" --variant=minbase --include=ca-certificates bookworm "$rootfs" \
        http://deb.debian.org/debian > "$OUT/debootstrap.log"
    tar -C "$rootfs" -c . | docker import - "$BASE" > /dev/null
    rm -rf "$rootfs"
fi

# 3. A CPU torch in place of the CUDA build: the local store's wheel on x86_64; on arm64, PyPI's
#    torch is a CPU build already. This machine reaches PyPI through a TLS-inspecting proxy, whose
#    CAs go into the build (docker/certs/).
cleanup() {
    rm -f docker/wheels/*.whl docker/wheels/smoke-constraints.txt docker/certs/*.crt
    docker rm -f "$NAME" > /dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup
cp /usr/local/share/ca-certificates/*.crt docker/certs/ 2> /dev/null || true
if [[ "$arch" == amd64 ]]; then
    "$VENV/bin/python" -m pip download -q --no-deps --dest docker/wheels "torch==$torch"
fi
sed "s/^torch==.*/torch==$torch/" "docker/constraints/$TARGET.txt" > docker/wheels/smoke-constraints.txt

# 4. Build (the network only for Debian's and PyPI's packages).
log "docker build ($TARGET, linux/$arch, base $BASE, CPU torch $torch)"
started=$(date +%s)
docker build --network host -f docker/Dockerfile -t "$IMAGE" \
    --build-arg BASE_IMAGE="$BASE" --build-arg TARGET="$TARGET" --build-arg TORCH_INDEX_URL= \
    --build-arg CONSTRAINTS=docker/wheels/smoke-constraints.txt . > "$OUT/build.log" 2>&1 \
    || { tail -n 40 "$OUT/build.log"; exit 1; }
build_seconds=$(( $(date +%s) - started ))
image_bytes=$(docker image inspect -f '{{.Size}}' "$IMAGE")
log "built in ${build_seconds} s, $(( image_bytes / 1000000 )) MB"

# 5. Volumes: a tiny checkpoint (and, for the LM targets, a tiny LM under the env file's LM name)
#    as checkpoints/, an empty outputs/, all owned by the image's uid.
data=$(mktemp -d)
"$VENV/bin/python" - "$data/checkpoints" "$dit" "$TARGET" <<'PY'
import sys

from acestep.testing import make_tiny_checkpoint, make_tiny_lm

root, variant, target = sys.argv[1:]
make_tiny_checkpoint(root, layout="upstream", variant=variant)
if target != "t4":
    make_tiny_lm(f"{root}/acestep-5Hz-lm-4B")
PY
mkdir -p "$data/outputs" "$data/cache"
chown -R 1000:1000 "$data"

# 6. Run with no network; the target's settings come from the image, only the device is the CPU.
# Under qemu, torch's aarch64 kernels crash on the emulator's default CPU model ("max": its SVE
# paths raise SIGILL); a Cortex-A72 model keeps them on NEON. Real arm64 hardware needs nothing.
emulation=()
[[ "$arch" == arm64 && "$(uname -m)" != aarch64 ]] && emulation=(-e QEMU_CPU=cortex-a72)
docker run -d --name "$NAME" --network none "${emulation[@]}" \
    -e ACESTEP_DEVICE=cpu -e ACESTEP_API_KEY="$KEY" \
    -v "$data/checkpoints:/app/checkpoints" -v "$data/outputs:/app/outputs" -v "$data/cache:/app/cache" \
    "$IMAGE" > /dev/null
check=(--key "$KEY" --task "$task" --seconds 10 --health-timeout 1200)
[[ "$TARGET" == t4 ]] && check+=(--expect-free-after-job)
started=$(date +%s)
if ! docker exec -i "$NAME" python - "${check[@]}" < docker/check_job.py > "$OUT/summary.json"; then
    docker logs "$NAME" > "$OUT/server.log" 2>&1
    tail -n 40 "$OUT/server.log"
    exit 1
fi
job_wall=$(( $(date +%s) - started ))
for _ in $(seq 120); do
    health=$(docker inspect -f '{{.State.Health.Status}}' "$NAME")
    [[ "$health" == "healthy" ]] && break
    sleep 1
done
docker logs "$NAME" > "$OUT/server.log" 2>&1
uid=$(docker exec "$NAME" id -u)
machine=$(docker exec "$NAME" uname -m)
ui_page=$(docker exec "$NAME" curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:7860/ || true)
outputs=$(find "$data/outputs" -type f -name '*.wav' | wc -l)
rm -rf "$data"

# 7. What must hold.
"$VENV/bin/python" - "$OUT/summary.json" "$TARGET" "$health" "$uid" "$outputs" "$machine" "$ui_page" <<'PY'
import json
import sys

summary = json.load(open(sys.argv[1]))
target, health, uid, outputs, machine, ui_page = sys.argv[2:]
assert summary["health"]["status"] == "ok", summary["health"]
assert summary["memory_after_unload"]["worker"]["pid"] is None, summary["memory_after_unload"]["worker"]
assert health == "healthy", f"docker health status: {health}"
assert uid == "1000", f"the server runs as uid {uid}"
assert int(outputs) >= 1, "no .wav in the mounted outputs folder"
if target == "t4":
    assert len(summary["job"]["urls"]) == 1, summary["job"]
    assert summary["memory_after_job"]["worker"]["pid"] is None, summary["memory_after_job"]["worker"]
    assert ui_page == "000", "the t4 image serves no UI"
else:
    assert summary["job"]["items"][0]["status"] == 1, summary["job"]
    assert summary["health"]["llm_initialized"], summary["health"]
    assert machine == "aarch64", machine
    assert ui_page == "200", f"the UI answered {ui_page}"
PY
log "ok: health, $task job, freed, outputs in the volume, healthy, uid 1000, $machine"
"$VENV/bin/python" - "$OUT/summary.json" "$build_seconds" "$image_bytes" "$job_wall" <<'PY' | tee "$OUT/result.json"
import json
import sys

summary = json.load(open(sys.argv[1]))
reports = summary.get("memory_after_job", summary["memory_after_unload"])["last_reports"]
print(json.dumps({
    "build_seconds": int(sys.argv[2]),
    "image_mb": round(int(sys.argv[3]) / 1e6),
    "first_job_wall_seconds_incl_start": int(sys.argv[4]),
    "job_seconds": summary["job_seconds"],
    "reports": [{k: r[k] for k in ("action", "seconds", "note")} for r in reports],
}, indent=1))
PY
