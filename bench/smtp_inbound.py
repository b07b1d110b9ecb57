"""Benchmark: the inbound path. Another operator's signed and encrypted mail into MX, verified and decrypted.

Caducée (`caducee serve --demo --workers 2`, S/MIME on) receives on its MX listener (STARTTLS,
client certificate required) mail from the demo's second operator, autre-operateur.mssante.fr:
each message signed by the sending professional's own certificate and encrypted to the
patient's certificate (a key Caducée holds), made beforehand as that operator's software
would (`cryptography`'s CMS builders). The load is 20 sessions of a Python client (aiosmtplib,
the peer operator's client certificate), each sending its share over one connection. Every
message is verified (pyHanko: chain to the trust anchors, CRL, key usage, the signer may sign
for From, the outer headers match the signed ones), decrypted with the held key and stored
sealed at rest before its "250".

Anchors measured in the same run:
  (a) the bare libraries on the same messages in one process: `cryptography`'s
      `pkcs7_decrypt_der` then pyHanko's `async_validate_detached_cms` against the same anchors
      and CRL (a validation context per message, as one validation is one context): the work
      the inbound path cannot avoid, on one core. Caducée's rate per core is compared with it.
  (b) Postfix relaying into smtp-sink (no verification at all): `smtp-source` with messages of
      the same size, as context.

    .venv/bin/python bench/smtp_inbound.py [--messages 2000] [--repeat 3] [--pg URL]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import create_pg_database, drop_pg_database, free_port  # noqa: E402
from postfix_anchor import PostfixRelay  # noqa: E402
from report import machine, median, write_section  # noqa: E402
from smtp_accept import Caducee, cpu_seconds, smtp_source, tree_of, wait_port  # noqa: E402

DEFAULT_PG = os.environ.get("CADUCEE_TEST_PG") or "postgresql://postgres@127.0.0.1:5432/test"
PEER_SENDER = "dr.durand@autre-operateur.mssante.fr"
RECIPIENT = "285037512345688@patient.mssante.fr"
SESSIONS = 20


class Peer:
    """The second operator of the demo trust space: its MX client certificate, a professional's S/MIME pair."""

    def __init__(self, data_dir: Path) -> None:
        from caducee.crypto.atrest import load_master_key
        from caducee.crypto.pki import Issuer, Pair, TrustSpace, key_passphrase, load_key

        self.passphrase = key_passphrase(load_master_key(data_dir))
        self.space = TrustSpace(data_dir / "pki")
        issuer = Issuer(self.space, self.passphrase)
        self.tls = Pair(data_dir / "peer-mx.crt", data_dir / "peer-mx.key")
        issuer.tls(self.tls, "mx.autre-operateur.mssante.fr", "Autre Operateur", server=False)
        self.smime = issuer.mailbox(PEER_SENDER, "Dr Durand", "Autre Operateur", held=False)
        self.key = load_key(self.smime.key, self.passphrase)

    def messages(self, count: int, size: int) -> list[bytes]:
        """`count` distinct messages of about `size` bytes before signing, signed then encrypted to the patient."""
        from cryptography import x509

        from caducee.crypto import smime

        cert = x509.load_pem_x509_certificate(self.smime.cert.read_bytes())
        chain = tuple(x509.load_pem_x509_certificates(self.space.org_ca.cert.read_bytes()))
        signer = smime.Signer(cert, self.key, chain)
        patient = x509.load_pem_x509_certificate(self.space.mailbox(RECIPIENT).cert.read_bytes())
        body = "Compte rendu de consultation transmis par le cabinet, ligne de texte.\r\n" * (size // 72)
        out = []
        for n in range(count):
            plain = (
                f"From: Dr Durand <{PEER_SENDER}>\r\nTo: {RECIPIENT}\r\nSubject: Compte rendu {n}\r\n"
                f"Date: Mon, 23 Nov 2026 10:00:00 +0100\r\nMessage-ID: <in-{n}-{uuid.uuid4().hex}@autre-operateur.mssante.fr>\r\n"
                f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}"
            ).encode()
            out.append(smime.sign_and_encrypt(plain, signer, [patient]))
        return out


async def send_all(port: int, context: object, messages: list[bytes]) -> float:
    """Messages/s over SESSIONS connections to MX, each sending its share."""
    import aiosmtplib

    shares = [messages[n::SESSIONS] for n in range(SESSIONS)]

    async def session(share: list[bytes]) -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=context, timeout=120) as client:
            for data in share:
                errors, reply = await client.sendmail(PEER_SENDER, [RECIPIENT], data)  # a refusal raises
                if errors:
                    raise RuntimeError(f"refused: {errors} {reply}")

    start = time.perf_counter()
    await asyncio.gather(*(session(share) for share in shares))
    return len(messages) / (time.perf_counter() - start)


