#!/bin/sh
# The image's entrypoint. "serve" (the default command) runs LOACL's server, under Litestream
# when LOACL_REPLICA_URL names a replica; anything else is a loacl command, so that
# `podman run IMAGE audit verify` works.
set -eu

if [ "${1:-serve}" != serve ]; then
    exec loacl "$@"
fi
shift 2>/dev/null || true
exec loacl serve "$@"
