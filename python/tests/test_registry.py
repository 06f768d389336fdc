"""The package against a real kappa-registry: publishes (signed ones verified by the registry's
own Rust verification), reads, aliases, watches, tokens and their refusals."""

from __future__ import annotations

import pathlib
import threading
import time

import grpc
import pytest

from kappa import (
    ConfigurationError,
    KappaError,
    PermissionDenied,
    Registry,
    Security,
    SigningKey,
    load_manifest,
)

from conftest import kappa


def test_a_published_model_reads_back_identical_and_a_retry_returns_the_same_version(
    start_registry, example_model
) -> None:
    registry = start_registry()
    manifest_path, weights_path = example_model
    manifest, weights = load_manifest(manifest_path), weights_path.read_bytes()
    with Registry(registry.url) as client:
        first = client.publish(manifest, weights, idempotency_key="job-1")
        again = client.publish(manifest, weights, idempotency_key="job-1")
        assert (first.version, again.version) == (1, 1)
        header, read = client.get(manifest.name, version=1)
        assert read == weights and header.weights_sha256 == first.weights_sha256
        assert [v.version for v in client.list_versions(manifest.name)] == [1]
        with pytest.raises(KappaError) as refused:
            client.get(manifest.name, version=9)
        assert refused.value.code == grpc.StatusCode.NOT_FOUND


def test_a_python_signature_verifies_in_a_registry_that_trusts_only_signed_models(
    start_registry, example_model, tmp_path: pathlib.Path
) -> None:
    keys = tmp_path / "trusted"
    keys.mkdir()
    signer = SigningKey.generate()
    (keys / "python.pem").write_bytes(signer.public_pem())
    kappa("keys", "new", "--out", str(tmp_path / "registry-key"))
    registry = start_registry(
        f"--trusted-keys={keys}", f"--signing-key={tmp_path / 'registry-key' / 'kappa-signing.key'}"
    )
    manifest_path, weights_path = example_model
    manifest, weights = load_manifest(manifest_path), weights_path.read_bytes()
    with Registry(registry.url) as client:
        with pytest.raises(PermissionDenied):
            client.publish(manifest, weights)
        stranger = SigningKey.generate()
        with pytest.raises(PermissionDenied) as refused:
            client.publish(manifest, weights, signing_key=stranger)
        assert "not among the trusted keys" in refused.value.message
        for expected in (1, 2):
            published = client.publish(manifest, weights, signing_key=signer)
            assert published.version == expected and published.signing_key_id == signer.key_id


def test_watch_sees_a_publish_and_an_alias_move_within_a_second(start_registry, example_model) -> None:
    registry = start_registry()
    manifest_path, weights_path = example_model
    manifest, weights = load_manifest(manifest_path), weights_path.read_bytes()
    seen: list[tuple[str, float]] = []
    with Registry(registry.url) as client, Registry(registry.url) as watcher:
        events = watcher.watch(name=manifest.name)

        def follow() -> None:
            for event in events:
                seen.append((event.WhichOneof("event"), time.monotonic()))
                if len(seen) == 2:
                    return

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        time.sleep(0.5)
        published_at = time.monotonic()
        version = client.publish(manifest, weights).version
        moved_at = time.monotonic()
        assert client.set_alias(manifest.name, "production", version) == 0
        thread.join(timeout=10)
    assert [kind for kind, _ in seen] == ["published", "alias_set"]
    assert seen[0][1] - published_at < 1.0 and seen[1][1] - moved_at < 1.0


def test_tokens_decide_and_never_travel_in_plaintext_to_another_machine(
    start_registry, example_model, tmp_path: pathlib.Path
) -> None:
    tokens = tmp_path / "tokens"
    lines = [
        kappa("token", "new", role, "--roles", role, "--out", str(tmp_path / role))
        for role in ("read", "write")
    ]
    tokens.write_text("".join(lines))
    registry = start_registry(f"--auth-tokens={tokens}")
    manifest_path, weights_path = example_model
    manifest, weights = load_manifest(manifest_path), weights_path.read_bytes()
    with Registry(registry.url, Security(token_file=tmp_path / "write")) as writer:
        assert writer.publish(manifest, weights).version == 1
    with Registry(registry.url, Security(token_file=tmp_path / "read")) as reader:
        assert [v.version for v in reader.list_versions(manifest.name)] == [1]
        with pytest.raises(PermissionDenied) as refused:
            reader.publish(manifest, weights)
        assert "PERMISSION_DENIED" in str(refused.value) and "write" in refused.value.message
    with pytest.raises(ConfigurationError, match="plaintext"):
        Registry("http://registry.kappa.invalid:50051", Security(token="t"))
