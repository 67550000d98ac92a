#!/bin/sh
# run.sh - install what is needed, build dotproxy, run it. Arguments go to
# dotproxy (default: listen on 127.0.0.1:53, forward to Cloudflare over TLS).
set -eu
cd "$(dirname "$0")/.."
sh scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build --target dotproxy
exec build/dotproxy "$@"
