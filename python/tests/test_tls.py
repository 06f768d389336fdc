"""The package against a registry serving TLS with tokens: the right CA and token work, a
read-only token cannot publish, a wrong CA fails with an error that says so."""

from __future__ import annotations

import pathlib
import subprocess

import grpc
import pytest

from kappa import KappaError, PermissionDenied, Predictor, Registry, Security, load_manifest

from conftest import kappa


def ca_and_server_certificate(directory: pathlib.Path, name: str) -> pathlib.Path:
    """A CA and a certificate it signs for 127.0.0.1 (ca.crt, tls.crt, tls.key), made by openssl."""
    directory.mkdir()
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl(
        "req", "-x509", *curve, "-days", "1", "-subj", f"/CN={name}", "-keyout", "ca.key", "-out", "ca.crt"
    )
    openssl("req", *curve, "-subj", "/CN=kappa", "-keyout", "tls.key", "-out", "tls.csr")
    openssl(
        "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-days", "1",
        "-out", "tls.crt", "-extfile", "ext.cnf",
    )  # fmt: skip
    return directory


def test_over_tls_the_right_ca_and_token_work_and_a_wrong_ca_says_so(
    start_registry, example_model, tmp_path: pathlib.Path
) -> None:
    pki = ca_and_server_certificate(tmp_path / "pki", "kappa test CA")
    other = ca_and_server_certificate(tmp_path / "other", "another CA")
    tokens = tmp_path / "tokens"
    lines = [kappa("token", "new", r, "--roles", r, "--out", str(tmp_path / r)) for r in ("read", "write")]
    tokens.write_text("".join(lines))
    registry = start_registry(
        f"--tls-cert={pki / 'tls.crt'}",
        f"--tls-key={pki / 'tls.key'}",
        f"--auth-tokens={tokens}",
        tls_ca=pki / "ca.crt",
    )
    url = registry.url.replace("http://", "https://")
    manifest_path, weights_path = example_model
    manifest, weights = load_manifest(manifest_path), weights_path.read_bytes()
    with Registry(url, Security(ca=pki / "ca.crt", token_file=tmp_path / "write")) as writer:
        assert writer.publish(manifest, weights).version == 1
    with Registry(url, Security(ca=pki / "ca.crt", token_file=tmp_path / "read")) as reader:
        assert [v.version for v in reader.list_versions(manifest.name)] == [1]
        with pytest.raises(PermissionDenied, match="PERMISSION_DENIED"):
            reader.publish(manifest, weights)
    with Registry(url, Security(ca=other / "ca.crt", token_file=tmp_path / "read"), timeout=10) as stranger:
        with pytest.raises(KappaError) as refused:
            stranger.list_versions(manifest.name)
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert "certificate" in refused.value.message.lower() and str(other / "ca.crt") in refused.value.message


def test_tokens_go_with_every_kind_of_call_streams_included(
    start_registry, start_predictor, example_model, tmp_path: pathlib.Path
) -> None:
    tokens = tmp_path / "tokens"
    lines = [kappa("token", "new", r, "--roles", r, "--out", str(tmp_path / r)) for r in ("read", "infer")]
    tokens.write_text("".join(lines))
    registry = start_registry()
    manifest_path, weights_path = example_model
    manifest = load_manifest(manifest_path)
    with Registry(registry.url) as client:
        client.publish(manifest, weights_path.read_bytes())
    url = start_predictor(registry.topic, manifest.name, f"--auth-tokens={tokens}")
    rows = [{f.name: 0.5 for f in manifest.features}] * 3
    with Predictor(url, Security(token_file=tmp_path / "infer")) as predictor:
        assert predictor.predict_one(rows[0]).model_version == 1  # unary
        assert len(predictor.predict(rows)) == 3  # bidirectional stream
        assert len(predictor.predict(rows, protocol="oip", features=[f.name for f in manifest.features])) == 3
    with Predictor(url, Security(token_file=tmp_path / "read")) as reader:
        with pytest.raises(PermissionDenied):
            reader.predict(rows)
    with Predictor(url) as anonymous, pytest.raises(KappaError) as refused:
        anonymous.predict(rows)
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
