#!/usr/bin/env bash
# Starts N of llama.cpp's rpc-server (CPU device) on 127.0.0.1, each on a
# free port, runs COMMAND with their endpoints in RPC_ENDPOINTS
# ("127.0.0.1:PORT,127.0.0.1:PORT"), and stops them when COMMAND ends,
# however it ends. Exits with COMMAND's status.
#
#   scripts/with-rpc-servers.sh RPC_SERVER N COMMAND [ARGS...]
#
# The servers' output goes to $TMPDIR/kvec-rpc-server-PORT.log.
set -euo pipefail

if [ $# -lt 3 ]; then
    echo "usage: $0 RPC_SERVER N COMMAND [ARGS...]" >&2
    exit 2
fi
server=$1 count=$2
shift 2
[ -x "$server" ] || { echo "with-rpc-servers: no rpc-server at $server (make llama builds it)" >&2; exit 1; }
case "$count" in [1-8]) ;; *) echo "with-rpc-servers: N is 1..8" >&2; exit 2 ;; esac
command -v python3 > /dev/null || { echo "with-rpc-servers: python3 is needed to find free ports" >&2; exit 1; }

pids=()
stop() { for pid in ${pids[@]+"${pids[@]}"}; do kill "$pid" 2> /dev/null || true; done; wait 2> /dev/null || true; }
trap stop EXIT

endpoints=
for ((i = 0; i < count; i++)); do
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    log=${TMPDIR:-/tmp}/kvec-rpc-server-$port.log
    "$server" -H 127.0.0.1 -p "$port" -t 1 > "$log" 2>&1 &
    pids+=($!)
    # ready when it accepts a connection (at most 30 s)
    # (the port was free a moment ago; if another process took it, the
    # server exits, which is checked before each connection attempt)
    for ((t = 0; t < 300; t++)); do
        if ! kill -0 "${pids[-1]}" 2> /dev/null; then
            echo "with-rpc-servers: rpc-server on port $port exited; its log:" >&2; cat "$log" >&2; exit 1
        fi
        if python3 -c "import socket, sys; socket.create_connection(('127.0.0.1', $port), 0.5).close()" 2> /dev/null; then break; fi
        sleep 0.1
    done
    [ $t -lt 300 ] || { echo "with-rpc-servers: rpc-server on port $port did not start in 30 s" >&2; exit 1; }
    endpoints=${endpoints:+$endpoints,}127.0.0.1:$port
done
echo "with-rpc-servers: $count rpc-server(s) at $endpoints" >&2
RPC_ENDPOINTS=$endpoints "$@"
