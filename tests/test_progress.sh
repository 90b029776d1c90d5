#!/usr/bin/env bash
# test_progress.sh: the progress line of long commands (issue 13, "Progress and logs") as a
# person meets it: on a terminal (a pty from `script`, util-linux) `branch join`, `branch pull`,
# `log export`, `branch import`, `audit checkpoint` and `audit verify` redraw one line with \r
# ("applied N of M events"); in a pipe, and with --json-out on a terminal, no progress line and
# no carriage return reaches standard error. Prints PASS/FAIL per test and "N passed, N failed";
# the serve it starts is stopped by pid.
set -u
BIN=${CS_BIN:?CS_BIN is set by tests/CMakeLists.txt}
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cs_lib_init progress

# on_tty OUT CMD...: runs CMD with a pty as its terminal (stdin, stdout, stderr); the terminal's
# output goes to OUT. Returns CMD's exit code.
on_tty() {
    local out=$1
    shift
    local cmd
    printf -v cmd '%q ' "$@"
    timeout 60 script -qec "$cmd" /dev/null </dev/null >"$out" 2>&1
}

hq=$scratch/hq
setup() {
    "$BIN" init --data "$hq" --name HQ >/dev/null && "$BIN" network create --data "$hq" --name N >/dev/null ||
        return 1
    local i json='['
    for ((i = 1; i <= 60; i++)); do
        "$BIN" put service_category --data "$hq" --json "{\"name\":\"c$i\"}" >/dev/null || return 1
    done
    add_shop "$hq" B1 >"$scratch/shop"
    "$BIN" sync --data "$hq" >/dev/null
}

has_progress() { # has_progress FILE VERB: a line redrawn with \r that says "VERB N of M"
    grep -q $'\r' "$1" && tr '\r' '\n' <"$1" | grep -Eq "^$2 [0-9.]+( MiB)? of [0-9.]+"
}

test_tty_log_export_and_import() {
    command -v script >/dev/null || { echo "script (bsdutils) missing"; return 77; }
    on_tty "$scratch/export.tty" "$BIN" log export --data "$hq" --from 1 --out "$scratch/all.seg" ||
        fail "log export failed: $(cat "$scratch/export.tty")" || return 1
    has_progress "$scratch/export.tty" exported || fail "no progress line: $(cat -A "$scratch/export.tty")" || return 1
    on_tty "$scratch/import.tty" "$BIN" branch import "$scratch/all.seg" --data "$scratch/imported" \
        --shop "$(cat "$scratch/shop")" || fail "branch import failed: $(cat "$scratch/import.tty")" || return 1
    has_progress "$scratch/import.tty" imported || fail "no progress line: $(cat -A "$scratch/import.tty")"
}

test_tty_audit() {
    command -v script >/dev/null || { echo "script (bsdutils) missing"; return 77; }
    on_tty "$scratch/ckpt.tty" "$BIN" audit checkpoint --data "$hq" --every 10 ||
        fail "audit checkpoint failed: $(cat "$scratch/ckpt.tty")" || return 1
    has_progress "$scratch/ckpt.tty" replayed || fail "no progress line: $(cat -A "$scratch/ckpt.tty")" || return 1
    on_tty "$scratch/verify.tty" "$BIN" audit verify --data "$hq" ||
        fail "audit verify failed: $(cat "$scratch/verify.tty")" || return 1
    has_progress "$scratch/verify.tty" replayed || fail "no progress line: $(cat -A "$scratch/verify.tty")"
}

test_tty_join_and_pull() {
    command -v script >/dev/null || { echo "script (bsdutils) missing"; return 77; }
    local i
    serve "$hq" "$scratch/ready" "$scratch/serve.log" || fail "serve did not start" || return 1
    echo 'branch-secret-1' >"$scratch/pw"
    on_tty "$scratch/join.tty" bash -c '"$0" branch join --data "$1" --head "$2" --shop "$3" --password-stdin <"$4"' \
        "$BIN" "$scratch/b1" "$(cat "$scratch/ready")" "$(cat "$scratch/shop")" "$scratch/pw" ||
        fail "join failed: $(cat "$scratch/join.tty")" || return 1
    has_progress "$scratch/join.tty" applied || fail "no progress line: $(cat -A "$scratch/join.tty")" || return 1
    for ((i = 1; i <= 5; i++)); do
        "$BIN" put service_category --data "$hq" --json "{\"name\":\"p$i\"}" >/dev/null || return 1
    done
    on_tty "$scratch/pull.tty" "$BIN" branch pull --data "$scratch/b1" ||
        fail "pull failed: $(cat "$scratch/pull.tty")" || return 1
    has_progress "$scratch/pull.tty" applied || fail "no progress line: $(cat -A "$scratch/pull.tty")"
}

test_pipe_and_json_out_have_none() {
    "$BIN" log export --data "$hq" --from 1 --out "$scratch/p.seg" 2>"$scratch/pipe.err" | cat >/dev/null
    "$BIN" audit checkpoint --data "$hq" --every 10 --rebuild 2>>"$scratch/pipe.err" | cat >/dev/null
    "$BIN" branch import "$scratch/p.seg" --data "$scratch/imported2" --shop "$(cat "$scratch/shop")" \
        2>>"$scratch/pipe.err" | cat >/dev/null
    ! grep -q $'\r' "$scratch/pipe.err" && ! grep -Eq '(exported|replayed|imported) [0-9.]+' "$scratch/pipe.err" ||
        fail "progress in a pipe: $(cat -A "$scratch/pipe.err")" || return 1
    if command -v script >/dev/null; then
        on_tty "$scratch/json.tty" "$BIN" --json-out log export --data "$hq" --from 1 --out "$scratch/j.seg" ||
            fail "export --json-out failed" || return 1
        ! grep -q $'\r\(exported\)' "$scratch/json.tty" && ! tr '\r' '\n' <"$scratch/json.tty" | grep -q '^exported' ||
            fail "progress with --json-out: $(cat -A "$scratch/json.tty")"
    fi
}

setup || { echo "setup failed"; echo "0 passed, 1 failed"; exit 1; }
run test_tty_log_export_and_import
run test_tty_audit
run test_tty_join_and_pull
run test_pipe_and_json_out_have_none
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
