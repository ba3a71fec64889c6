#!/usr/bin/env bash
# The images' entrypoint: settings, folders, models, then the server (docs/deployment.md).
#
#   (no arguments, or flags)  acestep --server-name 0.0.0.0 --port 7860 --enable-api --api-port 8001 FLAGS
#                             (ACESTEP_SERVE=api: acestep-api --host 0.0.0.0 --port 8001 FLAGS)
#   acestep-api | acestep-mcp | acestep | acestep-download ...   that command instead
#   anything else             run as given (a shell, python, ...)
#
# ACESTEP_DOWNLOAD_ON_START=false skips the first-run download of missing models.
set -euo pipefail

# The target's settings (baked into the image) fill in what docker/compose did not set.
TARGET_ENV="${ACESTEP_TARGET_ENV:-/etc/acestep/target.env}"
if [[ -f "$TARGET_ENV" ]]; then
    while IFS= read -r line || [[ -n "$line" ]]; do
        [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
        name="${line%%=*}"
        value="${line#*=}"
        [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
        if [[ -z "${!name+set}" ]]; then
            export "$name=$value"
        fi
    done < "$TARGET_ENV"
fi

root="${ACESTEP_PROJECT_ROOT:-/app}"
checkpoints="${ACESTEP_CHECKPOINTS_DIR:-$root/checkpoints}"
folders=(
    "${ACESTEP_OUTPUT_DIR:-$root/outputs}"
    "$root/lora_output" "$root/training_data"
    "${ACESTEP_TMPDIR:-$root/cache/tmp}"
    "${HF_HOME:-$root/cache/huggingface}"
    "${TRITON_CACHE_DIR:-$root/cache/triton}"
    "${TORCHINDUCTOR_CACHE_DIR:-$root/cache/torchinductor}"
    "${HOME:-$root/cache/home}"
)
for folder in "${folders[@]}"; do
    if ! mkdir -p "$folder" 2> /dev/null || [[ ! -w "$folder" ]]; then
        echo "error: $folder is not writable by uid $(id -u); on the host: sudo chown -R $(id -u):$(id -g) <the mounted folder>" >&2
        exit 1
    fi
done
# The models may be a read-only mount (a shared model store): only a download needs to write there.
mkdir -p "$checkpoints" 2> /dev/null || [[ -d "$checkpoints" ]] || {
    echo "error: $checkpoints does not exist and cannot be created" >&2
    exit 1
}

# Without an API key the server only starts when told that is safe (ACESTEP_AUTH=off). Compose
# publishes on ACESTEP_PUBLISH_HOST: when that is a loopback address nobody else can reach the
# ports, so no key is needed; published anywhere else, the server refuses to start without one.
if [[ -z "${ACESTEP_API_KEY:-}" && -z "${ACESTEP_AUTH:-}" ]]; then
    case "${ACESTEP_PUBLISH_HOST:-}" in
        127.* | localhost | ::1)
            export ACESTEP_AUTH=off
            echo "note: no ACESTEP_API_KEY; serving without authentication (published on ${ACESTEP_PUBLISH_HOST} only)" >&2
            ;;
    esac
fi
# A server without a key answers only the Host names it knows (docs/security.md); inside the
# container it listens on 0.0.0.0, so the published address is one of them when it is a single one.
if [[ -z "${ACESTEP_API_KEY:-}" ]]; then
    case "${ACESTEP_PUBLISH_HOST:-}" in
        "" | 0.0.0.0 | :: | 127.* | localhost | ::1) ;;
        *) export ACESTEP_ALLOWED_HOSTS="${ACESTEP_ALLOWED_HOSTS:+$ACESTEP_ALLOWED_HOSTS,}${ACESTEP_PUBLISH_HOST}" ;;
    esac
fi

serve_ui=(acestep --server-name 0.0.0.0 --port "${ACESTEP_UI_PORT:-7860}" --enable-api
          --api-port "${ACESTEP_API_PORT:-8001}")
serve_api=(acestep-api --host 0.0.0.0 --port "${ACESTEP_API_PORT:-8001}")
if [[ $# -eq 0 || "$1" == -* ]]; then
    case "${ACESTEP_SERVE:-ui}" in
        ui) set -- "${serve_ui[@]}" "$@" ;;
        api) set -- "${serve_api[@]}" "$@" ;;
        *) echo "error: ACESTEP_SERVE must be ui or api, got '${ACESTEP_SERVE}'" >&2; exit 2 ;;
    esac
fi

case "$1" in
    acestep | acestep-api | acestep-mcp)
        if [[ "${ACESTEP_DOWNLOAD_ON_START:-true}" != "false" ]]; then
            # stderr: for acestep-mcp, stdout is the MCP stdio channel.
            acestep-download --missing >&2 || {
                echo "error: the models are not in $checkpoints and could not be downloaded;" \
                     "mount a checkpoints folder there, or let the container reach huggingface.co" >&2
                exit 1
            }
        fi
        ;;
esac
exec "$@"
