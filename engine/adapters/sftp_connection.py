"""The SSH connection shared by the SFTP source and destination: its config fields and the checked connect.

The server's host key is verified before any credential is sent: against a pinned
``host_key_fingerprint`` (``SHA256:...``, as ``ssh-keygen -lf`` prints it) or a ``known_hosts``
file (the user's own when neither is given). An unknown key is refused unless
``accept_unknown_host_key`` is set; a key that differs from the one known for the host is always
refused, because that is what an impersonated server looks like. Every paramiko and socket error
becomes one :class:`~engine.errors.ConnectError` line naming ``host:port`` and never a secret.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ConnectError
from engine.typed_config import option, secret

if TYPE_CHECKING:
    import paramiko

log = logging.getLogger("syncengine.sftp")
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}=?$")


@dataclass(frozen=True, kw_only=True)
class SftpConnectionConfig:
    """An SSH server reached over SFTP."""

    host: str = option("Server name or address.", examples=["sftp.example.com", "{{ env.ALJEX_SFTP_HOST }}"])
    port: int | str = option("SSH port: a number, or a template such as `{{ env.SFTP_PORT }}`.", 22,
                             examples=[22, "{{ env.ALJEX_SFTP_PORT }}"])
    username: str = option("Login name.", examples=["aljex", "{{ env.ALJEX_SFTP_USER }}"])
    password: str | None = secret("Password; give this or `private_key`.",
                                  examples=["{{ env.ALJEX_SFTP_PASSWORD }}"])
    private_key: str | None = secret("Private key text (OpenSSH or PEM); give this or `password`.",
                                     examples=["{{ secret_file('keys/aljex_ed25519') }}"])
    private_key_passphrase: str | None = secret("Passphrase of an encrypted `private_key`.",
                                                examples=["{{ env.ALJEX_KEY_PASSPHRASE }}"])
    known_hosts: str | None = option("known_hosts file to verify the server's host key against, relative to the "
                                     "pipeline file. Without it and without `host_key_fingerprint`, the user's "
                                     "~/.ssh/known_hosts is used.", None, examples=["known_hosts"])
    host_key_fingerprint: str | None = option("The server's host key fingerprint, pinned: `SHA256:` and the "
                                              "base64 digest, as `ssh-keygen -lf` prints it.", None,
                                              examples=["SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8"])
    accept_unknown_host_key: bool = option("Connect to a server whose host key is in neither `known_hosts` nor "
                                           "`host_key_fingerprint` (its fingerprint is logged). A key that "
                                           "differs from a known one is refused regardless.", False)
    timeout: float = option("Seconds to wait for the connection, the SSH handshake and each reply.", 30.0,
                            exclusiveMinimum=0)


def fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:<base64>`` of a public key, in OpenSSH's format."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _load_private_key(config: SftpConnectionConfig, where: str) -> paramiko.PKey:
    import paramiko

    text = config.private_key or ""
    passphrase = config.private_key_passphrase or None
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text), password=passphrase)
        except paramiko.PasswordRequiredException as exc:
            raise ConnectError(f"{where}: private_key is encrypted; set private_key_passphrase") from exc
        except (paramiko.SSHException, ValueError):
            continue
    # The key text itself must never reach a message.
    raise ConnectError(f"{where}: private_key is not a readable Ed25519, ECDSA or RSA private key")


class HostKeyCheck:
    """Decides whether a server's host key is the one we expect."""

    def __init__(self, config: SftpConnectionConfig, base_dir: Path) -> None:
        import paramiko

        self.config = config
        self.pinned = config.host_key_fingerprint.rstrip("=") if config.host_key_fingerprint else None
        self.known = paramiko.HostKeys()
        self.source = ""
        path: Path | None = None
        if config.known_hosts:
            path = base_dir / config.known_hosts
            if not path.is_file():
                raise ConnectError(f"known_hosts file not found: {config.known_hosts}")
        elif not self.pinned:
            home = Path("~/.ssh/known_hosts").expanduser()
            path = home if home.is_file() else None
        if path is not None:
            try:
                self.known.load(str(path))
            except (OSError, paramiko.SSHException) as exc:
                raise ConnectError(f"cannot read known_hosts file {path.name}: {exc}") from exc
            self.source = config.known_hosts or "~/.ssh/known_hosts"

    def verify(self, key: paramiko.PKey, where: str) -> None:
        """Raise :class:`ConnectError` unless ``key`` is the expected host key."""
        offered = fingerprint(key)
        config = self.config
        port = int(config.port)
        name = config.host if port == 22 else f"[{config.host}]:{port}"
        entries = self.known.lookup(name) or {}
        if self.pinned is not None:
            if offered == self.pinned:
                return
            raise ConnectError(f"{where}: host key mismatch: the server offered {key.get_name()} {offered}, "
                               f"host_key_fingerprint pins {self.pinned}; refusing to connect (if the server's "
                               "key really changed, pin the new fingerprint)")
        if entries:
            known = entries.get(key.get_name())
            if known is not None and known.asbytes() == key.asbytes():
                return
            expected = ", ".join(f"{k} {fingerprint(v)}" for k, v in entries.items())
            raise ConnectError(f"{where}: host key changed: the server offered {key.get_name()} {offered}, "
                               f"{self.source} has {expected}; refusing to connect (if the change is expected, "
                               f"update {self.source})")
        if config.accept_unknown_host_key:
            log.warning("%s: accepting unknown host key %s %s (accept_unknown_host_key is set)", where,
                        key.get_name(), offered)
            return
        listed = f" in {self.source}" if self.source else ""
        raise ConnectError(f"{where}: unknown host key: the server offered {key.get_name()} {offered}, which is not "
                           f"listed{listed}; check it with the server's administrator, then pin it with "
                           f"host_key_fingerprint: \"{offered}\"")


