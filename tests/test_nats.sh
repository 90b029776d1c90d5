#!/usr/bin/env bash
# test_nats.sh: the NATS JetStream transport (issue 15) with real nats-server processes on
# 127.0.0.1: a 3-server JetStream cluster (the stream has 3 replicas) and a leaf node the
# branches connect to, each user with the permissions `shop nats-credentials` prints.
#   - branches on the leaf join and follow; kill -9 of one cluster server, of the leaf and of the
#     head office's serve --nats while it publishes; everything catches up, every branch equal to
#     what the audit replays for it (audit verify --branch), and the stream read back
#     (tests/nats_stream_check) holds every event once, in order, no gap, no duplicate;
#   - a branch's shared-record write (R8) reaches the head office over NATS exactly once, and an
#     unlink (R13) reaches the branch like any event;
#   - wrong credentials, and credentials aimed at another network's stream, are refused;
#   - a stream that lost its first segments stops a new branch with corrupt (a gap).
# Ports are picked free at run time, JetStream stores live in the scratch directory, and every
# process started is killed by pid at exit (lib.sh). Prints PASS/FAIL per test.
set -u
BIN=${CS_BIN:?CS_BIN is set by tests/CMakeLists.txt}
CHECK=${CS_BUILD:?CS_BUILD is set by tests/CMakeLists.txt}/tests/nats_stream_check
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cs_lib_init nats
# CS_NATS_KEEP=DIR keeps a copy of the scratch directory (configurations, logs) there at exit.
[ -n "${CS_NATS_KEEP:-}" ] && trap 'rm -rf "$CS_NATS_KEEP"; cp -r "$scratch" "$CS_NATS_KEEP"; cleanup' EXIT

if ! command -v nats-server >/dev/null; then
    echo "SKIP all: nats-server is not installed (tools/setup.sh installs it)"
    exit 0
fi

free_ports() { # free_ports N: N ports free now on 127.0.0.1 (bound, read, released)
    python3 -c 'import socket,sys
ss=[socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1",0))
print(" ".join(str(s.getsockname()[1]) for s in ss))' "$1"
}
read -r C1 C2 C3 R1 R2 R3 L1 L2 L3 H1 H2 H3 LEAF LEAFH <<<"$(free_ports 14)"
CLUSTER="nats://127.0.0.1:$C1,nats://127.0.0.1:$C2,nats://127.0.0.1:$C3"
LEAFURL="nats://127.0.0.1:$LEAF"

start() { # start NAME CONF: nats-server in the background, its pid in $scratch/NAME.pid
    nats-server -c "$2" >>"$scratch/$1.log" 2>&1 &
    echo $! >>"$scratch/pids"
    echo $! >"$scratch/$1.pid"
}
kill9() { kill -KILL "$(cat "$scratch/$1.pid")" 2>/dev/null; }

healthy() { # healthy HTTPPORT: nats-server's /healthz says ok (JetStream ready) within 20 s
    local i
    for ((i = 0; i < 200; i++)); do
        python3 -c 'import sys,urllib.request
urllib.request.urlopen("http://127.0.0.1:%s/healthz" % sys.argv[1], timeout=1)' "$1" 2>/dev/null &&
            return 0
        sleep 0.1
    done
    return 1
}

hub_conf() { # hub_conf N CLIENT ROUTE LEAFLISTEN HTTP: one cluster server
    local routes="" p
    for p in $R1 $R2 $R3; do [ "$p" != "$3" ] && routes="$routes${routes:+, }\"nats-route://127.0.0.1:$p\""; done
    cat >"$scratch/n$1.conf" <<EOF
server_name: n$1
listen: 127.0.0.1:$2
http: 127.0.0.1:$5
jetstream { store_dir: "$scratch/js$1", domain: hub }
cluster { name: hub, listen: 127.0.0.1:$3, routes: [$routes] }
leafnodes { listen: 127.0.0.1:$4, authorization { user: leaf, password: leaf-secret } }
authorization { users = [
$(cat "$scratch/hq.users")
{ user: leaf, password: leaf-secret }
] }
EOF
}

leaf_conf() {
    cat >"$scratch/leaf.conf" <<EOF
server_name: leaf
listen: 127.0.0.1:$LEAF
http: 127.0.0.1:$LEAFH
leafnodes { remotes = [ { urls: ["nats://leaf:leaf-secret@127.0.0.1:$L1",
    "nats://leaf:leaf-secret@127.0.0.1:$L2", "nats://leaf:leaf-secret@127.0.0.1:$L3"] } ] }
authorization { users = [
$(cat "$scratch/branch.users")
] }
EOF
}

hq=$scratch/hq hq2=$scratch/hq2
head_seq() { "$BIN" status --data "$1" --json-out | sed 's/.*"head_seq":\([0-9]*\).*/\1/'; }
cursor() { "$BIN" status --data "$1" --json-out | sed 's/.*"cursor":\([0-9]*\).*/\1/'; }
self_id() { "$BIN" status --data "$1" --json-out | sed 's/.*"shop":\([0-9]*\).*/\1/'; }
network() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["network"])' "$1"; }

