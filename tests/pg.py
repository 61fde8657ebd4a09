"""A private PostgreSQL cluster for the tests: initdb + pg_ctl in a temporary directory.

initdb refuses to run as root, so as root (containers, CI) both run as the `postgres` user
that Debian's package creates, in a directory that user owns.
"""

from __future__ import annotations

import getpass
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from workers.kafka.embedded import free_port, wait_for_port

MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH nor in /usr/lib/postgresql/*/bin:"
    " `make test` installs Debian's postgresql (or set POSTGRES_URL)"
)


def _bin_dir() -> Path:
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    # Debian keeps them off PATH, one directory per major version: take the newest.
    candidates = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin") if (Path(d) / "initdb").exists()]
    candidates.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else -1)
    if not candidates:
        raise RuntimeError(MISSING)
    return candidates[-1]


class PrivatePostgres:
    """One cluster on 127.0.0.1:<free port>, trust auth, fsync off (test data only)."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.as_root = os.geteuid() == 0
        self.user = "postgres" if self.as_root else getpass.getuser()
        self.dir = Path(tempfile.mkdtemp(prefix="seqguard-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"
        try:
            if self.as_root:
                try:
                    shutil.chown(self.dir, user="postgres", group="postgres")
                except LookupError:
                    raise RuntimeError("as root, initdb must run as the `postgres` user: " + MISSING) from None
            self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "--no-sync", "-E", "UTF8")
            self.start()
        except BaseException:
            self.destroy()
            raise

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=self.dir)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def start(self) -> None:
        """Start (again) on the same port and directory; return once it accepts connections."""
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        # -w: pg_ctl waits for the server to be ready (not only listening), up to -t seconds.
        self._run("pg_ctl", "start", "-w", "-t", "30", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", options)
        wait_for_port(self.port)

    def stop(self) -> None:
        """Fast shutdown: clients are disconnected, the data stays for start()."""
        self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data))

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        if self.running():
            try:
                self.stop()
            except RuntimeError:
                self._run("pg_ctl", "stop", "-m", "immediate", "-D", str(self.data))
                time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        path = self.dir / "log"
        return path.read_text(errors="replace") if path.exists() else ""


def start_postgres() -> PrivatePostgres:
    return PrivatePostgres()


async def fresh_database(url: str, name: str) -> str:
    """Create database ``name`` on the server of ``url``; the URL of the new database."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"
