"""A real SFTP server for tests: paramiko's server side serving a local folder on 127.0.0.1.

It listens on port 0, requires a password (or an authorised public key), presents a host key
generated for the run, and is started and stopped by a fixture: :meth:`SftpServer.close` closes
every transport and joins every thread it started.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
from pathlib import Path
from typing import Any

import paramiko
from paramiko.sftp import SFTP_FAILURE, SFTP_NO_SUCH_FILE, SFTP_OK, SFTP_OP_UNSUPPORTED, SFTP_PERMISSION_DENIED


def _status(exc: OSError) -> int:
    return paramiko.SFTPServer.convert_errno(exc.errno) if exc.errno else SFTP_FAILURE


class FolderSftp(paramiko.SFTPServerInterface):
    """SFTP operations on a local root folder (paths outside it are refused)."""

    def __init__(self, server: Any, *args: Any, root: Path, **kwargs: Any) -> None:
        super().__init__(server, *args, **kwargs)
        self.root = root.resolve()

    def _local(self, path: str) -> Path:
        local = (self.root / path.lstrip("/")).resolve()
        if local != self.root and self.root not in local.parents:
            raise PermissionError(13, "outside the served folder")
        return local

    def list_folder(self, path: str) -> Any:
        """Entries with their attributes."""
        try:
            folder = self._local(path)
            out = []
            for name in sorted(os.listdir(folder)):
                attr = paramiko.SFTPAttributes.from_stat(os.stat(folder / name))
                attr.filename = name
                out.append(attr)
            return out
        except OSError as exc:
            return _status(exc)

    def stat(self, path: str) -> Any:
        """Attributes of a path."""
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(self._local(path)))
        except OSError as exc:
            return _status(exc)

    lstat = stat

    def open(self, path: str, flags: int, attr: Any) -> Any:
        """A handle on a local file."""
        try:
            local = self._local(path)
            mode = "wb" if flags & os.O_WRONLY else "r+b" if flags & os.O_RDWR else "rb"
            if flags & os.O_APPEND:
                mode = "ab"
            fd = os.open(local, flags | getattr(os, "O_BINARY", 0), 0o644)
            handle = paramiko.SFTPHandle(flags)
            stream = os.fdopen(fd, mode)
            handle.filename = str(local)
            handle.readfile = stream  # type: ignore[attr-defined]
            handle.writefile = stream  # type: ignore[attr-defined]
            return handle
        except OSError as exc:
            return _status(exc)

    def remove(self, path: str) -> int:
        """Delete a file."""
        try:
            os.remove(self._local(path))
            return SFTP_OK
        except OSError as exc:
            return _status(exc)

    def rename(self, oldpath: str, newpath: str) -> int:
        """SFTP v3 rename: refuses to replace an existing file."""
        try:
            target = self._local(newpath)
            if target.exists():
                return SFTP_FAILURE
            os.rename(self._local(oldpath), target)
            return SFTP_OK
        except OSError as exc:
            return _status(exc)

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        """The OpenSSH extension: replaces the target."""
        try:
            os.replace(self._local(oldpath), self._local(newpath))
            return SFTP_OK
        except OSError as exc:
            return _status(exc)

    def mkdir(self, path: str, attr: Any) -> int:
        """Make a folder."""
        try:
            os.mkdir(self._local(path))
            return SFTP_OK
        except OSError as exc:
            return _status(exc)

    def rmdir(self, path: str) -> int:
        """Remove a folder."""
        try:
            os.rmdir(self._local(path))
            return SFTP_OK
        except OSError as exc:
            return _status(exc)

    def chattr(self, path: str, attr: Any) -> int:
        """Attributes are not changed by this server."""
        return SFTP_OP_UNSUPPORTED

    def canonicalize(self, path: str) -> str:
        """Paths are shown as the client gave them, rooted."""
        return "/" + path.strip("/")

    def readlink(self, path: str) -> Any:
        """No links here."""
        return SFTP_NO_SUCH_FILE

    def symlink(self, target_path: str, path: str) -> int:
        """No links here."""
        return SFTP_PERMISSION_DENIED


class _Auth(paramiko.ServerInterface):
    """Password or public-key authentication against fixed credentials; counts the attempts."""

    def __init__(self, owner: SftpServer) -> None:
        self.owner = owner

    def get_allowed_auths(self, username: str) -> str:
        return "password,publickey"

    def check_auth_password(self, username: str, password: str) -> int:
        self.owner.auth_attempts += 1
        ok = username == self.owner.username and password == self.owner.password
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        self.owner.auth_attempts += 1
        ok = username == self.owner.username and any(key.asbytes() == k.asbytes() for k in self.owner.client_keys)
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


class SftpServer:
    """An SFTP server on 127.0.0.1 serving ``root``; use as a context manager or call :meth:`close`."""

    def __init__(self, root: Path, *, username: str = "aljex", password: str = "s3cret-Pa55word") -> None:
        self.root = root
        self.username = username
        self.password = password
        self.client_keys: list[paramiko.PKey] = []
        self.host_key = paramiko.ECDSAKey.generate()
        self.connections = 0
        self.auth_attempts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._transports: list[paramiko.Transport] = []
        self._thread = threading.Thread(target=self._accept, name="sftp-accept", daemon=True)
        self._thread.start()

    def known_hosts_line(self, key: paramiko.PKey | None = None) -> str:
        """A known_hosts line for this server (with another key, to simulate a changed one)."""
        key = key or self.host_key
        return f"[127.0.0.1]:{self.port} {key.get_name()} {key.get_base64()}\n"

    def _accept(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not selector.select(timeout=0.05):
                    continue
                try:
                    sock, _ = self._listener.accept()
                except OSError:
                    continue
                self.connections += 1
                transport = paramiko.Transport(sock)
                transport.add_server_key(self.host_key)
                transport.set_subsystem_handler("sftp", paramiko.SFTPServer, FolderSftp, root=self.root)
                self._transports.append(transport)
                # With an event, negotiation runs in the transport's own thread: one slow client
                # does not hold up the next.
                transport.start_server(event=threading.Event(), server=_Auth(self))

    def close(self) -> None:
        """Stop accepting, close every transport and join every thread."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for transport in self._transports:
            transport.close()
        for transport in self._transports:
            transport.join(timeout=5)

    def __enter__(self) -> SftpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
