#!/usr/bin/env bash
# Verify an acestep image on a GPU host (docs/deployment.md), one step at a time:
#   1. the host driver and Docker's GPU runtime      4. /health answers
#   2. the image builds for the target               5. one short generation
#   3. only the chosen GPU is visible inside it      6. an unload gives the GPU memory back
#                                                    7. the audio is in the mounted outputs folder
#
#   bash docker/verify.sh [t4|4090|spark]            (default 4090)
#
# Settings: ACESTEP_GPU_DEVICE (host GPU index, default 0), ACESTEP_DATA_DIR (the folders to mount;
# default the repository root, a relative path is taken from there: checkpoints/ must hold the
# models or they are downloaded on first start), VERIFY_SKIP_BUILD=1 to test an image already
# built as acestep:TARGET. The t4 target keeps its keep-alive 0, and the check requires the worker
# to be gone right after the job; the others are freed by the explicit POST /unload.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${1:-4090}
GPU=${ACESTEP_GPU_DEVICE:-0}
mkdir -p "${ACESTEP_DATA_DIR:-.}"
DATA=$(cd "${ACESTEP_DATA_DIR:-.}" && pwd)
IMAGE=acestep:$TARGET
NAME=acestep-verify-$TARGET
KEY=verify-$RANDOM$RANDOM
step() { echo; echo "== $*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
trap 'docker rm -f "$NAME" > /dev/null 2>&1 || true' EXIT

case "$TARGET" in
    t4) task=lego after_job=(--expect-free-after-job) ;;
    4090 | spark) task=text2music after_job=() ;;
    *) fail "target must be t4, 4090 or spark" ;;
esac
platform=()
[[ "$TARGET" == spark ]] && platform=(--platform linux/arm64)

step "1. driver and GPU runtime"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader \
    || fail "nvidia-smi failed on the host: install the NVIDIA driver (>= 570 for CUDA 12.8)"
docker info --format '{{json .Runtimes}}' | grep -q nvidia \
    || echo "note: no 'nvidia' runtime registered; --gpus needs the NVIDIA Container Toolkit (nvidia-ctk runtime configure)"

if [[ "${VERIFY_SKIP_BUILD:-0}" != 1 ]]; then
    step "2. build $IMAGE"
    started=$(date +%s)
    docker build "${platform[@]}" -f docker/Dockerfile --build-arg TARGET="$TARGET" -t "$IMAGE" .
    echo "built in $(( $(date +%s) - started )) s, $(( $(docker image inspect -f '{{.Size}}' "$IMAGE") / 1000000 )) MB"
fi

step "3. only GPU $GPU is visible in the container"
visible=$(docker run --rm --gpus "device=$GPU" --entrypoint python "$IMAGE" -c \
    "import torch; print(torch.cuda.device_count(), torch.cuda.get_device_name(0), torch.version.cuda)") \
    || fail "no GPU in the container: the error above names the cause (docs/deployment.md, 'Failure modes')"
echo "$visible"
[[ "$visible" == 1\ * ]] || fail "expected exactly one visible GPU, got: $visible"

step "4. start and /health"
mkdir -p "$DATA"/{checkpoints,outputs,lora_output,training_data,cache}
docker run -d --name "$NAME" --gpus "device=$GPU" --env-file "docker/env/$TARGET.env" \
    -e ACESTEP_GPU_DEVICE=0 -e ACESTEP_API_KEY="$KEY" \
    --user "$(id -u):$(id -g)" \
    -v "$DATA/checkpoints:/app/checkpoints" -v "$DATA/outputs:/app/outputs" \
    -v "$DATA/lora_output:/app/lora_output" -v "$DATA/training_data:/app/training_data" \
    -v "$DATA/cache:/app/cache" -p 127.0.0.1::8001 "$IMAGE" > /dev/null
port=$(docker port "$NAME" 8001/tcp | head -n 1 | sed 's/.*://')
audio_files() { find "$DATA/outputs" -type f \( -name '*.wav' -o -name '*.flac' -o -name '*.mp3' \) | wc -l; }
before=$(audio_files)

step "5-6. one short $task job, then the memory given back (keep-alive 0 on t4, POST /unload)"
python3 docker/check_job.py --url "http://127.0.0.1:$port" --key "$KEY" --task "$task" --seconds 30 \
    --health-timeout 1800 "${after_job[@]}" > "$DATA/outputs/verify-$TARGET.json" \
    || { docker logs --tail 60 "$NAME"; fail "the job did not complete"; }
python3 - "$DATA/outputs/verify-$TARGET.json" <<'PY'
import json
import sys

s = json.load(open(sys.argv[1]))
print(f"job: {s['job_seconds']} s (including the first load)")
for report in s["memory_after_unload"]["last_reports"]:
    gib = lambda v: "n/a" if v is None else f"{v / 2**30:.2f} GiB"
    print(f"{report['action']:>7}: {report['seconds']:.2f} s, process GPU memory "
          f"{gib(report['before']['process_gpu_bytes'])} -> {gib(report['after']['process_gpu_bytes'])}")
worker = s["memory_after_unload"]["worker"]
assert worker["pid"] is None, f"the worker still holds the GPU after the unload: {worker}"
PY
echo "host view after the unload:"
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader --id="$GPU" || true

step "7. outputs in $DATA/outputs"
after=$(audio_files)
(( after > before )) || fail "no new audio file in $DATA/outputs"
echo "ok: $(( after - before )) new audio file(s); summary in $DATA/outputs/verify-$TARGET.json"