_BOUNDARY = re.compile(rb'boundary="?([^";\r\n]+)"?', re.I)


def bare_rate(space_dir: Path, passphrase: bytes, messages: list[bytes]) -> float:
    """The bare libraries on the same messages, in this one process: decrypt, then validate the signature."""
    from asn1crypto import cms as asn1_cms
    from asn1crypto import x509 as asn1_x509
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs7
    from pyhanko.sign.validation.generic_cms import async_validate_detached_cms
    from pyhanko.sign.validation.settings import KeyUsageConstraints
    from pyhanko_certvalidator import ValidationContext

    from caducee.crypto.pki import TrustSpace, load_key

    space = TrustSpace(space_dir)
    cert = x509.load_pem_x509_certificate(space.mailbox(RECIPIENT).cert.read_bytes())
    key = load_key(space.mailbox(RECIPIENT).key, passphrase)
    loaded = x509.load_pem_x509_certificates(space.anchors.read_bytes())

    def asn1(certs: list[x509.Certificate]) -> list[asn1_x509.Certificate]:
        return [asn1_x509.Certificate.load(c.public_bytes(serialization.Encoding.DER)) for c in certs]

    roots = asn1([c for c in loaded if c.issuer == c.subject])  # as Caducée splits the anchors file
    others = asn1([c for c in loaded if c.issuer != c.subject])
    crl = x509.load_pem_x509_crl(space.crl.read_bytes()).public_bytes(serialization.Encoding.DER)
    usage = KeyUsageConstraints(key_usage={"digital_signature"}, extd_key_usage={"email_protection"})

    async def run() -> None:
        for message in messages:
            body = message.split(b"\r\n\r\n", 1)[1]
            inner = pkcs7.pkcs7_decrypt_der(base64.b64decode(b"".join(body.split())), cert, key, [])
            head, signed_body = inner.split(b"\r\n\r\n", 1)
            found = _BOUNDARY.search(head)
            assert found is not None
            delimiter = b"--" + found.group(1)
            start = signed_body.index(delimiter + b"\r\n") + len(delimiter) + 2
            end = signed_body.index(b"\r\n" + delimiter, start)
            entity = signed_body[start:end]
            signature = signed_body[end + 2 + len(delimiter) :].split(b"\r\n\r\n", 1)[1].split(b"\r\n" + delimiter)[0]
            signed_data = asn1_cms.ContentInfo.load(base64.b64decode(b"".join(signature.split())))["content"]
            context = ValidationContext(
                trust_roots=roots, other_certs=others, crls=[crl], allow_fetching=False, revocation_mode="hard-fail"
            )
            status = await async_validate_detached_cms(entity, signed_data, signer_validation_context=context, key_usage_settings=usage)
            assert status.intact and status.valid and status.trusted, status

    start, cpu = time.perf_counter(), time.process_time()
    asyncio.run(run())
    BARE_CPU_MS.append(1000 * (time.process_time() - cpu) / len(messages))
    return len(messages) / (time.perf_counter() - start)


