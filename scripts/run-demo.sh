#!/usr/bin/env bash
# `make run`: control plane + sidecar on embedded defaults, the demo tools registered
# and granted to a demo agent, then prints what to try. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=target/debug
CP_ADDR=127.0.0.1:50051
SIDECAR_ADDR=127.0.0.1:50061
MCP_ADDR=127.0.0.1:50062
TOOLS_ADDR=127.0.0.1:50071
CONSOLE_ADDR=127.0.0.1:50052
STATE=.toolplane
mkdir -p "$STATE"
GRPCURL=$(command -v grpcurl || echo .venv/bin/grpcurl)

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

for port in 50051 50052 50061 50062 50071; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "port $port is already in use; stop whatever listens there first" >&2; exit 1
  fi
done

# Wait for "<name> listening ..." on a process's stdout file.
wait_listening() {
  for _ in $(seq 1 100); do
    grep -q listening "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not start; see ${1%.out}.log" >&2; exit 1
}

export TOOLPLANE_ADMIN_TOKEN="tpk_admin_$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export TOOLPLANE_MASTER_KEY="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# Signs the audit chains' checkpoints; kept out of the (in-memory) store.
export TOOLPLANE_AUDIT_SIGNING_KEY="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export TOOLPLANE_TOKEN="$TOOLPLANE_ADMIN_TOKEN" TOOLPLANE_SERVER="http://$CP_ADDR"

"$BIN/toolplane-demo-tools" --listen "$TOOLS_ADDR" >"$STATE/tools.out" 2>"$STATE/tools.log" & pids+=($!)
TOOLPLANE_CONSOLE_LISTEN="$CONSOLE_ADDR" "$BIN/toolplane-control-plane" --listen "$CP_ADDR" >"$STATE/cp.out" 2>"$STATE/cp.log" & pids+=($!)
wait_listening "$STATE/tools.out" "demo tools"
wait_listening "$STATE/cp.out" "control plane"

"$BIN/toolctl" tools register examples/tools/*.json
AGENT=$("$BIN/toolctl" -o value agents create demo-agent --skill math --skill text)
for tool in word_count unit_convert calculator sha256; do
  "$BIN/toolctl" permissions grant --agent "$AGENT" --tool "$tool" >/dev/null
done
AGENT_TOKEN=$("$BIN/toolctl" -o value tokens issue --role agent --agent "$AGENT")
SIDECAR_TOKEN=$("$BIN/toolctl" -o value tokens issue --role sidecar)

TOOLPLANE_SIDECAR_TOKEN="$SIDECAR_TOKEN" "$BIN/toolplane-sidecar" --listen "$SIDECAR_ADDR" \
  --control-plane "http://$CP_ADDR" --spool-dir "$STATE/spool" --mcp-listen "$MCP_ADDR" >"$STATE/sidecar.out" 2>"$STATE/sidecar.log" & pids+=($!)
wait_listening "$STATE/sidecar.out" "sidecar"

AUDIT_PUBLIC_KEY=$("$BIN/toolctl" -o value audit public-key)

cat >"$STATE/demo.env" <<ENV
export TOOLPLANE_ADMIN_TOKEN=$TOOLPLANE_ADMIN_TOKEN
export AGENT_TOKEN=$AGENT_TOKEN
export AGENT_ID=$AGENT
export AUDIT_PUBLIC_KEY=$AUDIT_PUBLIC_KEY
ENV
chmod 600 "$STATE/demo.env"

cat <<MSG

toolplane is running (state in memory; logs in $STATE/*.log)
  control plane  $CP_ADDR    sidecar  $SIDECAR_ADDR    demo tools  http://$TOOLS_ADDR
  MCP for agents http://$MCP_ADDR/mcp  (authorization: Bearer \$AGENT_TOKEN)

Tokens are in $STATE/demo.env:   source $STATE/demo.env

Admin console: http://$CONSOLE_ADDR/
  log in with the admin token:  $TOOLPLANE_ADMIN_TOKEN
  (or a read-only one:  $BIN/toolctl --token "\$TOOLPLANE_ADMIN_TOKEN" -o value tokens issue --role auditor)

Invoke a tool through the sidecar as the demo agent:
  $GRPCURL -plaintext -H "authorization: Bearer \$AGENT_TOKEN" \\
    -d '{"tool_name":"unit_convert","parameters":{"value":100,"from":"c","to":"f"}}' \\
    $SIDECAR_ADDR toolplane.v1.Executor/Invoke

  $BIN/toolctl --token "\$AGENT_TOKEN" invoke calculator --params '{"expression":"2*(3+4)"}'

Let toolplane pick the tool for a task, or pick and run it in one call:
  $GRPCURL -plaintext -H "authorization: Bearer \$AGENT_TOKEN" \\
    -d '{"task_description":"convert 100 degrees celsius to fahrenheit"}' \\
    $CP_ADDR toolplane.v1.ToolSelector/SelectTool
  $GRPCURL -plaintext -H "authorization: Bearer \$AGENT_TOKEN" \\
    -d '{"task_description":"convert a temperature","parameters":{"value":100,"from":"c","to":"f"}}' \\
    $SIDECAR_ADDR toolplane.v1.Executor/ExecuteTask

Check the audit trail, online and offline against the signing key's public key:
  $BIN/toolctl --token "\$TOOLPLANE_ADMIN_TOKEN" audit checkpoint
  $BIN/toolctl --token "\$TOOLPLANE_ADMIN_TOKEN" audit export --out $STATE/trail.jsonl
  $BIN/toolctl audit verify --public-key "\$AUDIT_PUBLIC_KEY" --file $STATE/trail.jsonl

List services and tools:
  $GRPCURL -plaintext $CP_ADDR list
  $BIN/toolctl --token "\$TOOLPLANE_ADMIN_TOKEN" tools list

Press Ctrl-C to stop.
MSG
wait -n "${pids[@]}"
