#!/bin/sh
# docker/base/entrypoint.sh: the seed's defaults, then the static worker.
# The worker reads SERVER_HOST, SERVER_PORT, WORKER_ID, WORKER_NAME,
# WORKER_CAPABILITIES, EPHEMERAL_MODE, HODEI_WORKER_TOKEN and
# HODEI_WORKSPACE_ROOT itself; flags given to the container are passed on.
set -e

export WORKER_ID="${WORKER_ID:-${HOSTNAME:-worker}}"
export WORKER_NAME="${WORKER_NAME:-Worker-${HOSTNAME:-worker}}"
export SERVER_HOST="${SERVER_HOST:-hodei-server}"
export SERVER_PORT="${SERVER_PORT:-9090}"
export HODEI_WORKSPACE_ROOT="${HODEI_WORKSPACE_ROOT:-/workspace}"

echo "Starting Hodei Worker..." >&2
echo "  Worker ID: $WORKER_ID" >&2
echo "  Worker Name: $WORKER_NAME" >&2
echo "  Server: $SERVER_HOST:$SERVER_PORT" >&2
echo "  Capabilities: ${WORKER_CAPABILITIES:-}" >&2

exec /usr/local/bin/hodei-worker "$@"
