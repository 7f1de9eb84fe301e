"""TLS to IP-addressed backends verifies the service name, never by turning verification off."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import discovery
from discovery.testing import wait_for
from discovery.testing.servers import BackendServer, EchoStub


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A throwaway CA and a server certificate for the name orders.test (no IP SANs)."""
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=grpc-discovery test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=orders.test")
    (d / "san.ext").write_text("subjectAltName=DNS:orders.test\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    return {name: (d / name).read_bytes() for name in ("ca.pem", "server.key", "server.pem")}


@pytest.fixture
def tls_backends(pki: dict[str, bytes]) -> Iterator[list[BackendServer]]:
    creds = grpc.ssl_server_credentials([(pki["server.key"], pki["server.pem"])])
    servers = [BackendServer(credentials=creds).start() for _ in range(2)]
    yield servers
    for s in servers:
        s.stop()


def test_secure_channel_verifies_the_service_name_on_ip_backends(pki: dict[str, bytes],
                                                                  tls_backends: list[BackendServer]) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=pki["ca.pem"])
    target = "static:///" + ",".join(s.addr for s in tls_backends)
    with discovery.secure_channel(target, creds, [("grpc.default_authority", "orders.test")]) as ch:
        stub = EchoStub(ch)
        stub.Unary(b"", timeout=10)
        wait_for(lambda: all(b.state is grpc.ChannelConnectivity.READY for b in ch.backends()), 10,
                 message="both TLS backends READY")
        got = {stub.Unary(b"", timeout=10) for _ in range(4)}
    assert got == {s.name.encode() for s in tls_backends}


def test_without_the_service_name_verification_fails(pki: dict[str, bytes],
                                                     tls_backends: list[BackendServer]) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=pki["ca.pem"])
    with discovery.secure_channel("static:///" + tls_backends[0].addr, creds) as ch, \
            pytest.raises(grpc.RpcError) as info:
        EchoStub(ch).Unary(b"", timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert tls_backends[0].total == 0


def test_call_credentials_reach_the_backend(pki: dict[str, bytes], tls_backends: list[BackendServer]) -> None:
    class Token(grpc.AuthMetadataPlugin):  # type: ignore[misc]
        def __call__(self, context, callback):  # type: ignore[no-untyped-def]
            callback((("authorization", "Bearer test-token"),), None)

    creds = grpc.ssl_channel_credentials(root_certificates=pki["ca.pem"])
    call_creds = grpc.metadata_call_credentials(Token())
    with discovery.secure_channel("static:///" + tls_backends[0].addr, creds,
                                  [("grpc.default_authority", "orders.test")]) as ch:
        EchoStub(ch).Unary(b"", timeout=10, credentials=call_creds)
    assert ("authorization", "Bearer test-token") in tls_backends[0].last_metadata


def test_config_file_tls_section(pki: dict[str, bytes], tls_backends: list[BackendServer], tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(pki["ca.pem"])
    cfg = tmp_path / "d.toml"
    cfg.write_text(f'[services.orders]\ntarget = "static:///{tls_backends[0].addr}"\n'
                   f'tls = {{ ca_file = "{tmp_path / "ca.pem"}", server_name = "orders.test" }}\n')
    with discovery.channel_from_config("orders", cfg) as ch:
        assert EchoStub(ch).Unary(b"", timeout=10) == tls_backends[0].name.encode()


def test_config_file_tls_paths_are_relative_to_the_file(pki: dict[str, bytes], tls_backends: list[BackendServer],
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "ca.pem").write_bytes(pki["ca.pem"])
    (conf / "d.toml").write_text(f'[services.orders]\ntarget = "static:///{tls_backends[0].addr}"\n'
                                 'tls = { ca_file = "ca.pem", server_name = "orders.test" }\n')
    monkeypatch.chdir(tmp_path)  # not the config file's folder: ./ca.pem does not exist here
    with discovery.channel_from_config("orders", "conf/d.toml") as ch:
        assert EchoStub(ch).Unary(b"", timeout=10) == tls_backends[0].name.encode()
