#!/usr/bin/env bash
# Stop what up.sh STATE_DIR started (servers it found already running are left alone).
state=${1:?usage: down.sh STATE_DIR}
here=$(cd "$(dirname "$0")" && pwd)
[ -d "$state/postgres" ] && bash "$here/postgres/stop.sh" "$state/postgres"
[ -d "$state/s3" ] && bash "$here/s3-swift/stop.sh" "$state/s3"
exit 0
