# tests/lib.sh: what the bash tests (tests/test_*.sh) share, sourced by each of them: the scratch
# directory and the exit trap that stops, by pid, what a test started; the PASS/FAIL/SKIP runner
# and its counters; starting `serve` and waiting for its ready file; adding a shop. It owns no
# test: each script keeps its own checks. Not a test itself (the ctest glob is test_*.sh).
#
# A script sets BIN (and CLEANUP_TERM=0 when its exit trap should only SIGKILL), sources this
# file, then calls `cs_lib_init NAME`. Tests run in subshells (`run`), so the pids of what they
# start go to "$scratch/pids", which the exit trap reads.

passed=0 failed=0 skipped=0

cleanup() {
    local p
    if [ "${CLEANUP_TERM:-1}" -eq 1 ]; then
        for p in $(cat "$scratch/pids" 2>/dev/null); do kill -TERM "$p" 2>/dev/null; done
        sleep 0.2
    fi
    for p in $(cat "$scratch/pids" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    rm -rf "$scratch"
}

cs_lib_init() { # cs_lib_init NAME: a fresh scratch directory /tmp/cs-test-NAME-*, removed at exit
    scratch=$(mktemp -d "/tmp/cs-test-$1-XXXXXX")
    trap cleanup EXIT
}

run() { # run NAME: PASS when the function NAME returns 0, SKIP when it returns 77
    local out
    if out=$("$1" 2>&1); then
        echo "PASS $1"; passed=$((passed + 1))
    elif [ $? -eq 77 ]; then
        echo "SKIP $1: $out"; skipped=$((skipped + 1))
    else
        printf '%s\n' "$out" | sed 's/^/  /'; echo "FAIL $1"; failed=$((failed + 1))
    fi
}
fail() { echo "$*"; return 1; }

wait_file() { # wait_file PATH: until PATH is not empty, up to 15 s
    local i
    for ((i = 0; i < 300; i++)); do [ -s "$1" ] && return 0; sleep 0.05; done
    return 1
}

# serve DIR READY LOG [BIN]: starts BIN (default $BIN) serve on 127.0.0.1:0 in the background,
# its pid in "$scratch/pids" and READY.pid, and waits for READY (wait_file).
serve() {
    "${4:-$BIN}" serve --data "$1" --listen 127.0.0.1:0 --ready-file "$2" >"$3" 2>&1 &
    echo $! >>"$scratch/pids"
    echo $! >"$2.pid"
    wait_file "$2"
}

# add_shop DIR NAME [BIN]: adds shop NAME (password branch-secret-1) and prints its id.
add_shop() {
    echo 'branch-secret-1' | "${3:-$BIN}" shop add --data "$1" --name "$2" --password-stdin --json-out |
        sed 's/.*"id":\([0-9]*\).*/\1/'
}
