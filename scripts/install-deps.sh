#!/bin/sh
# install-deps.sh - every Debian 12 package dotproxy needs to build, test and
# benchmark. Run as root. Safe to run again (apt-get skips what is there).
set -eu
export DEBIAN_FRONTEND=noninteractive
pkgs="build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
liburing-dev android-libboringssl-dev libnghttp2-dev libcmocka-dev libbpf-dev linux-libc-dev llvm
unbound knot-dnsutils bind9-dnsutils dnsperf openssl
python3 python3-dnspython python3-pytest python3-yaml python3-h2
dnsdist stubby knot-resolver gnuplot-nox procps iproute2 curl nghttp2-client
python3-seccomp libcap2-bin systemd busybox"
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "install-deps: installing:$missing"
	apt-get update -q
	# shellcheck disable=SC2086
	apt-get install -y -q --no-install-recommends $missing
fi
exit 0
