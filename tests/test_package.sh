#!/usr/bin/env bash
# test_package.sh: chainsync as an operator installs it (issue 13, "Services and packages"):
# `cmake --install` into a scratch prefix puts the program, the systemd units, the sysusers and
# tmpfiles files, a man page per command group and the bash completion in place; the units pass
# `systemd-analyze verify` and carry the hardening; serve and branch follow, the units' commands,
# stop cleanly (exit 0) on SIGTERM; `cpack -G DEB` builds a .deb whose Depends are Debian's
# library packages, and the program extracted from it (dpkg-deb -x) runs.
# Prints PASS/FAIL per test and "N passed, N failed"; everything it starts is stopped by pid.
set -u
BIN=${CS_BIN:?CS_BIN is set by tests/CMakeLists.txt}
BUILD=${CS_BUILD:?CS_BUILD is set by tests/CMakeLists.txt}
CLEANUP_TERM=0 # the exit trap only SIGKILLs what is left (a test stops what it checks)
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cs_lib_init package

# The command groups: the two-word commands of `chainsync --help` (the synopsis is the first 52
# columns after the indent; a second word in lower case is a subcommand, not an argument).
groups() {
    "$BIN" --help | sed -n '/^Commands:/,/^$/p' | cut -c3-54 | awk '$2 ~ /^[a-z]/ {print $1}' | sort -u
}

inst=$scratch/inst
test_install_tree() {
    cmake --install "$BUILD" --prefix "$inst" >/dev/null || fail "cmake --install failed"
    local f
    for f in bin/chainsync lib/systemd/system/chainsync-serve.service \
        lib/systemd/system/chainsync-branch@.service lib/sysusers.d/chainsync.conf \
        lib/tmpfiles.d/chainsync.conf share/bash-completion/completions/chainsync \
        share/man/man1/chainsync.1.gz; do
        [ -f "$inst/$f" ] || fail "not installed: $f" || return 1
    done
    "$inst/bin/chainsync" --version | grep -q '^chainsync [0-9]' || fail "no --version"
    local g n=0
    for g in $(groups); do
        n=$((n + 1))
        "$BIN" "$g" --help >/dev/null || fail "chainsync $g --help fails" || return 1
        [ -f "$inst/share/man/man1/chainsync-$g.1.gz" ] || fail "no man page for $g" || return 1
        # the page documents each of the group's commands, from their own --help
        zcat "$inst/share/man/man1/chainsync-$g.1.gz" | grep -q "chainsync $g" ||
            fail "chainsync-$g.1 does not document chainsync $g" || return 1
    done
    [ "$n" -ge 6 ] || fail "only $n command groups found"
}

test_units_verify() {
    local units=$inst/lib/systemd/system
    [ -f "$units/chainsync-serve.service" ] || fail "no installed units"
    cp "$units/chainsync-branch@.service" "$scratch/chainsync-branch@shop1.service"
    local u out
    for u in "$units/chainsync-serve.service" "$scratch/chainsync-branch@shop1.service"; do
        # warnings (an unknown key, a missing man page) fail the test too, not only errors
        out=$(MANPATH=$inst/share/man systemd-analyze verify "$u" 2>&1) ||
            fail "systemd-analyze verify $u: $out" || return 1
        [ -z "$out" ] || fail "systemd-analyze verify $u warns: $out" || return 1
        grep -q "^ExecStart=$inst/bin/chainsync " "$u" || fail "$u: ExecStart not the installed program"
        for key in User=chainsync Restart=on-failure NoNewPrivileges=yes ProtectSystem=strict \
            ProtectHome=yes PrivateTmp=yes ReadWritePaths=/var/lib/chainsync KillSignal=SIGTERM; do
            grep -qx "$key" "$u" || fail "$u lacks $key" || return 1
        done
    done
    grep -q '^u chainsync ' "$inst/lib/sysusers.d/chainsync.conf" || fail "sysusers: no user"
}

