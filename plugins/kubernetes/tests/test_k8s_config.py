"""Targets, options, cluster access and namespace precedence: everything checked before anything starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from discovery_kubernetes import (
    K8sResolverBuilder,
    KubeConfig,
    KubernetesResolverBuilder,
    KubeTarget,
    find_access,
    parse_config,
    parse_go_duration,
    parse_target,
)
from discovery_kubernetes.testing import write_kubeconfig

import discovery
from discovery.errors import ConfigError, TargetError
from discovery.registry import get_resolver
from discovery.resolver import ResolverOptions
from discovery.target import parse_target as parse_uri
from discovery.testing import RecordingListener


def kt(uri: str) -> KubeTarget:
    return parse_target(parse_uri(uri))


@pytest.mark.parametrize(("uri", "expected"), [
    ("kubernetes:///orders", KubeTarget("orders", None, None)),
    ("kubernetes:///orders:50051", KubeTarget("orders", None, 50051)),
    ("kubernetes:///orders:grpc", KubeTarget("orders", None, "grpc")),
    ("kubernetes:///orders.shop:grpc", KubeTarget("orders", "shop", "grpc")),
    ("kubernetes:///orders.shop.svc.cluster.local:8080", KubeTarget("orders", "shop", 8080)),
    ("kubernetes:///orders.shop.svc", KubeTarget("orders", "shop", None)),
    ("kubernetes://shop/orders:grpc", KubeTarget("orders", "shop", "grpc")),
    ("k8s://shop/orders", KubeTarget("orders", "shop", None)),
])
def test_target_forms(uri: str, expected: KubeTarget) -> None:
    assert kt(uri) == expected


@pytest.mark.parametrize(("uri", "fragment"), [
    ("kubernetes:///Orders", "not a valid Service name"),
    ("kubernetes:///9orders", "not a valid Service name"),
    ("kubernetes:///orders:0", "1..65535"),
    ("kubernetes:///orders:70000", "1..65535"),
    ("kubernetes:///orders:", "empty port"),
    ("kubernetes:///orders:grpc:1", "SERVICE[.NAMESPACE][:PORT]"),
    ("kubernetes:///orders:GRPC", "port name"),
    ("kubernetes:///orders.Shop", "not a valid namespace"),
    ("kubernetes:///orders.shop.cluster", "SERVICE.NAMESPACE.svc"),
    ("kubernetes://shop/orders.other", "just SERVICE[:PORT]"),
    ("kubernetes://sh_op/orders", "not a valid namespace"),
    ("kubernetes:///orders?namespace=shop", "no query parameters"),
    ("kubernetes:///orders/extra", "SERVICE[.NAMESPACE][:PORT]"),
])
def test_bad_targets(uri: str, fragment: str) -> None:
    with pytest.raises(TargetError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        kt(uri)


@pytest.mark.parametrize("uri", ["kubernetes://user:s3cret@shop/orders", "k8s://s3cret@/orders"])
def test_userinfo_in_the_target_is_not_echoed(uri: str) -> None:
    with pytest.raises(TargetError) as info:
        kt(uri)
    assert "s3cret" not in str(info.value)


def test_options_parse() -> None:
    assert parse_config(None) == KubeConfig()
    config = parse_config({"kubeconfig": "~/kc", "context": "prod", "namespace": "shop", "watch_timeout": "1m30s",
                           "endpoints_api": "Endpoints", "keep_serving_terminating": True})
    assert config == KubeConfig("~/kc", "prod", "shop", 90.0, "endpoints", True)


@pytest.mark.parametrize(("config", "key"), [
    ({"surely_not_an_option": 1}, "surely_not_an_option"),
    ({"namespace": "Shop"}, "namespace"),
    ({"namespace": ""}, "namespace"),
    ({"kubeconfig": 5}, "kubeconfig"),
    ({"context": None}, "context"),
    ({"watch_timeout": "0s"}, "watch_timeout"),
    ({"watch_timeout": -1}, "watch_timeout"),
    ({"watch_timeout": "3 seconds"}, "watch_timeout"),
    ({"watch_timeout": True}, "watch_timeout"),
    ({"watch_timeout": [3]}, "watch_timeout"),
    ({"endpoints_api": "pods"}, "endpoints_api"),
    ({"keep_serving_terminating": "yes"}, "keep_serving_terminating"),
])
def test_bad_options_name_the_key(config: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(config)
    assert err.value.key_path == key
    assert key in str(err.value)


@pytest.mark.parametrize(("value", "seconds"), [
    ("3s", 3.0), ("500ms", 0.5), ("5m", 300.0), ("1h", 3600.0), ("1m30s", 90.0), ("1.5s", 1.5), (2, 2.0),
    (0.25, 0.25), ("250us", 0.00025),
])
def test_go_durations(value: Any, seconds: float) -> None:
    assert parse_go_duration(value, "k") == pytest.approx(seconds)


def test_options_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match="must be a table"):
        parse_config(["namespace"])  # type: ignore[arg-type]


# -- cluster access and namespace precedence ---------------------------------------------------------


# Only files here: finding the cluster access never connects, so the kubeconfigs point nowhere.
NOWHERE = "https://127.0.0.1:1"


@pytest.fixture
def kc(tmp_path: Path) -> Path:
    return write_kubeconfig(tmp_path / "kc", NOWHERE, namespace="ctx-ns")


def sa_dir(tmp_path: Path, namespace: str | None = "pod-ns") -> str:
    d = tmp_path / "sa"
    d.mkdir(exist_ok=True)
    (d / "token").write_text("sa-token")
    (d / "ca.crt").write_text("not really a certificate")
    if namespace is not None:
        (d / "namespace").write_text(namespace)
    return str(d)


IN_POD = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"}


def test_namespace_precedence(kc: Path, tmp_path: Path) -> None:
    env = {"KUBECONFIG": str(kc), "HOME": str(tmp_path)}
    no_sa = str(tmp_path / "missing")
    assert find_access(kt("kubernetes:///orders.tgt"), parse_config({"namespace": "opt"}), environ=env,
                       service_account_dir=no_sa).namespace == "tgt"
    a = find_access(kt("kubernetes:///orders"), parse_config({"namespace": "opt"}), environ=env,
                    service_account_dir=no_sa)
    assert (a.namespace, a.namespace_source) == ("opt", "the namespace option")
    a = find_access(kt("kubernetes:///orders"), KubeConfig(), environ=env, service_account_dir=no_sa)
    assert (a.namespace, a.namespace_source, a.mode) == ("ctx-ns", "the kubeconfig context", "kubeconfig")
    plain = write_kubeconfig(tmp_path / "plain", NOWHERE)  # no namespace in its context
    a = find_access(kt("kubernetes:///orders"), KubeConfig(), environ={"KUBECONFIG": str(plain)},
                    service_account_dir=sa_dir(tmp_path))
    assert (a.namespace, a.namespace_source) == ("pod-ns", "the pod's namespace")
    a = find_access(kt("kubernetes:///orders"), KubeConfig(), environ={"KUBECONFIG": str(plain)},
                    service_account_dir=no_sa)
    assert a.namespace == "default"


def test_in_cluster_when_in_a_pod_unless_a_kubeconfig_or_context_is_asked_for(kc: Path, tmp_path: Path) -> None:
    sa = sa_dir(tmp_path)
    env = IN_POD | {"KUBECONFIG": str(kc)}
    a = find_access(kt("kubernetes:///orders"), KubeConfig(), environ=env, service_account_dir=sa)
    assert (a.mode, a.namespace) == ("in-cluster", "pod-ns")
    assert a.description == "the pod's service account"
    a = find_access(kt("kubernetes:///orders"), parse_config({"kubeconfig": str(kc)}), environ=env,
                    service_account_dir=sa)
    assert (a.mode, a.namespace) == ("kubeconfig", "ctx-ns")
    a = find_access(kt("kubernetes:///orders"), parse_config({"context": "discovery-test"}), environ=env,
                    service_account_dir=sa)
    assert (a.mode, a.kubeconfig, a.context) == ("kubeconfig", str(kc), "discovery-test")
    # No token mounted: not in a pod after all.
    a = find_access(kt("kubernetes:///orders"), KubeConfig(), environ=env, service_account_dir=str(tmp_path / "x"))
    assert a.mode == "kubeconfig"


def test_home_kubeconfig_and_kubeconfig_lists(tmp_path: Path) -> None:
    write_kubeconfig(tmp_path / ".kube" / "config", NOWHERE, namespace="home-ns")
    a = find_access(kt("kubernetes:///orders"), KubeConfig(), environ={"HOME": str(tmp_path)},
                    service_account_dir=str(tmp_path / "x"))
    assert (a.kubeconfig, a.namespace) == (str(tmp_path / ".kube" / "config"), "home-ns")
    a = find_access(kt("kubernetes:///orders"), parse_config({"kubeconfig": "~/.kube/config"}),
                    environ={"HOME": str(tmp_path)}, service_account_dir=str(tmp_path / "x"))
    assert a.namespace == "home-ns"
    listed = f"{tmp_path / 'absent'}:{tmp_path / '.kube' / 'config'}"
    a = find_access(kt("kubernetes:///orders"), KubeConfig(), environ={"KUBECONFIG": listed},
                    service_account_dir=str(tmp_path / "x"))
    assert a.namespace == "home-ns"


def test_no_cluster_access_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no cluster access") as err:
        find_access(kt("kubernetes:///orders"), KubeConfig(), environ={"HOME": str(tmp_path)},
                    service_account_dir=str(tmp_path / "x"))
    assert err.value.key_path == "kubeconfig"
    with pytest.raises(ConfigError, match="no kubeconfig file") as missing:
        find_access(kt("kubernetes:///orders"), parse_config({"kubeconfig": str(tmp_path / "nope")}), environ={},
                    service_account_dir=str(tmp_path / "x"))
    assert missing.value.key_path == "kubeconfig"


def test_unknown_context_lists_the_known_ones(kc: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no context 'prod' \(it has: discovery-test\)") as err:
        find_access(kt("kubernetes:///orders"), parse_config({"kubeconfig": str(kc), "context": "prod"}),
                    environ={}, service_account_dir=str(tmp_path / "x"))
    assert err.value.key_path == "context"


def test_broken_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("clusters: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read the kubeconfig"):
        find_access(kt("kubernetes:///orders"), parse_config({"kubeconfig": str(bad)}), environ={},
                    service_account_dir=str(tmp_path / "x"))


# -- builder, registry, config files ------------------------------------------------------------------


def test_entry_points_register_both_schemes() -> None:
    assert isinstance(get_resolver("kubernetes"), KubernetesResolverBuilder)
    assert isinstance(get_resolver("k8s"), K8sResolverBuilder)


def test_check_validates_without_touching_files(tmp_path: Path) -> None:
    builder = KubernetesResolverBuilder(environ={"HOME": str(tmp_path)}, service_account_dir=str(tmp_path / "x"))
    # No kubeconfig exists here, yet check() passes: a config file stays valid on every machine.
    builder.check(parse_uri("kubernetes:///orders:grpc"), ResolverOptions(config={"watch_timeout": "3s"}))
    with pytest.raises(ConfigError):
        builder.check(parse_uri("kubernetes:///orders:grpc"), ResolverOptions(config={"nope": 1}))
    with pytest.raises(TargetError):
        builder.check(parse_uri("kubernetes:///Orders"), ResolverOptions())
    with pytest.raises(ConfigError, match="no cluster access"):
        builder.build(parse_uri("kubernetes:///orders:grpc"), RecordingListener(), ResolverOptions())


def test_default_authority_is_the_service_dns_name() -> None:
    b = KubernetesResolverBuilder()
    assert b.default_authority(parse_uri("kubernetes:///orders.shop:grpc")) == "orders.shop.svc"
    assert b.default_authority(parse_uri("kubernetes://shop/orders:50051")) == "orders.shop.svc:50051"
    assert b.default_authority(parse_uri("kubernetes:///orders")) == "orders"


def test_config_file_errors_name_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "discovery.toml"
    path.write_text('[services.orders]\ntarget = "kubernetes:///orders:grpc"\n'
                    '[services.orders.resolver]\nwatch_timeout = "soon"\n')
    with pytest.raises(ConfigError) as err:
        discovery.channel_from_config("orders", path)
    assert "discovery.toml" in str(err.value) and "watch_timeout" in str(err.value)
