# tools/setup.sh: sourced by tools/test, tools/demo and tools/fuzz (with --no-build). Installs the Debian packages chainsync
# needs when one is missing (apt-get update first, as root or through sudo), then configures and
# builds with CMake. CS_SANITIZE=1 builds with AddressSanitizer + UBSan into build-asan/.
CS_PACKAGES="build-essential cmake pkg-config liblmdb-dev libmsgpack-dev libuv1-dev
libxxhash-dev libsodium-dev libjansson-dev libmicrohttpd-dev python3 python3-lmdb python3-msgpack
python3-nacl python3-xxhash prometheus chromium systemd help2man dpkg-dev bsdutils lmdb-utils clang
libclang-rt-14-dev e2fsprogs mount stunnel4 openssl nats-server libnats-dev"

cs_install_missing() {
    local missing=() p
    for p in $CS_PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "setup: installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

cs_build() {
    local dir=build opts=()
    if [ "${CS_SANITIZE:-0}" = 1 ]; then
        dir=build-asan
        opts+=(-DCS_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug)
    fi
    # The test build treats warnings as errors (CMake's default does not, for users' builds).
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCS_WERROR=ON "${opts[@]}" >/dev/null
    cmake --build "$dir" -j "$(nproc)" >/dev/null || cmake --build "$dir" -j 1
    CS_BUILD_DIR="$PWD/$dir"
}

cs_install_missing
# tools/fuzz builds a build directory of its own (build-fuzz/) and only needs the packages.
[ "${1:-}" = --no-build ] || cs_build
