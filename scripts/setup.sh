#!/usr/bin/env bash
# Install what marionet needs on a fresh Debian machine (as root, or with sudo):
# Debian packages for the lab, tests and native comparison tools, then a
# virtualenv in .venv with marionet and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

APT_PACKAGES=(
  python3 python3-venv python3-dev gcc          # Python and builds of wheels without binaries
  iproute2 iptables iputils-ping util-linux     # namespaces, veth, routes, setpriv
  traceroute scamper                            # native tools compared against (Butskoy traceroute, scamper)
  iperf3 tcpdump dnsutils curl                  # lab services and checks
  nsd nginx unbound                             # lab DNS (authoritative, recursive) and HTTP(S) servers
  chrony snmpd                                  # lab NTP and SNMP servers (udpprobe)
  clang lld                                     # guard monitors written in C (--target=wasm32)
  busybox-static gron file                      # marionet wrap tests: a static binary (busybox wget), a Go one (gron)
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # Keep package scripts from starting nginx/nsd/unbound as system services: the
  # lab starts its own instances inside its namespaces.
  policy_made=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    policy_made=1
  fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$policy_made" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test,analysis]'
