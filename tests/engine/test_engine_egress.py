"""The egress policy on its own (agents.engine.egress): the FRUXON_EGRESS_ALLOW parser, what is
internal, the write-time URL check. Pure: no Django, no network."""

from __future__ import annotations

import ipaddress

import pytest

from agents.engine.egress import AllowRule, EgressConfigError, EgressPolicy, is_internal, parse_allow, url_problem

ip = ipaddress.ip_address


@pytest.mark.parametrize("value, expected", [
    ("", ()),
    ("   ", ()),
    ("127.0.0.1", (AllowRule(ipaddress.ip_network("127.0.0.1/32")),)),
    ("127.0.0.1:9100,10.0.0.0/8", (AllowRule(ipaddress.ip_network("127.0.0.1/32"), 9100),
                                   AllowRule(ipaddress.ip_network("10.0.0.0/8")))),
    (" 10.0.0.0/8:443 ", (AllowRule(ipaddress.ip_network("10.0.0.0/8"), 443),)),
    ("[::1]:9100", (AllowRule(ipaddress.ip_network("::1/128"), 9100),)),
    ("fd00::/8", (AllowRule(ipaddress.ip_network("fd00::/8")),)),
    ("[fd00::/8]", (AllowRule(ipaddress.ip_network("fd00::/8")),)),
    ("[fd00::/8]:443", (AllowRule(ipaddress.ip_network("fd00::/8"), 443),)),
    ("::1", (AllowRule(ipaddress.ip_network("::1/128")),)),
])
def test_parse_allow_accepts_the_documented_forms(value, expected):
    assert parse_allow(value) == expected


@pytest.mark.parametrize("value, fragment", [
    ("localhost", "host names are not accepted"),
    ("metadata.google.internal:80", "host names are not accepted"),
    ("127.0.0.1:", "port"),
    ("127.0.0.1:0", "port"),
    ("127.0.0.1:65536", "port"),
    ("127.0.0.1:+80", "port"),
    ("127.0.0.1:http", "port"),
    ("10.0.0.1/8", "host bits set"),
    ("10.0.0.0/33", "not an IP address or CIDR"),
    ("127.1", "not an IP address or CIDR"),  # no libc shorthand in the operator's own setting
    ("0177.0.0.1", "not an IP address or CIDR"),
    ("2130706433", "not an IP address or CIDR"),
    ("127.0.0.1,,10.0.0.0/8", "empty entry"),
    ("127.0.0.1,", "empty entry"),
    ("[127.0.0.1]:80", "IPv6 addresses only"),
    ("[::1", "IPv6 as [address]:port"),
    ("[::1]:80:90", "port"),
    ("*", "not an IP address or CIDR"),
])
def test_parse_allow_is_strict_and_names_the_entry(value, fragment):
    with pytest.raises(EgressConfigError) as caught:
        parse_allow(value)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.255.255.254", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254",
    "169.254.0.1", "100.64.0.1", "100.127.255.255", "0.0.0.0", "0.1.2.3", "224.0.0.1", "239.255.255.250",
    "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1",
    "::1", "::", "fe80::1", "fd00:ec2::254", "fc00::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
    "::ffff:10.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::1", "2001:db8::1", "fec0::1",
])
def test_internal_addresses(address):
    assert is_internal(ip(address))
    assert not EgressPolicy().allows(ip(address), 80)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "172.32.0.1", "100.128.0.1",
                                     "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses(address):
    assert not is_internal(ip(address))
    assert EgressPolicy().allows(ip(address), 443)


def test_allow_rules_match_address_and_port():
    policy = EgressPolicy(parse_allow("127.0.0.1:9100,10.0.0.0/8,[::1]:8080"))
    assert policy.allows(ip("127.0.0.1"), 9100)
    assert not policy.allows(ip("127.0.0.1"), 9101)
    assert not policy.allows(ip("127.0.0.2"), 9100)
    assert policy.allows(ip("::ffff:127.0.0.1"), 9100)  # the same address on the wire
    assert policy.allows(ip("10.200.0.1"), 1) and policy.allows(ip("10.200.0.1"), 65535)
    assert policy.allows(ip("11.0.0.1"), 80)  # public addresses need no rule
    assert policy.allows(ip("::1"), 8080) and not policy.allows(ip("::1"), 80)
    assert not policy.allows(ip("169.254.169.254"), 80)


@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.1/v1", "internal"),
    ("http://localhost:11434/v1", "internal"),
    ("http://LOCALHOST./v1", "internal"),
    ("http://foo.localhost/v1", "internal"),
    ("http://2130706433/v1", "internal"),
    ("http://0x7f.1/v1", "internal"),
    ("http://017700000001/v1", "internal"),
    ("http://[::1]:8080/v1", "internal"),
    ("http://[::ffff:127.0.0.1]/v1", "internal"),
    ("http://169.254.169.254/latest/meta-data", "internal"),
    ("http://[fd00:ec2::254]/", "internal"),
    ("http://127.0.0.1/{{input.path}}", "internal"),
    ("ftp://api.example.com/", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("gopher://127.0.0.1:6379/_INFO", "scheme"),
    ("http://user:secret@api.example.com/", "userinfo"),
    ("http://api.example.com@127.0.0.1/", "userinfo"),
    ("http://0177.0.0.1/", "invalid"),
])
def test_url_problem_refuses(url, reason):
    problem = url_problem(url, EgressPolicy())
    assert problem is not None and problem.reason == reason, problem


@pytest.mark.parametrize("url", [
    "https://api.openai.com/v1", "http://ollama.internal.example:11434/v1", "https://8.8.8.8/",
    "http://{{input.host}}/v1", "{{input.url}}", "https://[2606:4700:4700::1111]/",
])
def test_url_problem_accepts(url):
    assert url_problem(url, EgressPolicy()) is None


def test_url_problem_honours_the_allow_list():
    policy = EgressPolicy(parse_allow("127.0.0.1:11434,::1"))
    assert url_problem("http://127.0.0.1:11434/v1", policy) is None
    assert url_problem("http://127.0.0.1:6379/", policy).reason == "internal"
    assert url_problem("http://[::1]:11434/", policy) is None
    assert url_problem("http://localhost:11434/", policy) is None  # both loopback addresses allowed on that port
    assert url_problem("http://localhost:6379/", policy).reason == "internal"
    assert url_problem("https://127.0.0.1/", policy).reason == "internal"  # 443, not 11434