class SftpSession:
    """One authenticated SSH transport and its SFTP channel."""

    def __init__(self, transport: paramiko.Transport, sftp: paramiko.SFTPClient, where: str) -> None:
        self.transport = transport
        self.sftp = sftp
        self.where = where

    def close(self) -> None:
        """Close the SFTP channel and the transport (and its socket)."""
        self.sftp.close()
        self.transport.close()


class LazySession:
    """The session of one pipeline source or destination: connected on first use, shared by its syncs.

    A failed connection is remembered, so the syncs after the first fail with the same line
    instead of knocking on the server again (a wrong password would count as several attempts).
    """

    def __init__(self, config: SftpConnectionConfig, base_dir: Path) -> None:
        self.config = config
        self.base_dir = base_dir
        self._session: SftpSession | None = None
        self._failure: str | None = None

    def get(self) -> SftpSession:
        """The connected session."""
        if self._failure is not None:
            raise ConnectError(self._failure)
        if self._session is None:
            try:
                self._session = connect(self.config, self.base_dir)
            except ConnectError as exc:
                self._failure = exc.message
                raise
        return self._session

    def close(self) -> None:
        """Close the session, if one was opened."""
        if self._session is not None:
            self._session.close()
            self._session = None


def connect(config: SftpConnectionConfig, base_dir: Path) -> SftpSession:
    """Open, verify and authenticate a session; any failure is one :class:`ConnectError` line."""
    import paramiko

    where = f"sftp {config.host}:{config.port}"
    port = str(config.port).strip()
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConnectError(f"{where}: port must be a number from 1 to 65535")
    pinned = config.host_key_fingerprint
    if pinned and not _FINGERPRINT.match(pinned):
        raise ConnectError(f"{where}: host_key_fingerprint must be SHA256: and 43 base64 characters, as "
                           "ssh-keygen -lf prints it")
    if not config.password and not config.private_key:
        raise ConnectError(f"{where}: give password or private_key")
    check = HostKeyCheck(config, base_dir)
    key = _load_private_key(config, where) if config.private_key else None
    try:
        sock = socket.create_connection((config.host, int(port)), timeout=config.timeout)
    except OSError as exc:
        raise ConnectError(f"{where}: unreachable: {exc.strerror or exc}") from exc
    transport: Any = None
    try:
        transport = paramiko.Transport(sock)
        transport.banner_timeout = transport.auth_timeout = transport.handshake_timeout = config.timeout
        transport.start_client(timeout=config.timeout)
        check.verify(transport.get_remote_server_key(), where)
        if key is not None:
            transport.auth_publickey(config.username, key)
        else:
            transport.auth_password(config.username, config.password or "")
        sftp = paramiko.SFTPClient.from_transport(transport)
        if sftp is None:
            raise ConnectError(f"{where}: the server refused the SFTP subsystem")
        sftp.get_channel().settimeout(config.timeout)
        return SftpSession(transport, sftp, where)
    except ConnectError:
        _discard(transport, sock)
        raise
    except paramiko.AuthenticationException as exc:
        _discard(transport, sock)
        raise ConnectError(f"{where}: authentication failed for user {config.username}") from exc
    except (TimeoutError, EOFError) as exc:
        _discard(transport, sock)
        raise ConnectError(f"{where}: unreachable: no SSH answer within {config.timeout:g}s") from exc
    except (paramiko.SSHException, OSError) as exc:
        _discard(transport, sock)
        raise ConnectError(f"{where}: unreachable: SSH negotiation failed: {exc}") from exc


def _discard(transport: Any, sock: socket.socket) -> None:
    if transport is not None:
        transport.close()
    sock.close()
