"""Dovecot's imaptest against Caducée and against Dovecot itself, on the same machine.

imaptest (github.com/dovecot/imaptest) is the standard IMAP compliance and stress tester.
It is not part of this repository and this script does not build it: give it the folder of
an imaptest source tree already built against Debian's `dovecot-dev` (`src/imaptest` and its
scripted tests in `src/tests`), or the binary and the tests folder separately.

Each server is started here on loopback ports: Dovecot as `bench/imap.py` configures it
(Maildir, a passwd-file, a throw-away certificate) plus an implicit-TLS listener, Caducée as
`caducee serve --demo` on SQLite and on PostgreSQL. imaptest has no STARTTLS, so it speaks
to the implicit-TLS ports with `ssl=any-cert`.

    .venv/bin/python bench/imaptest.py --imaptest /path/to/imaptest [--servers dovecot,sqlite,postgresql]
        [--tests select,copy] [--stress 30 --clients 5]

Scripted mode prints each server's summary line ("N test groups: F failed, S skipped due
to missing capabilities") and the groups that failed; stress mode (`--stress SECONDS`) runs
imaptest's random command mix with state checking (`checkpoint=1`) and prints operations
per second and the state errors it reported. `bench/imap.py --imaptest` uses the same code
for its concurrent section.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import create_pg_database, drop_pg_database, free_port  # noqa: E402
from smtp_accept import DEFAULT_PG, Caducee, wait_port  # noqa: E402

DOVECOT_USER, DOVECOT_PASSWORD = "sophie.bernard@demo.mssante.fr", "motdepasse-banc-d-essai"
# Dovecot's library directory, where libdovecot.so is (imaptest links against it).
DOVECOT_LIBS = "/usr/lib/dovecot"


@dataclass(frozen=True)
class Imaptest:
    binary: Path
    tests: Path

    @classmethod
    def locate(cls, path: str, tests: str | None = None) -> Imaptest:
        """The binary and the scripted tests of a built imaptest tree (or a binary and `tests`)."""
        root = Path(path).expanduser().resolve()
        binary = root if root.is_file() else next((p for p in (root / "src" / "imaptest", root / "imaptest") if p.is_file()), None)
        if binary is None:
            raise SystemExit(f"no imaptest binary in {root} (build imaptest there first, against dovecot-dev)")
        folder = Path(tests).resolve() if tests else binary.parent / "tests"
        if not folder.is_dir():
            raise SystemExit(f"no imaptest scripted tests in {folder}")
        return cls(binary, folder)

    def run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "LD_LIBRARY_PATH": DOVECOT_LIBS + (":" + os.environ["LD_LIBRARY_PATH"] if "LD_LIBRARY_PATH" in os.environ else ""),
        }
        return subprocess.run([str(self.binary), *args], capture_output=True, text=True, timeout=timeout, env=env, errors="replace")


@dataclass
class Target:
    """One server as imaptest sees it: an implicit-TLS port and one account."""

    name: str
    port: int
    user: str
    password: str
    pid: int = 0  # the serving process (Caducée), for py-spy


@dataclass
class ScriptedResult:
    summary: str
    failed: list[str] = field(default_factory=list)
    output: str = ""


_FAILED_GROUP = re.compile(r"^\*\*\* Test (\S+) command", re.M)
_FAILED_INIT = re.compile(r"^\*\*\* Test (\S+) initialization failed", re.M)
_SUMMARY = re.compile(r"^\d+ test groups: .*$", re.M)
_COMMANDS_FAILED = re.compile(r"^(base protocol|extensions): (\d+/\d+) individual commands failed$", re.M)


def scripted(imaptest: Imaptest, target: Target, groups: list[str] | None = None, timeout: float = 900) -> ScriptedResult:
    """Run imaptest's scripted tests (all of them, or only `groups`) against one server."""
    tests = imaptest.tests
    if groups:
        scratch = Path(tempfile.mkdtemp(prefix="imaptest-groups-"))
        for group in groups:
            for source in tests.glob(group + "*"):
                if source.is_file() and (source.name == group or source.name == group + ".mbox"):
                    shutil.copy(source, scratch / source.name)
        if (tests / "default.mbox").exists():
            shutil.copy(tests / "default.mbox", scratch / "default.mbox")
        tests = scratch
    common = ["host=127.0.0.1", f"port={target.port}", "ssl=any-cert", f"user={target.user}", f"pass={target.password}"]
    process = imaptest.run([*common, f"test={tests}"], timeout)
    output = process.stdout + process.stderr
    summary = _SUMMARY.search(output)
    failed = sorted(set(_FAILED_GROUP.findall(output)) | set(_FAILED_INIT.findall(output)))
    text = summary.group(0) if summary else f"no summary (exit {process.returncode})"
    counts = _COMMANDS_FAILED.findall(output)  # "base protocol: 0/457 individual commands failed", then extensions
    if summary and counts:
        text += " (" + ", ".join(f"{part} {ratio}" for part, ratio in counts) + " commands failed)"
    return ScriptedResult(text, failed, output)