# The units stop serve and follow with SIGTERM and restart them only on failure: a stop must
# exit 0.
test_sigterm_clean_stop() {
    local cs=$inst/bin/chainsync hq=$scratch/hq b=$scratch/b1 rc
    "$cs" init --data "$hq" --name HQ >/dev/null && "$cs" network create --data "$hq" --name N >/dev/null ||
        fail "cannot make a head office" || return 1
    local shop
    shop=$(add_shop "$hq" B1 "$cs")
    local serve
    serve "$hq" "$scratch/ready" "$scratch/serve.log" "$cs"
    rc=$?
    serve=$(cat "$scratch/ready.pid")
    [ "$rc" -eq 0 ] || fail "serve did not start: $(cat "$scratch/serve.log")" || return 1
    echo 'branch-secret-1' | "$cs" branch join --data "$b" --head "$(cat "$scratch/ready")" \
        --shop "$shop" --password-stdin >/dev/null || fail "join failed" || return 1
    "$cs" branch follow --data "$b" >"$scratch/follow.log" 2>&1 &
    local follow=$!
    echo "$follow" >>"$scratch/pids"
    for ((i = 0; i < 300; i++)); do grep -q authenticated "$scratch/follow.log" && break; sleep 0.05; done
    kill -TERM "$follow"
    wait "$follow"
    rc=$?
    [ "$rc" -eq 0 ] || fail "branch follow exited $rc on SIGTERM: $(cat "$scratch/follow.log")" || return 1
    kill -TERM "$serve"
    wait "$serve"
    rc=$?
    [ "$rc" -eq 0 ] || fail "serve exited $rc on SIGTERM: $(cat "$scratch/serve.log")"
}

test_bash_completion() {
    # shellcheck source=/dev/null
    . "$inst/share/bash-completion/completions/chainsync" || fail "completion does not load"
    COMP_WORDS=("$BIN" shop "")
    COMP_CWORD=2
    _chainsync
    [[ " ${COMPREPLY[*]} " == *" list "* && " ${COMPREPLY[*]} " == *" add "* ]] ||
        fail "shop <TAB> offers: ${COMPREPLY[*]}" || return 1
    COMP_WORDS=("$BIN" status --max)
    COMP_CWORD=2
    _chainsync
    [[ " ${COMPREPLY[*]} " == *" --max-lag "* ]] || fail "status --max<TAB> offers: ${COMPREPLY[*]}"
}

test_deb_package() {
    command -v dpkg-deb >/dev/null && command -v cpack >/dev/null ||
        { echo "dpkg-deb or cpack missing (tools/setup.sh installs dpkg-dev)"; return 77; }
    local pkg=$scratch/pkg root=$scratch/root
    mkdir -p "$pkg"
    (cd "$BUILD" && cpack -G DEB --config "$BUILD/CPackConfig.cmake" -B "$pkg" >"$scratch/cpack.log" 2>&1) ||
        fail "cpack failed: $(tail -5 "$scratch/cpack.log")" || return 1
    local deb
    deb=$(ls "$pkg"/chainsync_*.deb 2>/dev/null | head -1)
    [ -n "$deb" ] || fail "no .deb built" || return 1
    local deps
    deps=$(dpkg-deb -f "$deb" Depends)
    for lib in liblmdb0 libuv1 libsodium23 libjansson4 libmsgpackc2 libxxhash0; do
        [[ $deps == *"$lib "* || $deps == *"$lib," || $deps == *"$lib" ]] ||
            fail "Depends lacks $lib: $deps" || return 1
    done
    dpkg-deb -x "$deb" "$root" || fail "dpkg-deb -x failed"
    "$root/usr/bin/chainsync" --help | grep -q '^usage: chainsync' || fail "the packaged program does not run"
    "$root/usr/bin/chainsync" init --data "$scratch/pkgstore" --name P >/dev/null ||
        fail "the packaged program cannot make a store" || return 1
    local f
    for f in usr/lib/systemd/system/chainsync-serve.service usr/lib/systemd/system/chainsync-branch@.service \
        usr/lib/sysusers.d/chainsync.conf usr/share/man/man1/chainsync.1.gz \
        usr/share/bash-completion/completions/chainsync; do
        [ -f "$root/$f" ] || fail "not in the package: $f" || return 1
    done
    for g in $(groups); do
        [ -f "$root/usr/share/man/man1/chainsync-$g.1.gz" ] || fail "no man page for $g in the package" || return 1
    done
    grep -q '^ExecStart=/usr/bin/chainsync serve ' "$root/usr/lib/systemd/system/chainsync-serve.service" ||
        fail "the packaged unit does not run /usr/bin/chainsync"
    dpkg-deb -I "$deb" postinst >/dev/null || fail "no postinst (user and state directory)"
}

run test_install_tree
run test_units_verify
run test_sigterm_clean_stop
run test_bash_completion
run test_deb_package
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