serve_nats() { # serve_nats: the head office's serve --nats on the cluster, pid in serve.pid
    "$BIN" serve --data "$hq" --listen 127.0.0.1:0 --ready-file "$scratch/ready" \
        --nats "$CLUSTER" --nats-creds "$scratch/hq.creds" --nats-replicas 3 \
        >>"$scratch/serve.log" 2>&1 &
    echo $! >>"$scratch/pids"
    echo $! >"$scratch/serve.pid"
}

follow() { # follow N: branch N follows through the leaf, pid in fN.pid
    "$BIN" branch follow --data "$scratch/b$1" --nats "$LEAFURL" >>"$scratch/f$1.log" 2>&1 &
    echo $! >>"$scratch/pids"
    echo $! >"$scratch/f$1.pid"
}

# Two head offices (the second only to own another network), shops, credentials, servers.
setup() {
    local s
    for d in "$hq" "$hq2"; do
        "$BIN" init --data "$d" --name HQ >/dev/null && "$BIN" network create --data "$d" --name N >/dev/null ||
            return 1
    done
    for i in $(seq 20); do
        "$BIN" put service_category --data "$hq" --json "{\"name\":\"c$i\"}" >/dev/null || return 1
    done
    add_shop "$hq" B1 >"$scratch/shop1" && add_shop "$hq" B2 >"$scratch/shop2" &&
        add_shop "$hq2" X1 >"$scratch/shopx" || return 1
    "$BIN" shop nats-credentials "$(self_id "$hq")" --data "$hq" --out "$scratch/hq.creds" >"$scratch/hq.users" &&
        "$BIN" shop nats-credentials "$(self_id "$hq2")" --data "$hq2" --out "$scratch/hq2.creds" >>"$scratch/hq.users" || return 1
    : >"$scratch/branch.users"
    for s in 1 2; do
        "$BIN" shop nats-credentials "$(cat "$scratch/shop$s")" --data "$hq" --out "$scratch/b$s.creds" \
            >>"$scratch/branch.users" || return 1
    done
    "$BIN" shop nats-credentials "$(cat "$scratch/shopx")" --data "$hq2" --out "$scratch/x1.creds" \
        >>"$scratch/branch.users" || return 1
    hub_conf 1 "$C1" "$R1" "$L1" "$H1" && hub_conf 2 "$C2" "$R2" "$L2" "$H2" &&
        hub_conf 3 "$C3" "$R3" "$L3" "$H3" && leaf_conf || return 1
    start n1 "$scratch/n1.conf" && start n2 "$scratch/n2.conf" && start n3 "$scratch/n3.conf"
    healthy "$H1" && healthy "$H2" && healthy "$H3" || { echo "the cluster did not come up"; return 1; }
    start leaf "$scratch/leaf.conf"
    healthy "$LEAFH" || { echo "the leaf did not come up"; return 1; }
    serve_nats
    wait_file "$scratch/ready" || { cat "$scratch/serve.log"; return 1; }
    # the second network publishes too: its stream exists beside ours
    "$BIN" serve --data "$hq2" --listen 127.0.0.1:0 --ready-file "$scratch/ready2" \
        --nats "$CLUSTER" --nats-creds "$scratch/hq2.creds" >>"$scratch/serve2.log" 2>&1 &
    echo $! >>"$scratch/pids"
    wait_file "$scratch/ready2" || { cat "$scratch/serve2.log"; return 1; }
}

# Issue 15: a branch on the leaf node joins with its credentials and takes the whole log.
test_leaf_join_catch_up() {
    "$BIN" branch join --data "$scratch/b1" --nats "$LEAFURL" --nats-creds "$scratch/b1.creds" --nats-domain hub \
        --shop "$(cat "$scratch/shop1")" >"$scratch/j1.out" 2>&1 || { cat "$scratch/j1.out"; return 1; }
    local c h
    c=$(cursor "$scratch/b1") h=$(head_seq "$hq")
    [ "$c" = "$h" ] || fail "joined at event $c, the head office is at $h" || return 1
    "$BIN" audit verify --data "$hq" --branch "$scratch/b1" >/dev/null || fail "b1 is not the replay"
}

