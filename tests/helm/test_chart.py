"""The Helm chart, checked without a cluster: `helm lint --strict`, offline validation of the
rendered manifests against Kubernetes' schemas (kubernetes-validate), the schema's refusal of wrong
values, and the rendered containers against the real binaries (`--check-config` with the rendered
args and env: the ports the probes and Services use are the ports the binary listens on).

Run by `make test`; needs helm (KAPPA_HELM), the built binaries (KAPPA_BIN_DIR) and the venv's
kubernetes-validate."""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "kappa"
HELM = os.environ.get("KAPPA_HELM", str(pathlib.Path.home() / ".cache/kappa/bin/helm"))
PROMTOOL = os.environ.get("KAPPA_PROMTOOL", str(pathlib.Path.home() / ".cache/kappa/bin/promtool"))
BIN_DIR = pathlib.Path(os.environ.get("KAPPA_BIN_DIR", ROOT / "target" / "debug"))
KUBE_VERSION = "1.33.0"
VALUES = {
    "default": CHART / "ci" / "default-values.yaml",
    "production": CHART / "ci" / "production-values.yaml",
    "secure": CHART / "ci" / "secure-values.yaml",
}
BINARIES = {
    "registry": "kappa-registry",
    "predictor": "kappa-predictor",
    "trainer": "kappa-trainer",
    "bridge": "kappa-bridge",
    "console": "kappa-console",
}
HEALTH_NAMES = {
    "registry": "kappa.registry.v1.Registry",
    "predictor": "kappa.predictor.v1.Predictor",
    "trainer": "kappa.trainer.v1.Trainer",
    # The bridge serves no RPC of its own: ready (the whole server) once subscribed.
    "bridge": "",
    # Nor does the console: its pages are on their own port.
    "console": "",
}
# What each values file deploys: the bridge only where an MQTT broker is configured.
DEPLOYED = {"default": set(BINARIES) - {"bridge"}, "production": set(BINARIES), "secure": set(BINARIES)}


