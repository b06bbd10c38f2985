#!/usr/bin/env bash
# Install the Debian `redis-server` package when `redis-server` is missing (`make test-setup` runs
# this). It only installs: the tests start their own loopback server, and a production Redis
# for `starsrec serve --store-url` is configured by its operator (see src/starsrec/serving/redis_store.py).
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "redis-server is missing and apt-get is not available: install Redis 6.2 or newer" \
        "with your package manager (e.g. 'brew install redis')" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "installing redis-server (Debian package) for the Redis event store tests"
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
