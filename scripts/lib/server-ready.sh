# Sourced by the measuring scripts, which start anoclip-server with --ready-file.
# wait_ready FILE PID LOG NAME: polls every 10 ms, up to 10 minutes, until the server writes its
# ready file (once it is SERVING); exits with the server's log if the server ends first.
wait_ready() {
  local file=$1 pid=$2 log=$3 name=$4
  for _ in $(seq 1 60000); do
    [ -f "$file" ] && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.01
  done
  echo "$name: the server was not ready in 10 minutes" >&2
  exit 1
}
# ready_port FILE KEY: a port from the ready file ("grpc_port" or "metrics_port").
ready_port() { sed -E "s/.*\"$2\": *([0-9]+).*/\1/" "$1"; }
