"""A throw-away Postfix instance on a loopback port, relaying everything into smtp-sink.

Used as the anchor of the SMTP accept benchmark: a durable queue (Postfix fsyncs each
queue file before it says 250) doing what our gateway does on accept. The instance lives
in its own config and queue directories under a temporary folder; the one change outside
it is the `alternate_config_directories` line Postfix requires in /etc/postfix/main.cf
before it runs a second instance (root only, as installing Postfix is).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path


def _postconf(config: Path, *settings: str) -> None:
    subprocess.run(["postconf", "-c", str(config), "-e", *settings], check=True)


def _authorise(config: Path) -> None:
    main = Path("/etc/postfix/main.cf")
    current = subprocess.run(["postconf", "-h", "alternate_config_directories"], capture_output=True, text=True).stdout.split()
    if str(config) not in " ".join(current):
        if not main.exists():
            main.write_text("")
        subprocess.run(["postconf", "-e", f"alternate_config_directories = {' '.join([*current, str(config)])}"], check=True)


class PostfixRelay:
    def __init__(self, workdir: Path, port: int, sink_port: int) -> None:
        self.config = workdir / "postfix-etc"
        self.queue = workdir / "postfix-queue"
        self.data = workdir / "postfix-data"
        self.port, self.sink_port = port, sink_port

    def start(self) -> None:
        for directory in (self.config, self.queue, self.data):
            directory.mkdir(parents=True, exist_ok=True)
        shutil.copy("/usr/share/postfix/master.cf.dist", self.config / "master.cf")
        (self.config / "main.cf").write_text("")  # compiled-in defaults, plus what we set below
        shutil.copy("/etc/postfix/dynamicmaps.cf", self.config / "dynamicmaps.cf")
        master = (self.config / "master.cf").read_text()
        master = master.replace(
            "smtp      inet  n       -       y       -       -       smtpd", f"127.0.0.1:{self.port} inet n - n - - smtpd"
        )
        (self.config / "master.cf").write_text(master)
        for directory in (self.queue, self.data):
            shutil.chown(directory, "postfix")
        _postconf(
            self.config,
            "compatibility_level = 3.6",
            f"queue_directory = {self.queue}",
            f"data_directory = {self.data}",
            "mail_owner = postfix",
            "myhostname = bench.localdomain",
            "mydestination =",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            f"relayhost = [127.0.0.1]:{self.sink_port}",
            "smtpd_relay_restrictions = permit_mynetworks, reject",
            "smtpd_recipient_restrictions = permit_mynetworks, reject",
            "smtp_tls_security_level = none",
            "smtpd_tls_security_level = none",
            f"maillog_file_prefixes = {self.data}",
            f"maillog_file = {self.data / 'maillog'}",
            "default_process_limit = 100",
            "smtpd_client_connection_count_limit = 0",
            "local_recipient_maps =",
            "alias_maps =",
            "alias_database =",
            "message_size_limit = 30000000",
            "smtp_destination_concurrency_limit = 20",
        )
        _authorise(self.config)
        subprocess.run(["postfix", "-c", str(self.config), "check"], check=True)
        subprocess.run(["postfix", "-c", str(self.config), "start"], check=True, capture_output=True)
        for _ in range(100):
            if subprocess.run(["bash", "-c", f"echo > /dev/tcp/127.0.0.1/{self.port}"], capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("postfix did not start")

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.config), "stop"], capture_output=True)
