#!/usr/bin/env bash
# Builds the static unstick binary and two images, without a registry:
#   unstick:local        FROM scratch: the binary, a non-root user (docker/Dockerfile)
#   unstick-redis:local  FROM scratch: Debian's redis-server and the libraries it loads
#                        (docker/redis.Dockerfile), for the compose stack's session store
#
#   docker/build.sh [--tag IMAGE] [--redis-tag IMAGE] [--no-redis] [--skip-build]
#
# The binary is target/<host triple>/dist/unstick: the `dist` profile (release
# code, stripped), linked with `-C target-feature=+crt-static` on the gnu
# target, so it needs no shared library and no NSS module at run time.
# --skip-build packs the binary already built. The redis image copies the
# host's /usr/bin/redis-server (Debian's redis-server package) and the
# libraries `ldd` lists for it.
set -euo pipefail
cd "$(dirname "$0")/.."

tag=unstick:local
redis_tag=unstick-redis:local
redis=1
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag=$2; shift 2 ;;
        --redis-tag) redis_tag=$2; shift 2 ;;
        --no-redis) redis=0; shift ;;
        --skip-build) build=0; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "docker/build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

command -v docker >/dev/null || { echo "docker/build.sh: needs the docker CLI" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "docker/build.sh: no Docker engine answers (docker info failed)" >&2; exit 1; }

triple=$(rustc -vV | sed -n 's/^host: //p')
case "$triple" in
    *-linux-gnu) flags="-C target-feature=+crt-static" ;;
    *-linux-musl) flags="" ;;
    *) echo "docker/build.sh: a Linux host is needed to build the image (host is $triple)" >&2; exit 1 ;;
esac
bin="target/$triple/dist/unstick"
if [ "$build" = 1 ]; then
    echo "building $bin (static, profile dist)" >&2
    # --target keeps build scripts and proc macros dynamic; only unstick is static.
    RUSTFLAGS="${RUSTFLAGS:-} $flags" cargo build --locked --profile dist --target "$triple" --bin unstick
fi
[ -x "$bin" ] || { echo "docker/build.sh: $bin is missing (build it, or drop --skip-build)" >&2; exit 1; }
if ldd "$bin" 2>&1 | grep -q '=>'; then
    echo "docker/build.sh: $bin is dynamically linked: it cannot run FROM scratch" >&2
    exit 1
fi

# image TAG DOCKERFILE CONTEXT: builds quietly; the builder's output only if it fails.
image() {
    local out
    out=$(docker build --quiet -f "$2" -t "$1" "$3" 2>&1) || { echo "$out" >&2; exit 1; }
}

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

# --- unstick:local ----------------------------------------------------------------
mkdir -p "$ctx/unstick/etc"
cp "$bin" "$ctx/unstick/unstick"
echo "unstick:x:65532:65532:unstick:/:/nonexistent" >"$ctx/unstick/etc/passwd"
echo "unstick:x:65532:" >"$ctx/unstick/etc/group"
image "$tag" docker/Dockerfile "$ctx/unstick"
echo "$tag: $(docker image inspect -f '{{.Size}}' "$tag") bytes (binary: $(stat -c %s "$bin") bytes)"

# --- unstick-redis:local ----------------------------------------------------------
[ "$redis" = 1 ] || exit 0
server=/usr/bin/redis-server
if [ ! -x "$server" ]; then
    echo "docker/build.sh: $server is missing: install Debian's redis-server package (apt-get install redis-server), or pass --no-redis" >&2
    exit 1
fi
root="$ctx/redis"
mkdir -p "$root/usr/bin" "$root/etc" "$root/data"
# Debian's redis-server is a link to redis-check-rdb; redis picks its role by argv[0].
cp -L "$server" "$root/usr/bin/redis-server"
ldd "$server" | grep -o '/[^ ]*' | while read -r lib; do
    cp -L --parents "$lib" "$root"
done
echo "redis:x:999:999:redis:/data:/nonexistent" >"$root/etc/passwd"
echo "redis:x:999:" >"$root/etc/group"
image "$redis_tag" docker/redis.Dockerfile "$root"
echo "$redis_tag: $(docker image inspect -f '{{.Size}}' "$redis_tag") bytes ($($server --version | cut -d' ' -f3))"
