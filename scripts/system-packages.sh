#!/usr/bin/env bash
# Debian packages the suite and the benchmarks drive as real peers, installed only when missing:
#   swaks + libnet-ssleay-perl  an SMTP client nobody here wrote (with TLS)
#   postfix                     smtp-source / smtp-sink and Postfix itself, the benchmark anchor
#                               (preseeded to "No configuration": it must not start a daemon of its own)
set -euo pipefail
PACKAGES=(swaks libnet-ssleay-perl postfix)
missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]} (install them, or run make as root)" >&2
    exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