# Issue 15: branches follow on the leaf while events are written; serve --nats, one cluster
# server and the leaf are killed with SIGKILL mid-stream (serve and the leaf restarted); every
# branch catches up, equals the audit's replay, and the stream holds each event once, in order.
test_kill_mid_stream_catch_up() {
    "$BIN" branch join --data "$scratch/b2" --nats "$LEAFURL" --nats-creds "$scratch/b2.creds" --nats-domain hub \
        --shop "$(cat "$scratch/shop2")" >/dev/null 2>&1 || fail "b2 did not join" || return 1
    follow 1
    follow 2
    (for i in $(seq 150); do
        "$BIN" put service_category --data "$hq" --json "{\"name\":\"live$i\"}" >/dev/null || exit 1
        [ $((i % 50)) -eq 0 ] && { "$BIN" sync --data "$hq" >/dev/null || exit 1; }
    done) &
    local writer=$! i
    echo $writer >>"$scratch/pids"
    sleep 0.4
    kill9 serve # the head office dies while it publishes ...
    for ((i = 0; i < 100; i++)); do # (its serve.lock goes with the process, a moment later)
        "$BIN" status --data "$hq" --json-out | grep -q '"serving":false' && break
        sleep 0.05
    done
    serve_nats # ... and resumes from what the stream holds
    sleep 0.3
    kill9 n2 # one of three replicas: the stream keeps its quorum
    sleep 0.3
    kill9 leaf # the branches' server: they reconnect when it is back
    sleep 0.7
    start leaf "$scratch/leaf.conf"
    wait $writer || fail "the writer failed" || return 1
    "$BIN" sync --data "$hq" >/dev/null || return 1
    local h c1 c2
    h=$(head_seq "$hq")
    for ((i = 0; i < 300; i++)); do
        c1=$(cursor "$scratch/b1") c2=$(cursor "$scratch/b2")
        [ "$c1" = "$h" ] && [ "$c2" = "$h" ] && break
        sleep 0.1
    done
    [ "$c1" = "$h" ] && [ "$c2" = "$h" ] ||
        { tail -n 5 "$scratch/f1.log" "$scratch/serve.log"; fail "b1 at $c1, b2 at $c2, head $h"; } || return 1
    "$BIN" audit verify --data "$hq" --branch "$scratch/b1" >/dev/null || fail "b1 is not the replay" || return 1
    "$BIN" audit verify --data "$hq" --branch "$scratch/b2" >/dev/null || fail "b2 is not the replay" || return 1
    # the restarted serve read its position back from the stream: it had published some already
    grep "publishing to NATS stream" "$scratch/serve.log" | tail -n 1 | grep -q "holds events up to [1-9]" ||
        { cat "$scratch/serve.log"; fail "serve was not restarted mid-publish"; } || return 1
    local got
    got=$("$CHECK" "$CLUSTER" "$scratch/hq.creds" "CS_$(network "$scratch/hq.creds")") ||
        fail "stream: $got" || return 1
    [ "${got##* events }" = "$h" ] || fail "the stream ends at event ${got##* events }, the log at $h"
}

# R8 over NATS: a branch's write reaches the head office once, through the same engine path.
test_write_over_nats_exactly_once() {
    "$BIN" put customer --data "$scratch/b1" --json '{"name":"over nats"}' --wait --timeout-ms 20000 \
        >"$scratch/put.out" 2>&1 || { cat "$scratch/put.out"; return 1; }
    local n
    n=$("$BIN" list customer --data "$hq" --json-out | grep -c '"over nats"')
    [ "$n" = 1 ] || fail "the head office holds $n copies of the write"
}

# Wrong credentials are refused by NATS; they change nothing in the directory.
test_wrong_credentials_refused() {
    python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); c["password"]="wrong"
json.dump(c, open(sys.argv[2],"w"))' "$scratch/b2.creds" "$scratch/bad.creds"
    "$BIN" branch join --data "$scratch/b3" --nats "$LEAFURL" --nats-creds "$scratch/bad.creds" --nats-domain hub \
        --shop "$(cat "$scratch/shop2")" >"$scratch/bad.out" 2>&1
    local rc=$?
    [ $rc -ne 0 ] && grep -q "^error: auth_failed: " "$scratch/bad.out" ||
        { cat "$scratch/bad.out"; fail "exit $rc"; } || return 1
    [ ! -e "$scratch/b3" ] || fail "the refused join left $scratch/b3 behind"
}

# Credentials of network 1 aimed at network 2's stream: nats-server refuses the consumer; and
# network 2's own branch credentials cannot be used by a branch of network 1.
test_other_network_refused() {
    python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); c["network"]=json.load(open(sys.argv[2]))["network"]