BARE_CPU_MS: list[float] = []  # the bare run's CPU milliseconds per message, one per run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg", default=DEFAULT_PG)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    from caducee.crypto.tls import client_context

    results: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    wire_size = 0
    with tempfile.TemporaryDirectory(prefix="caducee-inbound-bench-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        sink_port, postfix_port = free_port(), free_port()
        sink = subprocess.Popen(["smtp-sink", "-u", "postfix", "-c", f"127.0.0.1:{sink_port}", "500"], stdout=subprocess.DEVNULL)
        postfix = PostfixRelay(workdir, postfix_port, sink_port)
        postfix.start()
        pg_names: list[str] = []
        try:
            for attempt in range(args.repeat):
                for backend in args.backends.split(","):
                    if backend == "sqlite":
                        url = f"sqlite:///{workdir / f'inbound-{attempt}.sqlite3'}"
                    else:
                        name, url = create_pg_database(args.pg, "caducee_inbound")
                        pg_names.append(name)
                    mx_port = free_port()
                    caducee = Caducee(workdir, url, args.workers, {"CADUCEE_MX_PORT": str(mx_port)})
                    try:
                        wait_port(mx_port)
                        peer = Peer(caducee.data_dir)
                        messages = peer.messages(args.messages, args.size)
                        wire_size = len(messages[0])
                        context = client_context(peer.space.anchors, peer.tls, password=peer.passphrase)
                        asyncio.run(send_all(mx_port, context, messages[:SESSIONS]))  # warm: caches, connections
                        key = f"Caducée {backend}, MX, --workers {args.workers}"
                        serving = caducee.workers()
                        before = cpu_seconds(tree_of(caducee.process.pid), serving)
                        results.setdefault(key, []).append(asyncio.run(send_all(mx_port, context, messages[SESSIONS:])))
                        after = cpu_seconds(tree_of(caducee.process.pid), serving)
                        for kind in before:
                            cpu.setdefault(f"{key}|{kind}", []).append(1000 * (after[kind] - before[kind]) / (len(messages) - SESSIONS))
                        if backend == args.backends.split(",")[0]:  # the anchors, on these very messages
                            results.setdefault("bare pyHanko verify + cryptography decrypt, one process", []).append(
                                bare_rate(peer.space.directory, peer.passphrase, messages[: max(200, len(messages) // 4)])
                            )
                    finally:
                        caducee.stop()
                results.setdefault("Postfix (relay to smtp-sink, no verification)", []).append(
                    smtp_source(postfix_port, args.messages, SESSIONS, wire_size)
                )
                print({k: f"{v[-1]:.0f}" for k, v in results.items()}, flush=True)
        finally:
            postfix.stop()
            sink.terminate()
            for name in pg_names:
                drop_pg_database(args.pg, name)
    bare = median(results["bare pyHanko verify + cryptography decrypt, one process"])
    postfix_rate = median(results["Postfix (relay to smtp-sink, no verification)"])
    lines = []
    for key, values in results.items():
        rate = median(values)
        per_core = f"{rate / args.workers / bare:.2f}x" if key.startswith("Caducée") else ("1.00x" if key.startswith("bare") else "")
        lines.append(f"| {key} | {rate:,.0f} | {per_core} | {rate / postfix_rate:.2f}x |")
    cpu_lines = []
    for key in results:
        if f"{key}|serving" in cpu:
            parts = [median(cpu[f"{key}|{kind}"]) for kind in ("serving", "cpu pool", "other")]
            cpu_lines.append(f"| {key} | {parts[0]:.2f} | {parts[1]:.2f} | {sum(parts):.2f} | {median(BARE_CPU_MS) / sum(parts):.2f}x |")
    cpu_lines.append(f"| bare pyHanko verify + cryptography decrypt | | {median(BARE_CPU_MS):.2f} | {median(BARE_CPU_MS):.2f} | 1.00x |")
    body = (
        f"""## Inbound: signed and encrypted mail into MX (`bench/smtp_inbound.py`)

Command: `.venv/bin/python bench/smtp_inbound.py --messages {args.messages} --repeat {args.repeat}` ({machine()}).
Another operator of the trust space (the demo's autre-operateur.mssante.fr: its MX client certificate, a professional's
own S/MIME certificate) sends {args.messages} messages ({args.size // 1024} KB of text, {wire_size // 1024} KB on the wire once signed and
encrypted to the patient) over {SESSIONS} STARTTLS sessions with client certificates (aiosmtplib, each session reusing its
connection) to `caducee serve --demo --workers {args.workers}`: each is verified (pyHanko: chain, CRL, key usage, signer
may sign for From, outer headers as signed), decrypted with the patient's held key and stored sealed at rest before its
"250". *Bare*: `cryptography`'s `pkcs7_decrypt_der` and pyHanko's `async_validate_detached_cms` (same anchors, same CRL,
a validation context per message) on the same messages in one process: Caducée's rate per core (its rate divided by its
{args.workers} serving processes) against it, target >= 0.5x. Postfix relaying into smtp-sink (`smtp-source -s {SESSIONS}`, messages of
the same size, no verification) is context. Medians of {args.repeat} runs.

| receiver | messages/s | per core vs bare | vs Postfix |
|---|---|---|---|
"""
        + "\n".join(lines)
        + """

CPU time per message received (milliseconds, medians; user + system of the server's processes, and the bare
run's own process time). On a shared machine the rates above depend on what else runs; the CPU each message
costs hardly does, so the last column is the per-core comparison in CPU terms:

| server | serving processes | CPU pool (verify, decrypt) | total | bare / total |
|---|---|---|---|---|
"""
        + "\n".join(cpu_lines)
    )
    print(body)
    if not args.no_write:
        write_section("smtp_inbound", body)


if __name__ == "__main__":
    main()
