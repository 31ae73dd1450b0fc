#!/bin/sh
# docker/docker-dind/entrypoint-dind.sh: starts the image's own Docker
# daemon in the background (the container must run privileged), waits for
# it, then runs the worker through the common entrypoint.
set -e

dockerd-entrypoint.sh dockerd >/var/log/dockerd.log 2>&1 &
tries=0
until docker info >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -gt 60 ]; then
        echo "dockerd did not start within 60 s; last lines of its log:" >&2
        tail -n 20 /var/log/dockerd.log >&2
        exit 1
    fi
    sleep 1
done

exec /usr/local/bin/entrypoint.sh "$@"
