#!/usr/bin/env bash
# Installs the pinned tools the tests use into ~/.cache/kappa/bin (outside the clone, so fresh
# clones reuse them), and the tests' Python venv. Prints the bin folder.
#   scripts/tools.sh          what `make test` needs
#   scripts/tools.sh --lint   cargo-deny only, for `make lint`
set -euo pipefail
bin=${KAPPA_TOOLS_BIN:-$HOME/.cache/kappa/bin}
mkdir -p "$bin"

if [ "${1:-}" = --lint ]; then
  # cargo-deny, built from crates.io into the same folder.
  if ! "$bin/cargo-deny" --version 2>/dev/null | grep -q "0.20.2"; then
    echo "Building cargo-deny 0.20.2 into $bin (a few minutes, once)..." >&2
    CARGO_TARGET_DIR=${KAPPA_TOOLS_TARGET:-$HOME/.cache/kappa/tools-target} \
      cargo install --locked --quiet --root "$bin/.cargo-root" cargo-deny@0.20.2 >&2
    ln -sf "$bin/.cargo-root/bin/cargo-deny" "$bin/cargo-deny"
  fi
  echo "$bin"
  exit 0
fi

install_go_tool() { # name module@version
  if [ -x "$bin/$1" ]; then return; fi
  command -v go >/dev/null || { echo "Go is required to build $1: install Go 1.22+ and retry." >&2; exit 1; }
  echo "Building $1 ($2) into $bin..." >&2
  (cd /tmp && GOBIN="$bin" GOFLAGS=-mod=mod go install "$2") >&2
}
install_go_tool grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3
install_go_tool helm helm.sh/helm/v3/cmd/helm@v3.22.0
# promtool checks and unit-tests the chart's alerting rules. Prometheus' go.mod has exclude
# directives, which `go install module@version` refuses, so it is built inside its module.
if [ ! -x "$bin/promtool" ]; then
  echo "Building promtool (prometheus v0.307.3) into $bin (several minutes, once)..." >&2
  (cd /tmp && go mod download github.com/prometheus/prometheus@v0.307.3) >&2
  (cd "$(go env GOMODCACHE)/github.com/prometheus/prometheus@v0.307.3" && go build -o "$bin/promtool" ./cmd/promtool) >&2
fi

# A Python venv with NVIDIA's tritonclient (the standard Open Inference Protocol client the
# predictor tests talk to), prometheus_client (whose OpenMetrics parser checks /metrics), and
# kubernetes-validate with pytest for the Helm chart's tests, and paho-mqtt (a third-party MQTT
# client) for the bridge's; scikit-learn, skl2onnx and ONNX Runtime make the ONNX fixtures and
# their reference outputs at test time (tests/onnx/sklearn_fixtures.py), and with pandas and
# confluent-kafka run the bring-your-own-model example (examples/); pyarrow for the Python
# package's Arrow tables, OpenTelemetry's SDK for its trace-context test, pdoc for its API
# reference, and Playwright to drive the distribution's Chromium through the console's pages (its
# own browser downloads are never used). skl2onnx 1.20 converts with the onnx it finds, and refuses newer opsets than it
# knows: onnx stays at 1.17.
venv=${KAPPA_PY_VENV:-$HOME/.cache/kappa/py}
if ! "$venv/bin/python" -c "import tritonclient.grpc, numpy, prometheus_client, kubernetes_validate, pytest, yaml, paho.mqtt, sklearn, skl2onnx, onnxruntime, onnx, pandas, confluent_kafka, pyarrow, opentelemetry.sdk, pdoc, playwright.sync_api; assert onnx.__version__ == '1.17.0' and skl2onnx.__version__ == '1.20.0'" 2>/dev/null; then
  echo "Installing tritonclient[grpc], prometheus-client, kubernetes-validate, pytest, paho-mqtt, scikit-learn, skl2onnx, onnxruntime, pandas, confluent-kafka, pyarrow, opentelemetry-sdk, pdoc and playwright into $venv..." >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q "tritonclient[grpc]==2.73.0" "prometheus-client==0.26.0" \
    "kubernetes-validate==1.37.0" "pytest==8.4.2" "paho-mqtt==2.2.0" \
    "scikit-learn==1.9.1" "skl2onnx==1.20.0" "onnx==1.17.0" "onnxruntime==1.31.1" \
    "pandas==3.1.1" "confluent-kafka==2.16.1" "pyarrow==26.0.1" \
    "opentelemetry-api==1.45.2" "opentelemetry-sdk==1.45.2" "pdoc==16.0.0" "playwright==1.65.3" >&2
fi
# The notebook's venv (examples/notebook, run by the Python package's tests): PyTorch for the
# autoencoder, with the ONNX exporter's onnx and onnxscript, which need a newer onnx than
# skl2onnx 1.20's default opsets allow (so the notebook names its opsets), hence a venv of its
# own. PyTorch from PyPI brings its CUDA libraries: several GB, once. The bench's PyTorch
# baseline uses it too.
notebook=${KAPPA_NOTEBOOK_VENV:-$HOME/.cache/kappa/notebook-venv}
if ! "$notebook/bin/python" -c "import torch, onnxscript, sklearn, skl2onnx, onnxruntime, pandas; assert torch.__version__.startswith('2.15.0')" 2>/dev/null; then
  echo "Installing PyTorch 2.15, onnxscript, scikit-learn, skl2onnx, onnxruntime and pandas into $notebook (several GB, once)..." >&2
  python3 -m venv "$notebook" >&2
  "$notebook/bin/pip" install -q "torch==2.15.0" "onnx==1.23.2" "onnxscript==0.7.2" \
    "scikit-learn==1.9.1" "skl2onnx==1.20.0" "onnxruntime==1.31.1" "pandas==3.1.1" "numpy==2.4.6" >&2
fi
# Ruff lints and formats the Python package (python/).
if ! "$venv/bin/ruff" --version 2>/dev/null | grep -q "0.14.0"; then
  "$venv/bin/pip" install -q "ruff==0.14.0" >&2
fi
echo "$bin"
