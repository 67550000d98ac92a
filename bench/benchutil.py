"""benchutil.py - small helpers shared by bench/idle_tcp_rss.py and bench/soak.py."""
import socket


def rss_kb(pid):
    """VmRSS of a process, in kB (-1 when absent)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def free_port():
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p
