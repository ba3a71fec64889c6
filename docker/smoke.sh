#!/usr/bin/env bash
# Build the t4 image on a machine with no registry and no GPU, then run it with no network:
# /health answers and a lego job on a tiny checkpoint (mounted as the checkpoints volume)
# produces a stem in the mounted outputs folder, after which the model is freed.
#
#   sudo bash docker/smoke.sh            (root: it starts dockerd and debootstraps a base if needed)
#
# What differs from a real build: the base is a Debian 12 rootfs made here with debootstrap
# (instead of nvidia/cuda), and torch is the CPU wheel from the local wheel store (instead of the
# CUDA 12.8 build); everything else (Dockerfile, constraints, entrypoint, env file) is the same.
# Results go to $SMOKE_OUT (default test-artifacts/docker-smoke/): build log, server log, summary.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
BASE=${SMOKE_BASE_IMAGE:-acestep-local/debian:bookworm}
IMAGE=${SMOKE_IMAGE:-acestep:t4-smoke}
TORCH_VERSION=${SMOKE_TORCH_VERSION:-2.13.0}
OUT=${SMOKE_OUT:-test-artifacts/docker-smoke}
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

# 2. A local base image: no registry is reachable.
if ! docker image inspect "$BASE" > /dev/null 2>&1; then
    command -v debootstrap > /dev/null || apt-get install -y -q debootstrap > /dev/null
    rootfs=$(mktemp -d)
    log "debootstrap Debian 12 into $rootfs"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" http://deb.debian.org/debian \
        > "$OUT/debootstrap.log"
    tar -C "$rootfs" -c . | docker import - "$BASE" > /dev/null
    rm -rf "$rootfs"
fi

# 3. The CPU torch wheel from the local store, and the t4 constraints with that torch.
rm -f docker/wheels/*.whl docker/wheels/smoke-constraints.txt docker/certs/*.crt
# This machine reaches PyPI through a TLS-inspecting proxy: its CAs go into the build.
cp /usr/local/share/ca-certificates/*.crt docker/certs/ 2> /dev/null || true
"$VENV/bin/python" -m pip download -q --no-deps --dest docker/wheels "torch==$TORCH_VERSION"
sed "s/^torch==.*/torch==$TORCH_VERSION/" docker/constraints/t4.txt > docker/wheels/smoke-constraints.txt
trap 'rm -f docker/wheels/*.whl docker/wheels/smoke-constraints.txt docker/certs/*.crt; docker rm -f "$NAME" > /dev/null 2>&1 || true' EXIT

# 4. Build (the network only for Debian's and PyPI's packages).
log "docker build (t4, base $BASE, torch $TORCH_VERSION CPU)"
started=$(date +%s)
docker build --network host -f docker/Dockerfile -t "$IMAGE" \
    --build-arg BASE_IMAGE="$BASE" --build-arg TARGET=t4 --build-arg TORCH_INDEX_URL= \
    --build-arg CONSTRAINTS=docker/wheels/smoke-constraints.txt . > "$OUT/build.log" 2>&1 \
    || { tail -n 40 "$OUT/build.log"; exit 1; }
build_seconds=$(( $(date +%s) - started ))
image_bytes=$(docker image inspect -f '{{.Size}}' "$IMAGE")
log "built in ${build_seconds} s, $(( image_bytes / 1000000 )) MB"

# 5. Volumes: a tiny base checkpoint as checkpoints/, an empty outputs/ (owned by the image's uid).
data=$(mktemp -d)
"$VENV/bin/python" -c "import sys; from acestep.testing import make_tiny_checkpoint as m; \
m(sys.argv[1], layout='upstream', variant='base')" "$data/checkpoints"
mkdir -p "$data/outputs" "$data/cache"
chown -R 1000:1000 "$data"

# 6. Run with no network; the T4 settings come from the image, only the device is the CPU here.
docker run -d --name "$NAME" --network none \
    -e ACESTEP_DEVICE=cpu -e ACESTEP_API_KEY="$KEY" \
    -v "$data/checkpoints:/app/checkpoints" -v "$data/outputs:/app/outputs" -v "$data/cache:/app/cache" \
    "$IMAGE" > /dev/null
started=$(date +%s)
if ! docker exec -i "$NAME" python - --key "$KEY" --task lego --seconds 10 --expect-free-after-job \
        < docker/check_job.py > "$OUT/summary.json"; then
    docker logs "$NAME" > "$OUT/server.log" 2>&1
    tail -n 40 "$OUT/server.log"
    exit 1
fi
job_wall=$(( $(date +%s) - started ))
for _ in $(seq 90); do
    health=$(docker inspect -f '{{.State.Health.Status}}' "$NAME")
    [[ "$health" == "healthy" ]] && break
    sleep 1
done
docker logs "$NAME" > "$OUT/server.log" 2>&1
uid=$(docker exec "$NAME" id -u)
outputs=$(find "$data/outputs" -type f -name '*.wav' | wc -l)
rm -rf "$data"

# 7. What must hold.
"$VENV/bin/python" - "$OUT/summary.json" "$health" "$uid" "$outputs" <<'PY'
import json
import sys

summary = json.load(open(sys.argv[1]))
health, uid, outputs = sys.argv[2], sys.argv[3], int(sys.argv[4])
assert summary["health"]["status"] == "ok", summary["health"]
assert len(summary["job"]["urls"]) == 1, summary["job"]
assert summary["memory_after_job"]["worker"]["pid"] is None, summary["memory_after_job"]["worker"]
assert summary["memory_after_unload"]["worker"]["pid"] is None, summary["memory_after_unload"]["worker"]
assert health == "healthy", f"docker health status: {health}"
assert uid == "1000", f"the server runs as uid {uid}"
assert outputs >= 1, "no .wav in the mounted outputs folder"
PY
log "ok: health, lego job, freed after the job, outputs in the volume, healthy, uid 1000"
"$VENV/bin/python" - "$OUT/summary.json" "$build_seconds" "$image_bytes" "$job_wall" <<'PY' | tee "$OUT/result.json"
import json
import sys

summary = json.load(open(sys.argv[1]))
print(json.dumps({
    "build_seconds": int(sys.argv[2]),
    "image_mb": round(int(sys.argv[3]) / 1e6),
    "first_job_wall_seconds_incl_start": int(sys.argv[4]),
    "lego_job_seconds": summary["job_seconds"],
    "reports_after_the_job": [
        {k: r[k] for k in ("action", "seconds", "note")} for r in summary["memory_after_job"]["last_reports"]
    ],
}, indent=1))
PY
