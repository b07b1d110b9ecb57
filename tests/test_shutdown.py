"""SIGTERM (issue 19.4): the listeners stop accepting, an open SMTP session is told 421 and an
IMAP session BYE, and no process of the server is left; SIGHUP loads the certificates again."""

from __future__ import annotations

import imaplib
import json
import os
import signal
import smtplib
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import free_port


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, their children...), from /proc."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent and int(entry.name) not in found:
                found.add(int(entry.name))
                todo.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_says_421_and_bye_and_leaves_no_process(tmp_path: Path) -> None:
    smtp_port, http_port, imap_port = free_port(), free_port(), free_port()
    data_dir = tmp_path / "var"
    env = {
        **os.environ,
        "CADUCEE_DATA_DIR": str(data_dir),
        "CADUCEE_DATABASE_URL": f"sqlite:///{tmp_path / 'c.sqlite3'}",
        "CADUCEE_SUBMISSION_PORT": str(smtp_port),
        "CADUCEE_SUBMISSIONS_PORT": "0",
        "CADUCEE_MX_PORT": "0",
        "CADUCEE_IMAP_PORT": str(imap_port),
        "CADUCEE_IMAPS_PORT": "0",
        "CADUCEE_HTTP_PORT": str(http_port),
        "CADUCEE_CPU_WORKERS": "1",
        "CADUCEE_DEMO_PSC_PORT": "0",
        "CADUCEE_LOG_FORMAT": "json",
    }
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "caducee", "serve", "--demo"], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 90
        while not (data_dir / "demo-credentials.json").exists() or not _healthy(http_port):
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        credentials = json.loads((data_dir / "demo-credentials.json").read_text())
        nurse = credentials["professionals"]["nurse"]
        anchors = ssl.create_default_context(cafile=str(data_dir / "pki" / "anchors.pem"))
        os.kill(process.pid, signal.SIGHUP)  # certificates loaded again; the server goes on
        time.sleep(0.5)
        assert process.poll() is None and _healthy(http_port)
        smtp = smtplib.SMTP("127.0.0.1", smtp_port, timeout=30)
        smtp.starttls(context=anchors)
        assert smtp.ehlo()[0] == 250
        imap = imaplib.IMAP4("127.0.0.1", imap_port, timeout=30)
        imap.starttls(ssl_context=anchors)
        imap.login(nurse["address"], nurse["password"])
        imap.select("INBOX")
        family = descendants(process.pid)
        process.send_signal(signal.SIGTERM)
        code, reply = smtp.getreply()
        assert code == 421 and b"shutting down" in reply
        bye = imap.readline()
        assert bye.startswith(b"* BYE") and b"shutting down" in bye
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    time.sleep(1)
    left = sorted(pid for pid in family if alive(pid))
    assert not left, [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:200] for pid in left]
    lines = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any("SIGHUP" in line["message"] for line in lines)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def agents_of(home: Path) -> list[int]:
    """The gpg-agents serving `home`, from their command lines."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"gpg-agent") and str(home).encode() in argv and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def test_a_command_that_used_the_keyring_leaves_no_gpg_agent_and_spares_one_already_running(tmp_path: Path) -> None:
    """gpg starts an agent for the keyring and the agent outlives the command (reparented to
    PID 1): the command ends the one it started, not one that served someone before it."""
    env = {**os.environ, "CADUCEE_DATA_DIR": str(tmp_path / "var")}
    home = tmp_path / "var" / "openpgp"
    made = subprocess.run([sys.executable, "-m", "caducee", "openpgp", "init"], env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert agents_of(home) == []
    subprocess.run(["gpg-connect-agent", "--homedir", str(home), "/bye"], capture_output=True, timeout=30, check=True)  # someone else's
    [running] = agents_of(home)
    shown = subprocess.run([sys.executable, "-m", "caducee", "openpgp", "export"], env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "BEGIN PGP PUBLIC KEY" in shown.stdout
    assert agents_of(home) == [running]
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, timeout=30)
