# Sourced by the local brokers' and Jaeger's scripts: the life cycle of a background process
# tracked by a pid file, so each script stops only what it started.

# daemon_running PIDFILE: the process the pid file names is alive.
daemon_running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# daemon_start PIDFILE LOGFILE COMMAND...: runs COMMAND in the background, detached from the
# terminal, its output appended to LOGFILE, and records its pid.
daemon_start() {
  local pidfile=$1 logfile=$2; shift 2
  nohup "$@" >>"$logfile" 2>&1 &
  echo $! >"$pidfile"
}

# daemon_stop PIDFILE NAME SECONDS: SIGTERM, then up to SECONDS for a clean exit, then SIGKILL.
daemon_stop() {
  local pidfile=$1 name=$2 seconds=$3
  if ! daemon_running "$pidfile"; then
    echo "No $name started by this script is running."
    rm -f "$pidfile"
    return
  fi
  local pid; pid=$(cat "$pidfile")
  kill "$pid"
  local waited=0
  while [ "$waited" -lt $((seconds * 10)) ]; do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; echo "$name stopped."; return; }
    sleep 0.1
    waited=$((waited + 1))
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  echo "$name did not stop within $seconds s and was killed."
}

# daemon_kill PIDFILE: SIGKILL, as a crash would.
daemon_kill() {
  if daemon_running "$1"; then kill -9 "$(cat "$1")"; fi
  rm -f "$1"
}
