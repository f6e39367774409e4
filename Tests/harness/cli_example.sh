#!/usr/bin/env bash
# How a shell script uses `sockflow run`: start a server, get its port the moment
# it listens, drive traffic, stop it, assert on the records. Run by
# HarnessExampleTests.shellScript; usage: cli_example.sh [path/to/sockflow]
set -euo pipefail
sockflow=${1:-sockflow}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
fail() { echo "cli_example: $*" >&2; exit 1; }

# 1. start the server; this returns when it listens, with its listen record
listen=$("$sockflow" run --until listen --output "$out" -- python3 -m http.server 0 --bind 127.0.0.1)
port=$(jq -r .flow.local.port <<<"$listen")
pid=$(jq -r .process.pid <<<"$listen")
[[ "$port" =~ ^[0-9]+$ ]] || fail "no port in: $listen"

# 2. drive it
body=$(curl -sf "http://127.0.0.1:$port/") || fail "curl failed"
bytes=${#body}

# 3. stop it; the supervisor writes the rest to $out and removes the cgroup
kill "$pid"
for _ in $(seq 100); do grep -q '"event":"stop"' "$out" && break; sleep 0.05; done

# 4. assert on the records
jq -e 'select(.event=="stop") | .reason=="exited"' "$out" >/dev/null || fail "no stop record"
accept=$(jq -c "select(.event==\"accept\" and .flow.local.port==$port)" "$out")
[[ -n "$accept" ]] || fail "no accept record"
[[ $(jq .process.pid <<<"$accept") == "$pid" ]] || fail "accept not owned by the server: $accept"
[[ $(jq -r .flow.listener <<<"$accept") == $(jq -r .flow.id <<<"$listen") ]] || fail "accept not linked to its listener"
close=$(jq -c "select(.event==\"close\" and .flow.local.port==$port and .flow.remote!=null)" "$out")
out_bytes=$(jq .bytes_out <<<"$close")
(( out_bytes > bytes )) || fail "the server sent $out_bytes bytes, less than the body ($bytes)"

# 5. exits early: non-zero, with the command's status in the message
if msg=$("$sockflow" run --until listen -- sh -c 'exit 4' 2>&1); then fail "exit 4 accepted"; fi
[[ "$msg" == *"exited with status 4 before it listened"* ]] || fail "message: $msg"
echo "cli_example: ok (port $port, $out_bytes bytes served)"
