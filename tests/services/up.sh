#!/usr/bin/env bash
# Start the servers the `services` tests use, unless they already answer: PostgreSQL on 127.0.0.1:5499
# and OpenStack Swift's S3 API on 127.0.0.1:9103 (Debian packages, installed when missing).
# Usage: up.sh STATE_DIR   (stop them with down.sh STATE_DIR). The recipes are from ../shared/recipes.
set -euo pipefail
state=${1:?usage: up.sh STATE_DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$state"
if ! (exec 3<>/dev/tcp/127.0.0.1/5499) 2>/dev/null; then
  bash "$here/postgres/start.sh" "$state/postgres" 5499
fi
if ! curl -sf -m 2 http://127.0.0.1:9103/healthcheck >/dev/null 2>&1; then
  bash "$here/s3-swift/start.sh" "$state/s3" 9103
fi