@dataclass
class StressResult:
    seconds: float
    operations: int
    state_errors: list[str]
    output: str

    @property
    def per_second(self) -> float:
        return self.operations / self.seconds if self.seconds else 0.0


_ERROR = re.compile(r"^Error: (.*)$", re.M)


def write_mbox(path: Path, count: int = 200) -> Path:
    """The messages imaptest appends in stress mode: the benchmark's generated mail, as an mbox."""
    from imap import messages as generated

    with path.open("wb") as out:
        for raw in generated(count, seed=11):
            body = raw.replace(b"\r\n", b"\n").replace(b"\nFrom ", b"\n>From ")
            out.write(b"From bench@hopital.mssante.fr Thu Jan  1 00:00:00 2026\n" + body.rstrip(b"\n") + b"\n\n")
    return path


def stress(
    imaptest: Imaptest,
    target: Target,
    mbox: Path,
    *,
    seconds: int,
    clients: int,
    messages: int = 30,
    seed: int = 1,
    states: tuple[str, ...] = (),
) -> StressResult:
    """imaptest's stress mode: `clients` connections on one mailbox, random commands, state
    checked at every checkpoint (`checkpoint=1`: each second the clients agree on the state).

    Operations are the commands imaptest counts in its last totals line (every command that
    completed, LOGIN and LOGOUT included); errors are its `Error:` lines (state errors, bad
    replies, disconnects)."""
    common = ["host=127.0.0.1", f"port={target.port}", "ssl=any-cert", f"user={target.user}", f"pass={target.password}"]
    args = [*common, f"clients={clients}", f"msgs={messages}", "checkpoint=1", f"secs={seconds},5", f"seed={seed}", f"mbox={mbox}", *states]
    started = time.perf_counter()
    process = imaptest.run(args, seconds + 120)
    elapsed = time.perf_counter() - started
    output = process.stdout + process.stderr
    return StressResult(min(elapsed, float(seconds)), _total_operations(output), _ERROR.findall(output), output)


def _total_operations(output: str) -> int:
    """Sum of the per-command totals imaptest prints at the end ("Totals:" then a header line
    of command names, one or two of probabilities, then the counts)."""
    lines = output.splitlines()
    if "Totals:" not in lines:
        return 0
    for line in lines[lines.index("Totals:") + 1 :]:
        values = line.split()
        if values and all(value.isdigit() for value in values):
            return sum(int(value) for value in values)
    return 0


@contextmanager
def dovecot_target(workdir: Path) -> Iterator[Target]:
    from imap import Dovecot  # the benchmark's own configuration, with an implicit-TLS listener

    server = Dovecot(workdir, DOVECOT_USER, DOVECOT_PASSWORD, implicit_tls=True, name=f"dovecot-{free_port()}")
    try:
        wait_port(server.tls_port, 30)
        yield Target("Dovecot", server.tls_port, DOVECOT_USER, DOVECOT_PASSWORD)
    finally:
        server.stop()


