#!/bin/sh
# Builds (once per daemon) the images of the Testcontainers test and prints the job image's tag.
#
#   tests/support/testcontainers-image.sh
#
# - ctproxy-test/testcontainers:<hash>, the job image: `mmdebstrap --variant=minbase bookworm`
#   with Debian's python3 and the dependencies of testcontainers-python (python3-docker,
#   python3-wrapt, python3-typing-extensions, python3-urllib3), plus testcontainers-python 4.8.2
#   from PyPI (its wheel, checked against the hash below, unpacked into dist-packages: pure
#   Python, no pip needed in the image);
# - testcontainers/ryuk:0.8.1, the Ryuk image testcontainers-python 4.8.2 starts (its
#   RYUK_IMAGE default; there is no Docker Hub here): the same file system running
#   tests/support/ryuk-standin.py, which speaks Ryuk's protocol.
#
# <hash> covers this script and the Ryuk stand-in; the Ryuk image carries it in its
# ctproxy-test.inputs label. Either one missing or stale rebuilds both. Concurrent callers wait
# for one build (flock). The daemon is CTPROXY_DIRECT_DOCKER_HOST (default /var/run/docker.sock).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
version=4.8.2
wheel_sha256=9e19af077cd96e1957c13ee466f1f32905bc6c5bc1bc98643eb18be1a989bfb0
ryuk=testcontainers/ryuk:0.8.1
packages=python3,python3-docker,python3-wrapt,python3-typing-extensions,python3-urllib3
hash=$(cat "$0" "$here/ryuk-standin.py" | sha256sum | cut -c1-12)
tag="ctproxy-test/testcontainers:$hash"
export DOCKER_HOST=${CTPROXY_DIRECT_DOCKER_HOST:-unix:///var/run/docker.sock}
fresh() {
    docker image inspect "$tag" >/dev/null 2>&1 &&
        [ "$(docker image inspect -f '{{index .Config.Labels "ctproxy-test.inputs"}}' "$ryuk" 2>/dev/null)" = "$hash" ]
}
if fresh; then
    echo "$tag"
    exit 0
fi
lock=/tmp/ctproxy-testcontainers-image-$(echo "$DOCKER_HOST" | sha256sum | cut -c1-8).lock
exec 9>"$lock"
flock 9
if ! fresh; then
    work=$(mktemp -d /tmp/ctproxy-testcontainers-image.XXXXXX)
    trap 'rm -rf "$work"' EXIT
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work" "testcontainers==$version" >&2
    whl="$work/testcontainers-$version-py3-none-any.whl"
    echo "$wheel_sha256  $whl" | sha256sum -c --quiet - >&2
    python3 -m zipfile -e "$whl" "$work/site" >&2
    cp "$here/ryuk-standin.py" "$work/ryuk"
    mmdebstrap --quiet --variant=minbase --include="$packages" \
        --customize-hook="cp -r '$work/site/.' \"\$1/usr/lib/python3/dist-packages/\"" \
        --customize-hook="install -m 0755 '$work/ryuk' \"\$1/usr/local/bin/ryuk\"" \
        bookworm "$work/rootfs.tar" http://deb.debian.org/debian >&2
    docker import --change 'CMD ["/bin/bash"]' "$work/rootfs.tar" "$tag" >&2
    docker import --change 'CMD ["/usr/local/bin/ryuk"]' --change "LABEL ctproxy-test.inputs=$hash" "$work/rootfs.tar" "$ryuk" >&2
fi
echo "$tag"
