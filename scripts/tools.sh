#!/usr/bin/env bash
# Installs the pinned Go-built tools the tests and docs use into ~/.cache/kappa/bin (outside the
# clone, so fresh clones reuse them). Prints the bin folder.
set -euo pipefail
bin=${KAPPA_TOOLS_BIN:-$HOME/.cache/kappa/bin}
mkdir -p "$bin"
install_go_tool() { # name module@version
  if [ -x "$bin/$1" ]; then return; fi
  command -v go >/dev/null || { echo "Go is required to build $1: install Go 1.22+ and retry." >&2; exit 1; }
  echo "Building $1 ($2) into $bin..." >&2
  (cd /tmp && GOBIN="$bin" GOFLAGS=-mod=mod go install "$2") >&2
}
install_go_tool grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3

# A Python venv with NVIDIA's tritonclient (the standard Open Inference Protocol client the
# predictor tests talk to) and prometheus_client (whose OpenMetrics parser checks /metrics).
venv=${KAPPA_PY_VENV:-$HOME/.cache/kappa/py}
if ! "$venv/bin/python" -c "import tritonclient.grpc, numpy, prometheus_client" 2>/dev/null; then
  echo "Installing tritonclient[grpc] and prometheus-client into $venv..." >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q "tritonclient[grpc]==2.73.0" "prometheus-client==0.26.0" >&2
fi
echo "$bin"
