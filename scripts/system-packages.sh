#!/usr/bin/env bash
# Debian packages the suite and the benchmarks drive as real peers, installed only when missing:
#   swaks + libnet-ssleay-perl  an SMTP client nobody here wrote (with TLS)
#   postfix                     smtp-source / smtp-sink and Postfix itself, the benchmark anchor
#                               (preseeded to "No configuration": it must not start a daemon of its own)
#   isync                       mbsync, a real two-way IMAP synchroniser for the IMAP tests
#   dovecot-imapd               Dovecot, the IMAP benchmark anchor (started by bench/imap.py on a
#                               loopback port with a configuration of its own, never as a service)
#   chromium (+ l10n, fonts)   the real browser of the webmail tests (driven by Playwright; it cannot
#                               download browsers of its own here) and a font for readable screenshots
#   wrk                         the HTTP load generator of bench/webmail.py
#   gnupg                       OpenPGP for the CNAM's signed and encrypted files (driven through python-gnupg)
#   vdirsyncer + khal           a calendar client nobody here wrote: vdirsyncer subscribes to the agenda's
#                               iCalendar feed over HTTP, khal reads what it synced (tests/test_agenda_feed.py)
#   patroni + etcd-server       PostgreSQL high availability: a primary and a synchronous standby on loopback
#                               ports, in temporary directories (tests/test_failover.py, `make soak`); never as a service
#   pgbouncer                   a connection pooler in front of that cluster (session pooling), started the same way
set -euo pipefail
PACKAGES=(swaks libnet-ssleay-perl postfix isync dovecot-imapd chromium chromium-l10n fonts-dejavu-core wrk gnupg vdirsyncer khal patroni etcd-server pgbouncer)
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
# No package may start a service here (Dovecot would take ports 143/993): policy-rc.d says no.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
fi
trap '[ "$created_policy" -eq 1 ] && rm -f "$policy"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
