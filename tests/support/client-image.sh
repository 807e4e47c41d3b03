#!/bin/sh
# Builds (once) a Debian 12 image for tests that run real package managers, and prints its tag.
#
#   tests/support/client-image.sh NAME [PACKAGE...]
#
# The image is `mmdebstrap --variant=minbase bookworm` with ca-certificates and PACKAGEs, imported
# with `docker import` as ctproxy-test/client-NAME:<hash>, where <hash> covers this script and the
# arguments: a change of either builds a new image, an unchanged one is reused. The apt lists are
# left empty (mmdebstrap's cleanup), so a job starts with `apt-get update` like on any fresh image.
# Concurrent callers wait for one build (flock). Used by tests/cache_real.rs (and reusable by
# scripts/test-env to build them ahead of the tests).
set -eu
name=$1
shift
packages=$(printf '%s\n' ca-certificates "$@" | sort -u | paste -sd, -)
hash=$( (cat "$0"; echo "$name $packages") | sha256sum | cut -c1-12)
tag="ctproxy-test/client-$name:$hash"
export DOCKER_HOST=${CTPROXY_DIRECT_DOCKER_HOST:-unix:///var/run/docker.sock}
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag"
    exit 0
fi
lock=/tmp/ctproxy-client-image-$name.lock
exec 9>"$lock"
flock 9
if ! docker image inspect "$tag" >/dev/null 2>&1; then
    tar=$(mktemp /tmp/ctproxy-client-image.XXXXXX.tar)
    trap 'rm -f "$tar"' EXIT
    mmdebstrap --quiet --variant=minbase --include="$packages" bookworm "$tar" http://deb.debian.org/debian >&2
    docker import --change 'CMD ["/bin/bash"]' "$tar" "$tag" >&2
fi
echo "$tag"
