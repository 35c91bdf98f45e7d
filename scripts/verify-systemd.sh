#!/usr/bin/env bash
# Verify packaging/systemd/msgbusd.service with systemd's own tools:
#   - `systemd-analyze verify` must pass with no warnings at all;
#   - `systemd-analyze security --offline=true` prints the exposure score, which must stay <= 2.0.
# systemd is installed from the distribution's packages when systemd-analyze is missing (needs
# root, or passwordless sudo, and apt-get). Exit status 77 means "cannot check here": no
# systemd-analyze and no apt-get to install it with.
set -euo pipefail
cd "$(dirname "$0")/.."

unit=packaging/systemd/msgbusd.service
max_exposure_tenths=20 # systemd-analyze's --threshold scale: 20 means an exposure of 2.0

if ! command -v systemd-analyze >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "verify-systemd: systemd-analyze is missing and apt-get is unavailable: skipped" >&2
    exit 77
  fi
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo -n)
  fi
  echo "verify-systemd: installing systemd from the distribution's packages" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

# `verify` checks that ExecStart exists and is executable. Check the unit unchanged against a
# scratch root holding the system's own units plus a stand-in for /opt/msgbus/bin/msgbusd (the
# install tests run the real one), so the check neither needs nor touches /opt on this machine.
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
units=$(pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null || echo /usr/lib/systemd/system)
mkdir -p "$root/etc/systemd/system" "$root$units" "$root/opt/msgbus/bin"
cp -a "$units/." "$root$units/"
cp "$unit" "$root/etc/systemd/system/msgbusd.service"
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
if [ "$exec_start" != "/opt/msgbus/bin/msgbusd" ]; then
  echo "verify-systemd: ExecStart is '$exec_start', expected /opt/msgbus/bin/msgbusd" >&2
  exit 1
fi
printf '#!/bin/sh\nexit 0\n' >"$root/opt/msgbus/bin/msgbusd"
chmod 0755 "$root/opt/msgbus/bin/msgbusd"

echo "=== systemd-analyze verify $unit"
# verify exits 0 on warnings such as "Unknown key name", so any output at all is a failure.
output=$(systemd-analyze verify --root="$root" msgbusd.service 2>&1) || {
  echo "$output" >&2
  exit 1
}
if [ -n "$output" ]; then
  echo "$output" >&2
  echo "verify-systemd: systemd-analyze verify printed warnings" >&2
  exit 1
fi
echo "ok"

echo "=== systemd-analyze security --offline=true $unit"
systemd-analyze security --offline=true --no-pager --threshold="$max_exposure_tenths" "$unit"