def helm(*args, check=True):
    result = subprocess.run([HELM, *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def render(values):
    return render_with(values)


def render_with(*values):
    files = [arg for v in values for arg in ("-f", str(v))]
    out = helm("template", "kappa", str(CHART), *files, "--kube-version", KUBE_VERSION).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("name", VALUES)
def test_helm_lint_strict_passes(name):
    result = helm("lint", "--strict", str(CHART), "-f", str(VALUES[name]), "--kube-version", KUBE_VERSION)
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("name", VALUES)
def test_rendered_manifests_validate_against_kubernetes_schemas(name, tmp_path):
    out = helm("template", "kappa", str(CHART), "-f", str(VALUES[name]), "--kube-version", KUBE_VERSION).stdout
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(out)
    validator = pathlib.Path(sys.executable).with_name("kubernetes-validate")
    result = subprocess.run(
        [str(validator), "--strict", "-k", KUBE_VERSION, str(manifest)], capture_output=True, text=True
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    kinds = {d["kind"] for d in yaml.safe_load_all(out) if d}
    # Everything but the Prometheus Operator's CRDs is checked against a bundled schema.
    for kind in kinds - {"ServiceMonitor", "PrometheusRule"}:
        assert f"passed for resource {kind.lower()}/" in report, f"{kind} was not validated:\n{report}"


def test_each_service_gets_its_own_kafka_principal():
    docs = render(VALUES["production"])
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        component = d["metadata"]["labels"]["app.kubernetes.io/component"]
        env = {e["name"]: e for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
        for name in ["KAPPA_KAFKA_SASL_USERNAME", "KAPPA_KAFKA_SASL_PASSWORD"]:
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == f"kappa-kafka-{component}", (component, name)


def test_production_values_render_what_operators_expect():
    docs = render(VALUES["production"])
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    registry = by_kind["Deployment"]["kappa-registry"]
    assert registry["spec"]["replicas"] == 1 and registry["spec"]["strategy"]["type"] == "Recreate"
    assert "startupProbe" in registry["spec"]["template"]["spec"]["containers"][0]
    predictor = by_kind["Deployment"]["kappa-predictor"]
    assert "replicas" not in predictor["spec"], "the autoscaler owns the predictor's replica count"
    assert by_kind["HorizontalPodAutoscaler"]["kappa-predictor"]["spec"]["minReplicas"] == 3
    assert by_kind["PodDisruptionBudget"]["kappa-predictor"]["spec"]["minAvailable"] == 2
    assert set(by_kind["ServiceMonitor"]) == {
        "kappa-registry", "kappa-predictor", "kappa-trainer", "kappa-bridge", "kappa-console"}
    for name, deployment in by_kind["Deployment"].items():
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        for label in ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
                      "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of"]:
            assert label in labels, f"{name}: {label}"
        assert pod["securityContext"]["runAsNonRoot"] is True
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["requests"] and container["resources"]["limits"]
        env = {e["name"]: e for e in container["env"]}
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        assert env["KAPPA_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == f"kappa-kafka-{component}"
        assert "s3cret" not in yaml.safe_dump(deployment), "no secret value is rendered"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector.observability:4317"
        assert env["KAPPA_MODELS_TOPIC"]["value"] == "ml.kappa.models", "one topic name for all"
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["kafka-tls"] == "/etc/kappa/kafka-tls"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["kafka-tls"]["secret"]["secretName"] == "kappa-kafka-tls"
        props = env["KAPPA_KAFKA_PROPERTIES"]["value"]
        assert "security.protocol=SASL_SSL" in props and "ssl.ca.location=/etc/kappa/kafka-tls/ca.crt" in props
    stream_args = by_kind["Deployment"]["kappa-predictor"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--stream" in stream_args and "--sensor-topic=fleet.sensor-data" in stream_args
    assert "--stream-exactly-once" in stream_args
    assert "--shadow=candidate" in stream_args and "--shadow-topic=shadow-predictions" in stream_args
    bridge = by_kind["Deployment"]["kappa-bridge"]
    assert bridge["spec"]["replicas"] == 3
    container = bridge["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    for arg in ["--mqtt-url=mqtts://hivemq.mqtt.svc:8883", "--mqtt-topic=fleet/+/telemetry",
                "--mqtt-share-group=kappa-bridge", "--mqtt-client-id=$(POD_NAME)", "--max-in-flight=2000",
                "--sensor-topic=fleet.sensor-data"]:
        assert arg in args, (arg, args)
    assert "Secret" not in by_kind, "an existing Secret is used, none is made"
    env = {e["name"]: e for e in container["env"]}
    assert env["KAPPA_MQTT_USERNAME"]["valueFrom"]["secretKeyRef"] == {"name": "kappa-mqtt-bridge", "key": "username"}
    assert env["KAPPA_MQTT_PASSWORD_FILE"]["value"] == "/etc/kappa/mqtt-credentials/password"
    assert env["KAPPA_MQTT_CA"]["value"] == "/etc/kappa/mqtt-ca/ca.crt"
    volumes = {v["name"]: v for v in bridge["spec"]["template"]["spec"]["volumes"]}
    assert volumes["mqtt-credentials"]["secret"]["secretName"] == "kappa-mqtt-bridge"
    assert volumes["mqtt-ca"]["secret"]["secretName"] == "hivemq-ca"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def fill_mount(name, directory):
    """What the Secret or ConfigMap mounted as `name` would hold, made by the real tools."""
    kappa = str(BIN_DIR / "kappa")
    if name in ("tls", "trainer-tls", "registry-tls"):
        # A CA and a certificate for the Service name with both usages, as cert-manager issues them.
        ext = directory / "ext.cnf"
        ext.write_text("subjectAltName=DNS:kappa-registry,DNS:kappa-predictor,DNS:kappa-trainer\n"
                       "extendedKeyUsage=serverAuth,clientAuth\n")
        curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        openssl("req", "-x509", *curve, "-days", "1", "-subj", "/CN=ca", "-keyout", "ca.key", "-out", "ca.crt",
                cwd=directory)
        openssl("req", *curve, "-subj", "/CN=kappa", "-keyout", "tls.key", "-out", "tls.csr", cwd=directory)
        openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-days", "1",
                "-out", "tls.crt", "-extfile", "ext.cnf", cwd=directory)
    elif name == "mqtt-credentials":
        (directory / "password").write_text("mqtt-password\n")
    elif name == "mqtt-ca":
        curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        openssl("req", "-x509", *curve, "-days", "1", "-subj", "/CN=mqtt-ca", "-keyout", "ca.key", "-out", "ca.crt",
                cwd=directory)
    elif name == "auth-tokens":
        line = subprocess.run([kappa, "token", "new", "ops", "--roles", "admin", "--out", str(directory / "t")],
                              check=True, capture_output=True, text=True).stdout
        (directory / "tokens").write_text(line)
    elif name == "mesh-token":
        subprocess.run([kappa, "token", "new", "console", "--roles", "read", "--out", str(directory / "token")],
                       check=True, capture_output=True)
    elif name == "registry-token":
        subprocess.run([kappa, "token", "new", "trainer", "--roles", "read,write", "--out", str(directory / "token")],
                       check=True, capture_output=True)
    elif name in ("trusted-keys", "signing-key"):
        subprocess.run([kappa, "keys", "new", "--out", str(directory / "made")], check=True, capture_output=True)
        made = directory / "made"
        (directory / ("ci.pem" if name == "trusted-keys" else "signing.key")).write_bytes(
            (made / ("kappa-signing.pub.pem" if name == "trusted-keys" else "kappa-signing.key")).read_bytes())
        shutil.rmtree(made)


def check_config(container, tmp_path):
    """Runs the container's binary as the kubelet would (args, env, mounted files), with --check-config."""
    binary = BIN_DIR / pathlib.Path(container["command"][0]).name
    assert binary.exists(), f"{binary} is missing: build the binaries first (make test does)"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    mounts = {m["mountPath"]: tmp_path / m["name"] for m in container.get("volumeMounts", [])}
    for name, target in ((m["name"], mounts[m["mountPath"]]) for m in container.get("volumeMounts", [])):
        target.mkdir(parents=True, exist_ok=True)
        fill_mount(name, target)
    for e in container["env"]:
        if "value" in e:
            value = e["value"]
            # One pass, whole path components: /etc/kappa/mqtt-ca is not /etc/kappa/mqtt.
            value = re.sub(
                "|".join(re.escape(m) + r"(?=/|$)" for m in sorted(mounts, key=len, reverse=True)),
                lambda found: str(mounts[found.group(0)]), value,
            ) if mounts else value
            env[e["name"]] = value
        elif "secretKeyRef" in e.get("valueFrom", {}):
            env[e["name"]] = "secret-from-" + e["valueFrom"]["secretKeyRef"]["name"]
        else:
            env[e["name"]] = "kappa-0"
    if "KAPPA_KAFKA_PROPERTIES_FILE" in env:
        # What the mounted Secret would hold.
        pathlib.Path(env["KAPPA_KAFKA_PROPERTIES_FILE"]).write_text("# from the Secret\nsocket.timeout.ms=30000\n")
    result = subprocess.run(
        [str(binary), *container.get("args", []), "--check-config"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{binary.name} refused its rendered configuration:\n{result.stderr}"
    summary = result.stdout
    assert "secret-from-" not in summary, "--check-config must not print secrets"
    listen = int(re.search(r"listen=[^ ]*:(\d+)", summary).group(1))
    metrics = int(re.search(r"metrics=[^ ]*:(\d+)", summary).group(1))
    assert re.search(r"listen=0\.0\.0\.0:", summary), "in a pod it must listen on all interfaces"
    return listen, metrics, summary, mounts


def probe_target(container, probe, mounts):
    """(port, grpc.health.v1 service) a probe asks. An exec probe (a TLS server) is run with its
    mounted files: it must parse and go for the port (nothing listens here, so it says so)."""
    action = container[probe]
    if "grpc" in action:
        return action["grpc"]["port"], action["grpc"].get("service", "")
    command = action["exec"]["command"]
    assert command[:2] == ["/usr/local/bin/kappa", "health"], command
    local = [str(BIN_DIR / "kappa"), *command[1:]]
    for mount_path, directory in mounts.items():
        local = [a.replace(mount_path, str(directory)) for a in local]
    result = subprocess.run(local, capture_output=True, text=True, env={"PATH": os.environ.get("PATH", "")})
    assert result.returncode == 1 and "cannot reach" in result.stderr, result.stderr
    port = int(re.search(r"https://127\.0\.0\.1:(\d+)", " ".join(command)).group(1))
    service = next(a.split("=", 1)[1] for a in command if a.startswith("--service="))
    return port, service


@pytest.mark.parametrize("name", VALUES)
def test_rendered_containers_match_the_binaries_ports_and_health_names(name, tmp_path):
    docs = render(VALUES[name])
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments} == DEPLOYED[name]
    for deployment in deployments:
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == [f"/usr/local/bin/{BINARIES[component]}"]
        listen, metrics, summary, mounts = check_config(container, tmp_path / component)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        own = {"http": int(re.search(r"http=[^ ]*:(\d+)", summary).group(1))} if component == "console" else {}
        assert ports == {"grpc": listen, "metrics": metrics, **own}, summary
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"]:
            if probe in container:
                assert probe_target(container, probe, mounts)[0] == listen, probe
        assert probe_target(container, "livenessProbe", mounts)[1] == "liveness"
        assert probe_target(container, "readinessProbe", mounts)[1] == HEALTH_NAMES[component]
        service = services[deployment["metadata"]["name"]]
        assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        targets = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
        assert targets == {name: name for name in ports}, "Service ports name the container's ports"
        for monitor in monitors:
            if monitor["metadata"]["name"] == deployment["metadata"]["name"]:
                assert monitor["spec"]["endpoints"][0]["port"] in targets
                assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


@pytest.mark.parametrize(
    "override, complaint",
    [
        ("predictor.maxBatchSize=lots", "/predictor/maxBatchSize"),
        ("predictor.modle=car-anomaly", "additional properties 'modle' not allowed"),
        ("registry.replicas=2", "/registry/replicas"),
        ("kafka.sasl.mechanism=GSSAPI-ish", "/kafka/sasl/mechanism"),
        ("tracing.otlpEndpoint=collector:4317", "/tracing/otlpEndpoint"),
        ("logs.format=xml", "/logs/format"),
        ("predictor.shadow.follow=Candidate", "/predictor/shadow/follow"),
        ("tracing.requestRatio=1.5", "/tracing/requestRatio"),
        ("kafka.topicTiering.localRetention=6 hours", "/kafka/topicTiering/localRetention"),
        ("kafka.topicTiering.retention=-1", "/kafka/topicTiering/retention"),
    ],
)
def test_wrong_values_are_refused_by_the_schema(override, complaint):
    result = helm(
        "template", "kappa", str(CHART), "-f", str(VALUES["default"]), "--set", override,
        "--kube-version", KUBE_VERSION, check=False,
    )
    assert result.returncode != 0, f"{override} was accepted"
    assert complaint in result.stderr, result.stderr


def test_topics_the_services_create_take_the_tiering_values(tmp_path):
    values = tmp_path / "tiering.yaml"
    values.write_text(yaml.safe_dump({
        "kafka": {"topicTiering": {"localRetention": "30m", "retention": "forever"}},
        "bridge": {"sensorTopicPartitions": 6},
    }))
    docs = render_with(VALUES["production"], values)
    for name in ["kappa-predictor", "kappa-bridge"]:
        deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--topic-remote-storage=true" in args, (name, args)
        assert "--topic-local-retention=30m" in args and "--topic-retention=forever" in args, (name, args)
    for name in ["kappa-registry", "kappa-trainer"]:
        deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert not any(a.startswith("--topic-remote-storage") for a in args), "compacted topics are never tiered"


def test_a_missing_bootstrap_server_is_refused_with_what_to_set():
    result = helm("template", "kappa", str(CHART), "--set", "insecure=true", "--kube-version", KUBE_VERSION, check=False)
    assert result.returncode != 0
    assert "kafka.bootstrapServers is required" in result.stderr


def rendered_notes(tmp_path, *args):
    """NOTES.txt as `helm install` prints it (`helm template` leaves it out, and an offline
    install cannot be told the Kubernetes version): rendered from a copy of the chart."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes-source.txt")
    (chart / "templates" / "notes.yaml").write_text(
        'notes: |\n{{ tpl (.Files.Get "notes-source.txt") . | indent 2 }}\n')
    out = helm("template", "kappa", str(chart), *args, "--show-only", "templates/notes.yaml",
               "--kube-version", KUBE_VERSION).stdout
    return yaml.safe_load(out)["notes"]


def test_a_default_install_is_secure_or_refuses_to_render_and_a_lab_says_so_loudly(tmp_path):
    plain = ["--set", "kafka.bootstrapServers=kafka:9092", "--kube-version", KUBE_VERSION]
    refused = helm("template", "kappa", str(CHART), *plain, check=False)
    assert refused.returncode != 0
    for missing in ["security.tls.secrets.registry", "security.tls.secrets.predictor", "security.auth.tokensSecret",
                    "security.signing.trustedKeysConfigMap", "security.signing.registryKeySecret",
                    "kafka.sasl.enabled=true", "insecure=true"]:
        assert missing in refused.stderr, (missing, refused.stderr)
    # A shared Kafka principal is not enough: each component needs its own.
    shared = helm("template", "kappa", str(CHART), "-f", str(VALUES["secure"]), "--set", "kafka.sasl.secrets.trainer=",
                  "--kube-version", KUBE_VERSION, check=False)
    assert shared.returncode != 0 and "kafka.sasl.secrets.trainer" in shared.stderr, shared.stderr
    no_policy = helm("template", "kappa", str(CHART), "-f", str(VALUES["secure"]), "--set", "networkPolicy.enabled=false",
                     "--kube-version", KUBE_VERSION, check=False)
    assert no_policy.returncode != 0 and "networkPolicy.enabled=true" in no_policy.stderr, no_policy.stderr
    # Trusted keys without the registry's own key would leave predictors following no alias move.
    unsigned_moves = helm("template", "kappa", str(CHART), "-f", str(VALUES["default"]),
                          "--set", "security.signing.trustedKeysConfigMap=keys", "--kube-version", KUBE_VERSION,
                          check=False)
    assert unsigned_moves.returncode != 0 and "registryKeySecret is required" in unsigned_moves.stderr
    assert "INSECURE LAB INSTALL" in rendered_notes(tmp_path / "lab", "-f", str(VALUES["default"]))
    assert "INSECURE" not in rendered_notes(tmp_path / "secure", "-f", str(VALUES["secure"]))
    # In a lab without TLS the trainer is told its token may travel in plaintext; never otherwise.
    for values, allowed in [(["--set", "security.auth.trainerTokenSecret=t"], True), ([], False)]:
        out = helm("template", "kappa", str(CHART), "-f", str(VALUES["default"]), *values,
                   "--kube-version", KUBE_VERSION).stdout
        trainer = next(d for d in yaml.safe_load_all(out)
                       if d and d["kind"] == "Deployment" and d["metadata"]["name"] == "kappa-trainer")
        env = {e["name"] for e in trainer["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert ("KAPPA_REGISTRY_ALLOW_PLAINTEXT_TOKEN" in env) == allowed


def test_the_dockerfile_builds_the_binaries_and_exposes_the_ports_the_chart_uses():
    dockerfile = (ROOT / "Dockerfile").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for component, binary in BINARIES.items():
        assert f"--bin {binary}" in dockerfile and f"target/release/{binary}" in dockerfile
        assert (BIN_DIR / binary).exists()
        # The binary's own default ports are the chart's and the image's.
        default = subprocess.run([str(BIN_DIR / binary), "--check-config", *(
            ["--model", "m"] if component == "predictor" else [])], capture_output=True, text=True)
        assert default.returncode == 0, default.stderr
        listen = int(re.search(r"listen=[^ ]*:(\d+)", default.stdout).group(1))
        metrics = int(re.search(r"metrics=[^ ]*:(\d+)", default.stdout).group(1))
        assert values[component]["grpcPort"] == listen and values[component]["metricsPort"] == metrics
        expose = re.search(r"^EXPOSE (.+)$", dockerfile, re.M).group(1).split()
        assert str(listen) in expose and str(metrics) in expose
    assert re.search(r"^USER 10001", dockerfile, re.M), "the image runs as the chart's non-root user"
    assert values["podSecurityContext"]["runAsUser"] == 10001


def test_helm_test_pod_runs_a_real_cli_command_against_the_registry_service():
    docs = render(VALUES["default"])
    pods = [d for d in docs if d["kind"] == "Pod"]
    assert len(pods) == 1 and pods[0]["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pods[0]["spec"]["containers"][0]
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "kappa-registry")
    grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert f"--registry=http://kappa-registry:{grpc_port}" in container["args"]
    # The command parses and reaches for the registry (nothing listens here, so it says so).
    args = [a.replace(f"kappa-registry:{grpc_port}", "127.0.0.1:9") for a in container["args"]]
    result = subprocess.run([str(BIN_DIR / "kappa"), *args], capture_output=True, text=True)
    assert result.returncode == 1 and "cannot reach kappa-registry" in result.stderr, result.stderr


def test_secure_values_turn_on_tls_tokens_signatures_and_a_network_policy_per_component(tmp_path):
    docs = render(VALUES["secure"])
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    summaries = {}
    for name, deployment in by_kind["Deployment"].items():
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == f"kappa-{component}", "one identity per component"
        assert pod["serviceAccountName"] in by_kind["ServiceAccount"]
        summaries[component] = check_config(pod["containers"][0], tmp_path / component)[2]
    for component in BINARIES:
        assert "tls=mutual" in summaries[component], summaries[component]
        assert "auth=1 principals" in summaries[component], summaries[component]
    # The registry signs alias moves with its own key, mounted from its own Secret.
    assert re.search(r"pointer_key=[0-9a-f]{16}", summaries["registry"]), summaries["registry"]
    registry_pod = by_kind["Deployment"]["kappa-registry"]["spec"]["template"]["spec"]
    assert {v["name"]: v for v in registry_pod["volumes"]}["signing-key"]["secret"]["secretName"] == \
        "kappa-registry-signing-key"
    trainer_args = by_kind["Deployment"]["kappa-trainer"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--registry=https://kappa-registry:50051" in trainer_args
    policies = by_kind["NetworkPolicy"]
    assert set(policies) == {"kappa-registry", "kappa-predictor", "kappa-trainer", "kappa-bridge", "kappa-console"}
    # The console reads the registry and the predictors and runs backtests: their policies let it in.
    console_pod = by_kind["Deployment"]["kappa-console"]["spec"]["template"]["metadata"]["labels"]
    for policy in ("kappa-registry", "kappa-predictor", "kappa-trainer"):
        allowed = [p["podSelector"].get("matchLabels", {}) for p in policies[policy]["spec"]["ingress"][0]["from"]]
        assert any(a.items() <= console_pod.items() for a in allowed), policy
    assert [p["port"] for p in policies["kappa-console"]["spec"]["ingress"][0]["ports"]] == ["grpc", "http"]
    registry_from = policies["kappa-registry"]["spec"]["ingress"][0]["from"]
    assert {"app.kubernetes.io/component": "trainer"}.items() <= registry_from[1]["podSelector"]["matchLabels"].items()
    assert policies["kappa-predictor"]["spec"]["ingress"][0]["from"][0] == {
        "podSelector": {"matchLabels": {"kappa.example.com/client": "predictor"}}}
    for policy in policies.values():
        assert [r["ports"][0]["port"] for r in policy["spec"]["ingress"]] == ["grpc", "metrics"]
    test_pod = next(iter(by_kind["Pod"].values()))["spec"]["containers"][0]
    assert "--registry=https://kappa-registry:50051" in test_pod["args"] and "--tls-ca=/etc/kappa/registry-tls/ca.crt" in test_pod["args"]


def test_the_bridge_gets_its_mqtt_credentials_from_a_secret_the_chart_makes_or_names(tmp_path):
    docs = render(VALUES["secure"])
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert secret["metadata"]["name"] == "kappa-bridge-mqtt"
    assert secret["data"] == {"username": "a2FwcGEtYnJpZGdl", "password": "czNjcmV0"}
    bridge = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "kappa-bridge")
    assert "s3cret" not in yaml.safe_dump(bridge) and "czNjcmV0" not in yaml.safe_dump(bridge)
    pod = bridge["spec"]["template"]["spec"]
    assert {v["name"]: v for v in pod["volumes"]}["mqtt-credentials"]["secret"]["secretName"] == "kappa-bridge-mqtt"
    assert "checksum/mqtt-credentials" in bridge["spec"]["template"]["metadata"]["annotations"]
    assert "--sensor-topic-partitions=12" in pod["containers"][0]["args"]
    # The bridge takes the rendered flags, TLS on its own gRPC port included.
    summary = check_config(pod["containers"][0], tmp_path)[2]
    assert "mqtt=mqtt://hivemq.mqtt.svc:1883" in summary and "tls=mutual" in summary, summary


@pytest.mark.parametrize(
    "overrides, complaint",
    [
        (["bridge.enabled=true"], "bridge.mqtt.url is required"),
        (["bridge.enabled=true", "bridge.mqtt.url=mqtts://broker:8883"], "bridge.mqtt.tls.caSecret is required"),
        (["bridge.enabled=true", "bridge.mqtt.url=http://broker"], "/bridge/mqtt/url"),
        (["bridge.enabled=true", "bridge.mqtt.url=mqtt://b", "bridge.mqtt.credentials.username=u"],
         "bridge.mqtt.credentials.password is required"),
        (["bridge.maxInFlight=0"], "/bridge/maxInFlight"),
    ],
)
def test_a_bridge_without_what_it_needs_is_refused_with_what_to_set(overrides, complaint):
    args = [a for o in overrides for a in ("--set", o)]
    result = helm("template", "kappa", str(CHART), "-f", str(VALUES["default"]), *args, "--kube-version", KUBE_VERSION,
                  check=False)
    assert result.returncode != 0, f"{overrides} was accepted"
    assert complaint in result.stderr, result.stderr


def test_the_monitoring_alerts_pass_promtool_check_and_its_unit_tests(tmp_path):
    docs = render(VALUES["production"])
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    shutil.copy(pathlib.Path(__file__).with_name("monitoring-rules.test.yaml"), tmp_path / "test.yaml")
    for args in (["check", "rules", "rules.yaml"], ["test", "rules", "test.yaml"]):
        result = subprocess.run([PROMTOOL, *args], cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    assert not [d for d in render(VALUES["default"]) if d["kind"] == "PrometheusRule"], "off by default"


def test_the_dashboard_is_valid_json_on_documented_series():
    docs = render(VALUES["production"])
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "kappa-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["kappa-model-monitoring.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    readme = (ROOT / "docs" / "observability.md").read_text()
    for name in {n for e in exprs for n in re.findall(r"kappa_[a-z_]+", e)}:
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        assert f"`{base}" in readme, f"the dashboard uses {name}, which docs/observability.md does not document"
    assert any("kappa_predictor_feature_drift_psi" in e for e in exprs)


@pytest.mark.parametrize("name", ["default", "secure"])
def test_the_console_shows_every_predictor_pod_through_a_headless_service(name):
    docs = render(VALUES[name])
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    args = deployments["kappa-console"]["spec"]["template"]["spec"]["containers"][0]["args"]
    (replicas,) = [a.split("=", 1)[1] for a in args if a.startswith("--predictor-replicas=")]
    assert not any(a.startswith("--predictor=") for a in args), args
    scheme, rest = replicas.split("://")
    host, port = rest.split(":")
    headless = services[host]
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    pods = deployments["kappa-predictor"]["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= pods.items()
    # Only gRPC: the ServiceMonitor scrapes `metrics`, so no pod is scraped twice.
    assert [(p["name"], p["port"]) for p in headless["spec"]["ports"]] == [("grpc", int(port))]
    tls_names = [a.split("=", 1)[1] for a in args if a.startswith("--predictor-replicas-tls-name=")]
    if name == "secure":
        assert scheme == "https" and tls_names == ["kappa-predictor"] and "kappa-predictor" in services
    else:
        assert scheme == "http" and tls_names == []