json.dump(c, open(sys.argv[3],"w"))' "$scratch/b2.creds" "$scratch/x1.creds" "$scratch/other.creds"
    "$BIN" branch join --data "$scratch/b4" --nats "$LEAFURL" --nats-creds "$scratch/other.creds" --nats-domain hub \
        --shop "$(cat "$scratch/shop2")" >"$scratch/other.out" 2>&1
    local rc=$?
    [ $rc -ne 0 ] && grep -q "^error: auth_failed: .*may not read this stream" "$scratch/other.out" ||
        { cat "$scratch/other.out"; fail "exit $rc"; } || return 1
    kill -TERM "$(cat "$scratch/f1.pid")" 2>/dev/null
    sleep 0.5
    "$BIN" branch pull --data "$scratch/b1" --nats "$LEAFURL" --nats-creds "$scratch/x1.creds" --nats-domain hub \
        >"$scratch/x.out" 2>&1
    rc=$?
    [ $rc -ne 0 ] && grep -q "^error: corrupt: this branch follows network" "$scratch/x.out" ||
        { cat "$scratch/x.out"; fail "exit $rc"; }
}

# R13 over NATS: an unlink is an event of the log; the following branch applies it and stops
# with not_in_network, a single store now.
test_unlink_over_nats() {
    local pid i
    pid=$(cat "$scratch/f2.pid")
    kill -0 "$pid" 2>/dev/null || fail "b2's follower is not running" || return 1
    "$BIN" shop unlink "$(cat "$scratch/shop2")" --data "$hq" >/dev/null || return 1
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && fail "b2's follower still runs after the unlink" && return 1
    grep -q "not_in_network.*unlinked this branch" "$scratch/f2.log" ||
        { tail -n 3 "$scratch/f2.log"; fail "no unlink in b2's log"; }
}

# A gap: the stream no longer holds the first events (an operator purged it); a new branch
# stops with corrupt and a sentence naming the gap, applying nothing (a plain JetStream server).
test_gap_stops_with_corrupt() {
    local hq3=$scratch/hq3 port http i
    read -r port http <<<"$(free_ports 2)"
    nats-server -js -a 127.0.0.1 -p "$port" -m "$http" -sd "$scratch/js-gap" >"$scratch/gap-ns.log" 2>&1 &
    echo $! >>"$scratch/pids"
    healthy "$http" || fail "nats-server did not come up" || return 1
    "$BIN" init --data "$hq3" --name HQ >/dev/null && "$BIN" network create --data "$hq3" --name N >/dev/null ||
        return 1
    local shop
    shop=$(add_shop "$hq3" G1)
    "$BIN" shop nats-credentials "$shop" --data "$hq3" --out "$scratch/g1.creds" >/dev/null || return 1
    "$BIN" serve --data "$hq3" --listen 127.0.0.1:0 --ready-file "$scratch/ready3" \
        --nats "nats://127.0.0.1:$port" >"$scratch/serve3.log" 2>&1 &
    echo $! >>"$scratch/pids"
    wait_file "$scratch/ready3" || fail "serve did not start" || return 1
    for i in 1 2 3; do # one segment each: the stream holds 4 messages
        "$BIN" put service_category --data "$hq3" --json "{\"name\":\"g$i\"}" >/dev/null || return 1
        sleep 0.3
    done
    "$CHECK" "nats://127.0.0.1:$port" - "CS_$(network "$scratch/g1.creds")" | grep -q "^messages 4 " ||
        fail "the stream does not hold 4 segments" || return 1
    "$CHECK" "nats://127.0.0.1:$port" - "CS_$(network "$scratch/g1.creds")" purge 3 >/dev/null ||
        fail "cannot purge" || return 1
    "$BIN" branch join --data "$scratch/g1" --nats "nats://127.0.0.1:$port" \
        --nats-creds "$scratch/g1.creds" --shop "$shop" >"$scratch/gap.out" 2>&1
    local rc=$?
    [ $rc -ne 0 ] && grep -q "^error: corrupt: gap: the stream's next segment starts at event" "$scratch/gap.out" ||
        { cat "$scratch/gap.out"; fail "exit $rc"; }
}

if ! setup >"$scratch/setup.out" 2>&1; then
    sed 's/^/  /' "$scratch/setup.out"
    echo "FAIL setup"
    exit 1
fi
run test_leaf_join_catch_up
run test_kill_mid_stream_catch_up
run test_write_over_nats_exactly_once
run test_wrong_credentials_refused
run test_other_network_refused
run test_unlink_over_nats
run test_gap_stops_with_corrupt
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