@contextmanager
def caducee_target(workdir: Path, backend: str, pg: str = DEFAULT_PG, extra_env: dict[str, str] | None = None) -> Iterator[Target]:
    pg_name = None
    if backend == "sqlite":
        url = f"sqlite:///{workdir / f'imaptest-{free_port()}.sqlite3'}"
    else:
        pg_name, url = create_pg_database(pg, "caducee_imaptest")
    tls_port = free_port()
    env = {"CADUCEE_IMAPS_PORT": str(tls_port), "CADUCEE_SMIME": "off", **(extra_env or {})}
    caducee = Caducee(workdir, url, 1, env)
    try:
        wait_port(tls_port)
        doctor = caducee.credentials["professionals"]["doctor"]
        yield Target(f"Caducée {backend}", tls_port, doctor["address"], doctor["password"], caducee.workers()[0])
    finally:
        caducee.stop()
        if pg_name:
            drop_pg_database(pg, pg_name)


@contextmanager
def target(workdir: Path, name: str, pg: str = DEFAULT_PG) -> Iterator[Target]:
    if name == "dovecot":
        with dovecot_target(workdir) as found:
            yield found
    else:
        with caducee_target(workdir, name, pg) as found:
            yield found


def _py_spy() -> str:
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imaptest", default=os.environ.get("IMAPTEST", ""), help="built imaptest tree or binary (or $IMAPTEST)")
    parser.add_argument("--tests", default=None, help="scripted tests folder (default: next to the binary)")
    parser.add_argument("--servers", default="dovecot,sqlite,postgresql")
    parser.add_argument("--groups", default="", help="comma-separated test groups (default: all)")
    parser.add_argument("--stress", type=int, default=0, help="seconds of stress mode instead of the scripted tests")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1, help="imaptest's random seed in stress mode")
    parser.add_argument("--states", default="", help="imaptest state probabilities, e.g. logout=0")
    parser.add_argument("--pg", default=DEFAULT_PG)
    parser.add_argument("--verbose", action="store_true", help="print imaptest's whole output")
    parser.add_argument("--keep", default="", help="work in this folder and keep it (servers' logs, data)")
    parser.add_argument("--profile", default="", help="with --stress: py-spy's flame graph of Caducée into this folder")
    args = parser.parse_args()
    if not args.imaptest:
        raise SystemExit("give --imaptest PATH (a built imaptest tree) or set IMAPTEST")
    if shutil.which("dovecot") is None:
        raise SystemExit("dovecot is missing: run `bash scripts/system-packages.sh` (Debian package dovecot-imapd)")
    imaptest = Imaptest.locate(args.imaptest, args.tests)
    groups = [group for group in args.groups.split(",") if group] or None
    with tempfile.TemporaryDirectory(prefix="caducee-imaptest-") as tmp:
        workdir = Path(args.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(workdir, 0o755)
        for name in args.servers.split(","):
            with target(workdir, name, args.pg) as server:
                if args.stress:
                    mbox = write_mbox(workdir / "stress.mbox")
                    states = tuple(state for state in args.states.split(",") if state)
                    spy = None
                    if args.profile and server.pid:
                        Path(args.profile).mkdir(parents=True, exist_ok=True)
                        out = Path(args.profile) / f"{name}.txt"
                        command = [
                            _py_spy(),
                            "record",
                            "-p",
                            str(server.pid),
                            "-d",
                            str(args.stress),
                            "-o",
                            str(out),
                            "-f",
                            "raw",
                            "--threads",
                        ]
                        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    result = stress(imaptest, server, mbox, seconds=args.stress, clients=args.clients, seed=args.seed, states=states)
                    if spy is not None:
                        spy.wait()
                    if args.verbose:
                        print(result.output)
                    print(f"{server.name}: {result.per_second:,.0f} operations/s, {len(result.state_errors)} errors", flush=True)
                    for error in result.state_errors[:20]:
                        print(f"    {error}")
                else:
                    outcome = scripted(imaptest, server, groups)
                    if args.verbose:
                        print(outcome.output)
                    print(f"{server.name}: {outcome.summary}", flush=True)
                    if outcome.failed:
                        print(f"    failed: {', '.join(outcome.failed)}")


if __name__ == "__main__":
    main()
