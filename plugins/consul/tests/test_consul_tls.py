"""HTTPS to the agent: the CA and client certificate options, verification, and close() under TLS."""

from __future__ import annotations

import ssl
import subprocess
import time
from pathlib import Path

import pytest
from consulplugin_support import MakeResolver
from discovery_consul.testing import ConsulTestAgent


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, as files."""
    d = tmp_path_factory.mktemp("consul-pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=discovery-consul test CA")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\n"), ("client", "extendedKeyUsage=clientAuth\n")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        (d / f"{name}.ext").write_text(ext)
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return d


@pytest.fixture
def tls_agent(pki: Path, request: pytest.FixtureRequest) -> ConsulTestAgent:
    """An HTTPS agent that requires a client certificate signed by the test CA (Consul's verify_incoming)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
    ctx.verify_mode = ssl.CERT_REQUIRED
    agent = ConsulTestAgent(tls=ctx)
    request.addfinalizer(agent.stop)
    agent.start()
    agent.register("orders", 5001)
    return agent


def tls_config(pki: Path, **extra: object) -> dict[str, object]:
    return {"scheme": "https", "ca_file": str(pki / "ca.pem"), "cert_file": str(pki / "client.pem"),
            "key_file": str(pki / "client.key"), **extra}


def test_https_with_ca_and_client_certificate(pki: Path, tls_agent: ConsulTestAgent,
                                              make_resolver: MakeResolver) -> None:
    assert tls_agent.url.startswith("https://")
    resolver, listener = make_resolver(agent=tls_agent, config=tls_config(pki))
    assert [a.addr for a in listener.wait_for_state(lambda s: bool(s.addresses)).addresses] == ["127.0.0.1:5001"]
    # close() cuts a pending long poll under TLS too.
    tls_agent.wait_for_pending("orders")
    t0 = time.monotonic()
    resolver.close()
    assert resolver.join(5.0) and time.monotonic() - t0 < 5.0  # the long poll would wait 300 s


def test_environment_variables_for_tls(pki: Path, tls_agent: ConsulTestAgent, make_resolver: MakeResolver) -> None:
    env = {"CONSUL_HTTP_ADDR": f"https://{tls_agent.address}", "CONSUL_CACERT": str(pki / "ca.pem"),
           "CONSUL_CLIENT_CERT": str(pki / "client.pem"), "CONSUL_CLIENT_KEY": str(pki / "client.key")}
    _, listener = make_resolver(env=env, authority="")
    listener.wait_for_state(lambda s: bool(s.addresses))


def test_an_unknown_ca_is_an_error(pki: Path, tls_agent: ConsulTestAgent, make_resolver: MakeResolver) -> None:
    config = tls_config(pki)
    del config["ca_file"]  # the system CAs do not know the test CA
    _, listener = make_resolver(agent=tls_agent, config=config)
    listener.wait_for_count(errors=1)
    assert "CERTIFICATE_VERIFY_FAILED" in str(listener.errors[0])
    assert listener.states == []


def test_a_missing_client_certificate_is_an_error(pki: Path, tls_agent: ConsulTestAgent,
                                                  make_resolver: MakeResolver) -> None:
    _, listener = make_resolver(agent=tls_agent, config={"scheme": "https", "ca_file": str(pki / "ca.pem")})
    listener.wait_for_count(errors=1)
    assert "unreachable" in str(listener.errors[0])
    assert listener.states == []
