"""The command line: --help, --version, bad flags and values, a listen
address already taken, and clean exits on SIGTERM/SIGINT."""

import re
import signal
import socket
import time

import pytest

import dphelpers as H


def _run(dotproxy_bin, *args, timeout=10):
    return H.run_bounded([dotproxy_bin] + list(args), timeout=timeout)


def _lines(text):
    return [l for l in text.splitlines() if l.strip()]


def test_help(dotproxy_bin):
    rc, out, err = _run(dotproxy_bin, "--help")
    assert rc == 0, err
    assert "--upstream" in out and "--listen" in out
    assert "--timeout" in out


def test_version(dotproxy_bin):
    rc, out, err = _run(dotproxy_bin, "--version")
    assert rc == 0, err
    assert re.search(r"dotproxy\s+\d+\.\d+", out), out


def test_unknown_flag(dotproxy_bin):
    rc, out, err = _run(dotproxy_bin, "--no-such-flag")
    assert rc != 0
    lines = _lines(err)
    assert len(lines) == 1, "want a one-line error, got:\n%s" % err
    assert "--no-such-flag" in lines[0]


def test_missing_value(dotproxy_bin):
    rc, out, err = _run(dotproxy_bin, "--listen")
    assert rc != 0
    assert len(_lines(err)) == 1 and "--listen" in err, err


@pytest.mark.parametrize("value", ["nonsense", "127.0.0.1", "127.0.0.1:99999", "300.1.1.1:53",
                                   "127.0.0.1:", "[::1:53", "::1:53x", "127.0.0.1:53junk"])
def test_bad_listen_value(dotproxy_bin, certs, value):
    rc, out, err = _run(dotproxy_bin, "--listen", value, "--upstream", "127.0.0.1:1#upstream.test",
                        "--ca-file", str(certs["ca"]), timeout=5)
    assert rc != 0, "accepted --listen %r" % value
    lines = _lines(err)
    assert len(lines) == 1, "want a one-line error, got:\n%s" % err
    assert value in lines[0] and "--listen" in lines[0], lines[0]


@pytest.mark.parametrize("value", ["nonsense", "127.0.0.1#", "127.0.0.1:70000#x.test"])
def test_bad_upstream_value(dotproxy_bin, certs, value):
    rc, out, err = _run(dotproxy_bin, "--listen", "127.0.0.1:%d" % H.free_port(), "--upstream", value,
                        "--ca-file", str(certs["ca"]), timeout=5)
    assert rc != 0, "accepted --upstream %r" % value
    assert len(_lines(err)) == 1 and "--upstream" in err, err


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_listen_port_in_use(dotproxy_bin, certs, proto):
    """Another socket (no SO_REUSEPORT) holds the port: a clear error naming
    the address, non-zero exit."""
    port = H.free_port()
    if proto == "tcp":
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.bind(("127.0.0.1", port))
        holder.listen(1)
    else:
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        holder.bind(("127.0.0.1", port))
    addr = "127.0.0.1:%d" % port
    try:
        rc, out, err = _run(dotproxy_bin, "--listen", addr, "--upstream", "127.0.0.1:1#upstream.test",
                            "--ca-file", str(certs["ca"]), "--threads", "1", timeout=5)
    finally:
        holder.close()
    assert rc != 0, "started although %s/%s was taken:\n%s" % (addr, proto, err)
    mention = [l for l in _lines(err) if addr in l]
    assert len(mention) == 1, "want one stderr line naming %s, got:\n%s" % (addr, err)
    assert re.search(r"(?i)in use|eaddrinuse", mention[0]), \
        "the line naming %s does not say it is in use: %s" % (addr, mention[0])


def test_second_dotproxy_on_the_same_port_refused(dotproxy, unbound, certs, dotproxy_bin):
    """The shards share their port through SO_REUSEPORT, which the kernel
    would also grant a second dotproxy of the same user: it must refuse to
    start instead of quietly taking half of the first one's traffic."""
    first = dotproxy([unbound.upstream_arg()], certs["ca"])
    addr = "%s:%d" % (first.host, first.port)
    rc, out, err = _run(dotproxy_bin, "--listen", addr, "--upstream", unbound.upstream_arg(),
                        "--ca-file", str(certs["ca"]), "--allow-root", timeout=5)
    assert rc != 0, "a second dotproxy started on %s:\n%s" % (addr, err)
    mention = [l for l in _lines(err) if addr in l]
    assert len(mention) == 1 and re.search(r"(?i)in use", mention[0]), err
    # every query still reaches the first one
    for i in range(50):
        r = H.udp(H.make_query("www.test.", "A"), first.host, first.port)
        assert r.answer, r
    assert first.stats().get("udp_queries", 0) >= 50


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_while_idle_exits_0(dotproxy, unbound, certs, sig):
    dp = dotproxy([unbound.upstream_arg()], certs["ca"])
    r = H.udp(H.make_query("www.test.", "A"), dp.host, dp.port)
    assert r.answer
    dp.expect_exited = True
    rc, killed = dp.stop(sig=sig, grace=5)
    assert not killed, "did not exit within 5 s of %s" % sig.name
    assert rc == 0, "exit code %s after %s; stderr:\n%s" % (rc, sig.name, dp.tail())
    assert 'msg="stats"' in dp.log_text(), "no stats line at exit"


def test_sigterm_before_any_query_exits_0(dotproxy, unbound, certs):
    dp = dotproxy([unbound.upstream_arg()], certs["ca"], wait=False)
    ok = H.wait_for(lambda: 'msg="listening"' in dp.log_text() or dp.proc.poll() is not None, 10)
    assert ok and dp.proc.poll() is None, "did not log listening; stderr:\n%s" % dp.tail()
    dp.expect_exited = True
    rc, killed = dp.stop()
    assert not killed and rc == 0, "rc=%s killed=%s\n%s" % (rc, killed, dp.tail())


def test_stats_on_sigusr1(dotproxy, unbound, certs):
    dp = dotproxy([unbound.upstream_arg()], certs["ca"])
    time.sleep(0.5)  # let stray readiness probes be counted first
    before = dp.stats()
    for k in ("udp_queries", "tcp_queries", "answers", "servfail", "formerr", "dropped", "ssl_writes",
              "ssl_write_queries", "max_write_batch", "upstream_sent", "upstream_answers",
              "upstream_bad_id", "upstream_bad_question", "timeouts", "handshakes", "handshake_failures"):
        assert isinstance(before.get(k), int), "stats lack integer %s: %s" % (k, before)
    for i in range(5):
        H.udp(H.make_query("n%d.test." % i, "A"), dp.host, dp.port)
        H.tcp(H.make_query("n%d.test." % (i + 10), "A"), dp.host, dp.port)
    after = dp.stats()
    assert after["udp_queries"] - before["udp_queries"] == 5, (before, after)
    assert after["tcp_queries"] - before["tcp_queries"] == 5, (before, after)
    assert after["answers"] - before["answers"] >= 10, (before, after)
    assert dp.proc.poll() is None, "SIGUSR1 killed the daemon"
