#!/usr/bin/env bash
# make-seeds.sh [BUILD_DIR]: makes a small network with the CLI (head office, one branch, items
# of several types, a delete, a switch, sync points), exports its log, and writes the fuzz
# seed corpora from it (make-seeds.py).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
B="${1:-$here/../../build}/tools/chainsync"
S="$(mktemp -d)"
trap 'rm -rf "$S"' EXIT
H="$S/hq"
$B init --data "$H" --name HQ --json-out | /usr/bin/python3 -c \
    'import json,sys; print(json.load(sys.stdin)["id"])' >"$S/head-id"
$B network create --data "$H" --name Net >/dev/null
echo password1 | $B shop add --data "$H" --name "Downtown ünï" --password-stdin --json-out |
    /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' >"$S/branch-id"
id() { /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }
C=$($B put service_category --data "$H" --json-out \
    --json '{"name":"Grooming ✂","price_table":[{"tier":"small","price_cents":3000}]}' | id)
svc='{"name":"Bath","category":'$C',"duration_min":30,"price_table":[{"tier":"small","price_cents":3000}],"active":true}'
$B put service --data "$H" --json "$svc" >/dev/null
tpl='{"name":"Remind","channel":"whatsapp","body":"Olá {name}","trigger":{"event":"booking","offset_min":-60},"schedule":{"hour":9,"weekdays":[1,2,3]}}'
$B put notification_template --data "$H" --json "$tpl" >/dev/null
chk='{"name":"Check","items":["a","b"],"category":'$C'}'
K=$($B put checklist --data "$H" --json-out --json "$chk" | id)
$B sync --data "$H" >/dev/null
$B log export --data "$H" --out "$S/hq.seg" >/dev/null
cust='{"name":"Ana","phone":"+55 11 9999","email":"a@b.c"}'
$B put customer --data "$H" --json "$cust" >/dev/null
$B del checklist "$K" --data "$H" >/dev/null
$B shop switch "$(cat "$S/branch-id")" off --data "$H" >/dev/null
$B sync --data "$H" >/dev/null
$B log export --data "$H" --from 1 --out "$S/hq2.seg" >/dev/null
$B log export --data "$H" --from 9 --out "$S/tail.seg" >/dev/null
$B put --help 2>&1 | sed -n 's/^  \([a-z_]*\) (\(synced\|shared\|local\)).*/\1/p' >"$S/types"
cat >"$S/puts.json" <<JSON
[["service_category", {"name":"Grooming","price_table":[{"tier":"small","price_cents":3000}]}],
 ["service", $svc], ["notification_template", $tpl], ["checklist", $chk],
 ["customer", $cust], ["segment", {"name":"Seg","rules":[{"field":"city","op":"eq","value":"SP"}]}],
 ["plan", {"name":"P","period":"monthly","items":[{"service":1,"quantity":2}],"price_cents":100}],
 ["staff", {"name":"Zé","role":"groomer"}], ["advanced_setting", {"key":"k","value":"v"}]]
JSON
/usr/bin/python3 "$here/make-seeds.py" "$S"
