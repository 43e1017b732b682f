#!/usr/bin/env bash
# Builds the palisade container image from local files only (no registry, no base image):
# FROM scratch with the binary and the shared libraries `ldd` names.
#   deploy/podman/build-image.sh BINARY TAG
# Run by `cargo xtask image` and by palisade/tests/pod_e2e.rs.
set -euo pipefail
bin=${1:?usage: build-image.sh BINARY TAG}
tag=${2:?usage: build-image.sh BINARY TAG}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/root/usr/local/bin" "$ctx/root/run/palisade" "$ctx/root/tmp" "$ctx/root/etc/palisade"
cp "$bin" "$ctx/root/usr/local/bin/palisade"
# Debug info is not needed at run time; the image is a quarter of the size without it.
strip --strip-debug "$ctx/root/usr/local/bin/palisade" 2>/dev/null || true
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$ctx/root$(dirname "$lib")"
    cp -L "$lib" "$ctx/root$lib"
done
cat > "$ctx/Containerfile" <<'CF'
FROM scratch
COPY root/ /
ENTRYPOINT ["/usr/local/bin/palisade"]
CMD ["run", "--config", "/etc/palisade/policy.toml"]
CF
podman build --quiet --tag "$tag" "$ctx"
