#!/usr/bin/env bash
# test_backup.sh: backing up a live head office and restoring it, as README "Operating chainsync"
# tells an operator (issue 13, acceptance 2): `mdb_copy` (lmdb-utils) takes a consistent copy of
# the data directory while `serve` runs, a branch follows and another process writes; the copy
# passes `chainsync audit verify`, its log is a prefix of the live one, and restored it serves:
# a new branch joins it, and a branch that already applied events past the copy is refused
# with `corrupt` (it must join again), as documented. Prints PASS/FAIL per test and
# "N passed, N failed"; every process it starts is stopped by pid.
set -u
BIN=${CS_BIN:?CS_BIN is set by tests/CMakeLists.txt}
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cs_lib_init backup

stop() { # stop PID: SIGTERM, then wait (bounded, 10 s) until it is gone; it may not be our child
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    return 1
}

join() { # join DIR SHOP ADDR
    echo 'branch-secret-1' | "$BIN" branch join --data "$1" --head "$3" --shop "$2" --password-stdin >/dev/null
}

head_seq() {
    "$BIN" log --data "$1" | tail -1 | sed 's/.*"seq":\([0-9]*\).*/\1/'
}

hq=$scratch/hq copy=$scratch/backup
test_live_backup_verifies() {
    command -v mdb_copy >/dev/null || { echo "mdb_copy (lmdb-utils) missing"; return 77; }
    "$BIN" init --data "$hq" --name HQ >/dev/null && "$BIN" network create --data "$hq" --name N >/dev/null ||
        fail "cannot make a head office" || return 1
    add_shop "$hq" B1 >"$scratch/shop1"
    add_shop "$hq" B2 >"$scratch/shop2"
    serve "$hq" "$scratch/ready" "$scratch/serve.log" || fail "serve did not start" || return 1
    join "$scratch/b1" "$(cat "$scratch/shop1")" "$(cat "$scratch/ready")" || fail "join failed" || return 1
    "$BIN" network mode continuous --data "$hq" >/dev/null
    "$BIN" branch follow --data "$scratch/b1" >"$scratch/follow.log" 2>&1 &
    echo $! >>"$scratch/pids"
    echo $! >"$scratch/follow.pid"
    # A writer in another process, bounded: 80 changes while the copy is taken.
    (for ((i = 1; i <= 80; i++)); do
        "$BIN" put service_category --data "$hq" --json "{\"name\":\"c$i\"}" >/dev/null || exit 1
    done) &
    local writer=$!
    echo $writer >>"$scratch/pids"
    sleep 0.3
    local before
    before=$(head_seq "$hq")
    mkdir -p "$copy"
    (umask 077 && mdb_copy -c "$hq" "$copy") || fail "mdb_copy failed" || return 1
    wait "$writer" || fail "the writer failed" || return 1
    local after at
    after=$(head_seq "$hq")
    at=$(head_seq "$copy")
    [ "$at" -ge "$before" ] && [ "$at" -le "$after" ] && [ "$after" -gt "$before" ] ||
        fail "the copy is at $at, the live log went $before -> $after" || return 1
    "$BIN" audit verify --data "$copy" >"$scratch/verify.out" 2>&1 ||
        fail "audit verify of the copy: $(cat "$scratch/verify.out")" || return 1
    # Its events are exactly the first $at of the live log (checksums and chain included).
    cmp -s <("$BIN" log --data "$copy") <("$BIN" log --data "$hq" --limit "$at") ||
        fail "the copy's log is not a prefix of the live log"
}

test_restore_serves() {
    [ -d "$copy" ] || { echo "no backup from the test before"; return 1; }
    local i
    for ((i = 0; i < 100; i++)); do # B1 has everything the live head office has
        [ "$("$BIN" status --data "$scratch/b1" --json-out | sed 's/.*"cursor":\([0-9]*\).*/\1/')" -ge "$(head_seq "$hq")" ] && break
        sleep 0.1
    done
    stop "$(cat "$scratch/ready.pid")"
    local restored=$scratch/restored
    cp -a "$copy" "$restored" || return 1
    serve "$restored" "$scratch/ready2" "$scratch/serve2.log" || fail "serve on the restored copy did not start" || return 1
    join "$scratch/b2" "$(cat "$scratch/shop2")" "$(cat "$scratch/ready2")" ||
        fail "a branch cannot join the restored head office" || return 1
    "$BIN" status --data "$restored" --json-out --max-lag 1000000 >/dev/null ||
        fail "status on the restored head office failed" || return 1
    # B1 applied events the copy does not have: the restored log is not the one it follows.
    stop "$(cat "$scratch/follow.pid")"
    local out rc
    out=$("$BIN" branch pull --data "$scratch/b1" --head "$(cat "$scratch/ready2")" 2>&1 </dev/null)
    rc=$?
    [ "$rc" -ne 0 ] || {
        # only possible when no event came after the copy
        [ "$(head_seq "$restored")" -eq "$(head_seq "$hq")" ] || fail "B1 ahead of the backup pulled from it"
        return
    }
    [[ $out == *"error: corrupt"* ]] || fail "B1 ahead of the backup: exit $rc, $out"
}

run test_live_backup_verifies
run test_restore_serves
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
