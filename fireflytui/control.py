"""Control channel of a live run: commands in, replies out over a Unix socket in the run directory.

The trainer owns a ``ControlServer``; other processes (``fireflytui ctl``, the Textual app) call
``send_command``. Nothing listens on a network port, and only the user who owns the trainer may
send commands. This module uses the standard library only so that light clients can import it.

Wire protocol
-------------
- Socket: ``<run_dir>/control.sock`` (``SOCKET_NAME``), an AF_UNIX stream socket, mode 0600.
- The client connects and sends ONE request: a UTF-8 JSON object followed by ``"\\n"``::

      {"command": "set", "args": {"eta": "12"}, "id": "optional string"}

  ``command`` is 1-32 characters of ``[a-z_]``. ``args`` is optional (default ``{}``) and holds
  at most 16 entries; keys are 1-32 character strings, values are str (at most 256 characters),
  int, finite float or bool, never nested. ``id`` is an optional string of at most 128 characters
  that is echoed in the reply. No other fields are allowed.
- The server answers ONE line, a JSON object, then closes. It always has ``ok`` (bool) and
  ``error`` (str or null), plus ``id`` when the request had one; on success the trainer may add
  fields such as ``"applied_step": 120`` or ``"state": "paused"``.
- A request over ``MAX_MESSAGE`` bytes (newline excluded), invalid UTF-8, invalid JSON, not an
  object, or with a malformed field is refused at once with ``{"ok": false, "error": reason}``
  and never reaches the trainer. A connection closed before the newline is refused the same way.
  A client that has not sent a complete line within ``IDLE_TIMEOUT`` seconds is dropped.
- Which commands exist and which values are valid is the trainer's business: it answers every
  request through ``Request.reply``. If it does not answer within ``reply_timeout`` seconds the
  client gets ``ok: false`` ("timed out waiting for the trainer") and the request is discarded.
- Other refusals: ``"busy: too many connections"`` (more than ``MAX_CONNECTIONS`` at once),
  ``"busy: too many pending commands"`` (the queue is full), ``"permission denied"`` (peer of
  another uid, checked with SO_PEERCRED where available), ``"trainer stopped"`` (server closing).
"""

from __future__ import annotations

import json
import math
import os
import re
import selectors
import socket
import stat
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

SOCKET_NAME = "control.sock"
MAX_MESSAGE = 65536  # bytes in one request line, newline excluded
MAX_REPLY = 16 * MAX_MESSAGE  # bytes in one reply line accepted by send_command
IDLE_TIMEOUT = 5.0  # seconds a client may take to send its complete request line
MAX_CONNECTIONS = 16  # connections served at once; more are refused with "busy"
MAX_ARGS = 16  # entries in "args"
MAX_KEY = 32  # characters in an args key and in a command name
MAX_VALUE = 256  # characters in a string args value
MAX_ID = 128  # characters in a request id

_COMMAND_RE = re.compile(r"[a-z_]{1,32}")
_FIELDS = frozenset({"command", "args", "id"})
_SUN_PATH_MAX = 107  # bytes in an AF_UNIX path on Linux (108 with the terminating NUL)
_ACCEPT_BACKOFF = 0.1  # seconds the accept loop pauses after a failed accept (e.g. no fds)
_SEND_TIMEOUT = 5.0  # seconds allowed to write one reply
_DRAIN_TIMEOUT = 2.0  # seconds close() waits for connection threads to send their last reply
_UMASK_LOCK = threading.Lock()

ArgValue = str | int | float | bool


class ControlError(Exception):
    """A control-channel failure, with a one-line message meant for the user."""


class _Refused(Exception):
    """A request refused before it reaches the trainer; the message is the reply's error."""

    def __init__(self, reason: str, request_id: str | None = None) -> None:
        super().__init__(reason)
        self.request_id = request_id


def _reply_line(ok: bool, error: str | None, request_id: str | None, fields: dict) -> bytes:
    """Encode one reply as a JSON line; ``ok``, ``error`` and ``id`` override trainer fields."""
    body = dict(fields)
    body["ok"] = bool(ok)
    body["error"] = None if error is None else str(error)
    if request_id is not None:
        body["id"] = request_id
    return json.dumps(body, separators=(",", ":")).encode("utf-8") + b"\n"


@dataclass(eq=False)
class Request:
    """One validated command waiting for the trainer, answered exactly once through ``reply``."""

    command: str
    args: dict[str, ArgValue]
    id: str | None = None
    _line: bytes | None = field(default=None, init=False, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def reply(self, ok: bool, error: str | None = None, **fields: object) -> None:
        """Answer the client; thread-safe, and every call after the first is ignored."""
        if not ok and error is None:
            error = "command failed"
        line = _reply_line(ok, error, self.id, fields)  # TypeError here if a field is not JSON
        with self._lock:
            if self._line is not None:
                return
            self._line = line
        self._done.set()

    @property
    def answered(self) -> bool:
        """Whether ``reply`` has been called (by the trainer, a timeout or ``close``)."""
        return self._line is not None


def _parse_request(line: bytes) -> Request:
    """Validate one request line (newline stripped) against the wire protocol."""
    if len(line) > MAX_MESSAGE:
        raise _Refused(f"request too large (over {MAX_MESSAGE} bytes)")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused("request is not valid UTF-8") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise _Refused(f"request is not valid JSON: {reason}") from None
    if not isinstance(obj, dict):
        raise _Refused("request must be a JSON object")
    request_id = obj.get("id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > MAX_ID):
        raise _Refused(f'"id" must be a string of at most {MAX_ID} characters')
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise _Refused(f"unknown field {unknown[0]!r} (allowed: command, args, id)", request_id)
    command = obj.get("command")
    if not isinstance(command, str) or not _COMMAND_RE.fullmatch(command):
        raise _Refused(
            f'"command" must be a string of 1-{MAX_KEY} characters a-z and _', request_id
        )
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise _Refused('"args" must be a JSON object', request_id)
    if len(args) > MAX_ARGS:
        raise _Refused(f'"args" has {len(args)} entries (at most {MAX_ARGS})', request_id)
    for key, value in args.items():
        if not key or len(key) > MAX_KEY:
            raise _Refused(f"args key {key[:40]!r} must be 1-{MAX_KEY} characters", request_id)
        _check_value(key, value, request_id)
    return Request(command=command, args=args, id=request_id)


def _check_value(key: str, value: object, request_id: str | None) -> None:
    """Refuse an args value that is not a flat str/int/float/bool within the limits."""
    if isinstance(value, str):
        if len(value) > MAX_VALUE:
            raise _Refused(f"args.{key} is longer than {MAX_VALUE} characters", request_id)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Refused(f"args.{key} must be a finite number", request_id)
    elif not isinstance(value, int):
        raise _Refused(
            f"args.{key} must be a string, number or boolean, not {_json_type(value)}",
            request_id,
        )


def _json_type(value: object) -> str:
    """Name a decoded JSON value's type the way a protocol user would."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def _reject_constant(name: str) -> object:
    """Refuse the non-standard JSON constants NaN, Infinity and -Infinity."""
    raise ValueError(f"{name} is not allowed")


@contextmanager
def _short_path(path: str) -> Iterator[str]:
    """Yield a path to ``path`` short enough for AF_UNIX, via /proc/self/fd when it is too long."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield path
        return
    directory, name = os.path.split(path)
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        via = f"/proc/self/fd/{fd}"
        if not os.path.isdir(via):
            raise ControlError(
                f"the socket path {path} is longer than {_SUN_PATH_MAX} bytes and /proc is not "
                "available; use a shorter run directory"
            )
        yield f"{via}/{name}"
    finally:
        os.close(fd)


def _peer_uid(conn: socket.socket) -> int | None:
    """The uid of the process at the other end, or None where SO_PEERCRED does not exist."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    creds = conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def _send_quietly(conn: socket.socket, line: bytes) -> None:
    """Write a reply line, ignoring a client that has gone away."""
    with suppress(OSError):
        conn.settimeout(_SEND_TIMEOUT)
        conn.sendall(line)


class ControlServer:
    """The trainer's end: accepts commands on the run's socket and queues them for the main loop."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        reply_timeout: float = 300.0,  # seconds a client waits for the trainer's answer
        max_pending: int = 64,  # requests queued before new ones are refused with "busy"
    ) -> None:
        self.run_dir = Path(os.path.abspath(run_dir))
        self.socket_path = self.run_dir / SOCKET_NAME
        self.reply_timeout = float(reply_timeout)
        self.max_pending = int(max_pending)
        self._sock: socket.socket | None = None
        self._identity: tuple[int, int] | None = None
        self._owner_uid = os.geteuid()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._queue: deque[Request] = deque()
        self._in_flight: set[Request] = set()
        self._reading: set[socket.socket] = set()
        self._active = 0
        self._started = False

    def __enter__(self) -> ControlServer:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Bind the socket (owner-only), remove a stale one, and start the accept thread."""
        if self._started or self._stop.is_set():
            raise ControlError("this control server was already started; create a new one")
        if not self.run_dir.is_dir():
            raise ControlError(f"run directory {self.run_dir} does not exist")
        path = str(self.socket_path)
        self._remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _short_path(path) as bind_path, _UMASK_LOCK:
                old_umask = os.umask(0o077)
                try:
                    sock.bind(bind_path)
                finally:
                    os.umask(old_umask)
            os.chmod(path, 0o600)
            info = os.stat(path)
            self._identity = (info.st_dev, info.st_ino)
            sock.listen(64)
            sock.setblocking(False)
        except BaseException as exc:
            sock.close()
            if self._identity is not None:
                self._unlink_own_socket()
            if isinstance(exc, OSError):
                raise ControlError(f"cannot listen on {path}: {exc.strerror or exc}") from None
            raise
        self._sock = sock
        self._wake_r, self._wake_w = os.pipe()
        self._started = True
        self._thread = threading.Thread(
            target=self._accept_loop, name="fireflytui-control-accept", daemon=True
        )
        self._thread.start()

    def _remove_stale(self, path: str) -> None:
        """Unlink a socket nobody answers on; refuse if a live trainer or a non-socket is there."""
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ControlError(f"{path} exists and is not a socket; move it away and retry")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            with _short_path(path) as connect_path:
                probe.connect(connect_path)
        except ConnectionRefusedError:
            with suppress(FileNotFoundError):
                os.unlink(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ControlError(f"cannot check {path}: {exc.strerror or exc}") from None
        finally:
            probe.close()
        raise ControlError(f"another trainer is listening on {path}")

    def poll(self) -> list[Request]:
        """Take every request waiting now, oldest first, without blocking."""
        with self._cond:
            taken = [r for r in self._queue if not r.answered]
            self._queue.clear()
        return taken

    def wait(self, timeout: float) -> list[Request]:
        """Block up to ``timeout`` seconds until at least one request waits, then take them all."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while not self._stop.is_set():
                taken = [r for r in self._queue if not r.answered]
                if taken:
                    self._queue.clear()
                    return taken
                self._queue.clear()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        return []

    def close(self) -> None:
        """Stop accepting, answer every open request with "trainer stopped", unlink the socket."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join()
            os.close(self._wake_r)
            os.close(self._wake_w)
        if self._sock is not None:
            self._sock.close()
        with self._cond:
            waiting = list(self._in_flight)
            reading = list(self._reading)
            self._queue.clear()
            self._cond.notify_all()
        for request in waiting:
            request.reply(False, "trainer stopped")
        for conn in reading:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RD)
        deadline = time.monotonic() + _DRAIN_TIMEOUT
        with self._cond:
            while self._active and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)
        self._unlink_own_socket()

    def _unlink_own_socket(self) -> None:
        """Remove the socket file if it is still the one this server bound."""
        if self._identity is None:
            return
        path = str(self.socket_path)
        with suppress(OSError):
            info = os.lstat(path)
            if (info.st_dev, info.st_ino) == self._identity:
                os.unlink(path)
        self._identity = None

    def _accept_loop(self) -> None:
        """Accept connections until close(), handing each to its own short-lived thread."""
        assert self._sock is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._sock, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stop.is_set():
                selector.select()
                if self._stop.is_set():
                    break
                self._accept_one()

    def _accept_one(self) -> None:
        """Accept one waiting connection and start its thread, or refuse it when at capacity."""
        assert self._sock is not None
        try:
            conn, _ = self._sock.accept()
        except BlockingIOError:
            return
        except OSError:
            time.sleep(_ACCEPT_BACKOFF)  # e.g. out of file descriptors: back off, do not spin
            return
        with self._cond:
            busy = self._active >= MAX_CONNECTIONS
            if not busy:
                self._active += 1
        if busy:
            _send_quietly(conn, _reply_line(False, "busy: too many connections", None, {}))
            conn.close()
            return
        try:
            threading.Thread(
                target=self._serve, args=(conn,), name="fireflytui-control-conn", daemon=True
            ).start()
        except RuntimeError:
            _send_quietly(conn, _reply_line(False, "busy: cannot start a thread", None, {}))
            conn.close()
            self._finish_connection()

    def _finish_connection(self) -> None:
        """Count one connection thread as done and wake close() if it is draining."""
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def _serve(self, conn: socket.socket) -> None:
        """Read, validate and queue one request, then write the trainer's (or a refusal) reply."""
        try:
            with conn:
                line = self._handle(conn)
                _send_quietly(conn, line)
                with suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        finally:
            self._finish_connection()

    def _handle(self, conn: socket.socket) -> bytes:
        """Return the reply line for one connection, waiting for the trainer when it is valid."""
        try:
            uid = _peer_uid(conn)
        except OSError:
            uid = -1
        if uid is not None and uid != self._owner_uid:
            return _reply_line(False, "permission denied", None, {})
        try:
            request = _parse_request(self._read_line(conn))
        except _Refused as refused:
            return _reply_line(False, str(refused), refused.request_id, {})
        with self._cond:
            if self._stop.is_set():
                return _reply_line(False, "trainer stopped", request.id, {})
            live = [r for r in self._queue if not r.answered]
            if len(live) >= self.max_pending:
                return _reply_line(False, "busy: too many pending commands", request.id, {})
            self._queue = deque(live)
            self._queue.append(request)
            self._in_flight.add(request)
            self._cond.notify_all()
        try:
            if not request._done.wait(self.reply_timeout):
                request.reply(False, "timed out waiting for the trainer")
        finally:
            with self._cond:
                self._in_flight.discard(request)
        assert request._line is not None
        return request._line

    def _read_line(self, conn: socket.socket) -> bytes:
        """Read one request line within IDLE_TIMEOUT seconds; never buffer past the size limit."""
        with self._cond:
            if self._stop.is_set():
                raise _Refused("trainer stopped")
            self._reading.add(conn)
        try:
            return self._read_line_inner(conn)
        finally:
            with self._cond:
                self._reading.discard(conn)

    def _read_line_inner(self, conn: socket.socket) -> bytes:
        idle = IDLE_TIMEOUT
        deadline = time.monotonic() + idle
        buf = bytearray()
        scanned = 0
        while True:
            newline = buf.find(b"\n", scanned)
            if newline >= 0:
                return bytes(buf[:newline])  # _parse_request refuses it if it is too large
            if len(buf) > MAX_MESSAGE:
                raise _Refused(f"request too large (over {MAX_MESSAGE} bytes)")
            scanned = len(buf)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Refused(f"no complete request within {idle:g} s")
            try:
                conn.settimeout(remaining)
                chunk = conn.recv(MAX_MESSAGE)
            except TimeoutError:
                raise _Refused(f"no complete request within {idle:g} s") from None
            except OSError:
                raise _Refused("connection failed while reading the request") from None
            if not chunk:
                if self._stop.is_set():
                    raise _Refused("trainer stopped")
                if not buf:
                    raise _Refused("empty request: send one JSON object followed by a newline")
                raise _Refused("incomplete request: connection closed before the newline")
            buf += chunk


def send_command(
    run_dir: str | Path,
    command: str,
    args: dict | None = None,
    *,
    timeout: float = 60.0,  # seconds for connecting, sending and receiving the reply
) -> dict:
    """Send one command to the trainer of ``run_dir`` and return its reply dict (``ok``...)."""
    directory = os.path.abspath(run_dir)
    path = os.path.join(directory, SOCKET_NAME)
    request_id = uuid.uuid4().hex[:12]
    try:
        payload = json.dumps(
            {"command": command, "args": dict(args or {}), "id": request_id},
            allow_nan=False,
            separators=(",", ":"),
        ).encode("utf-8")
    except (TypeError, ValueError):
        msg = "command arguments must be strings, finite numbers or booleans"
        raise ControlError(msg) from None
    if not os.path.isdir(directory):
        raise ControlError(f"no run directory {directory}")
    if not os.path.lexists(path):
        raise ControlError(_no_socket_message(directory))
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            with _short_path(path) as connect_path:
                sock.connect(connect_path)
        except FileNotFoundError:
            raise ControlError(_no_socket_message(directory)) from None
        except ConnectionRefusedError:
            raise ControlError(
                f"the trainer of {directory} is not running (stale control socket)"
            ) from None
        except PermissionError:
            raise ControlError(
                f"permission denied on {path}: only the user who started the trainer can control it"
            ) from None
        except TimeoutError:
            raise ControlError(f"no reply from the trainer within {timeout:g} s") from None
        except OSError as exc:
            raise ControlError(
                f"cannot connect to the trainer of {directory}: {exc.strerror or exc}"
            ) from None
        line = _exchange(sock, payload + b"\n", deadline, timeout, directory)
    finally:
        sock.close()
    return _decode_reply(line, request_id, directory)


def _exchange(
    sock: socket.socket, payload: bytes, deadline: float, timeout: float, directory: str
) -> bytes:
    """Send the request and read one reply line before the deadline."""
    with suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(payload)  # a refusal may close the socket early; its reply is still readable
    buf = bytearray()
    while True:
        newline = buf.find(b"\n")
        if newline >= 0:
            return bytes(buf[:newline])
        if len(buf) > MAX_REPLY:
            raise ControlError(f"malformed reply from the trainer of {directory}: too large")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ControlError(f"no reply from the trainer within {timeout:g} s")
        try:
            sock.settimeout(remaining)
            chunk = sock.recv(MAX_MESSAGE)
        except TimeoutError:
            raise ControlError(f"no reply from the trainer within {timeout:g} s") from None
        except OSError as exc:
            raise ControlError(
                f"connection to the trainer of {directory} failed: {exc.strerror or exc}"
            ) from None
        if not chunk:
            what = "an incomplete reply" if buf else "no reply"
            raise ControlError(f"the trainer of {directory} closed the connection with {what}")
        buf += chunk


def _decode_reply(line: bytes, request_id: str, directory: str) -> dict:
    """Parse a reply line and check the fields every reply must carry."""
    bad = f"malformed reply from the trainer of {directory}"
    try:
        reply = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ControlError(f"{bad}: not a JSON line") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ControlError(f'{bad}: no boolean "ok"')
    if not (reply.get("error") is None or isinstance(reply.get("error"), str)):
        raise ControlError(f'{bad}: "error" is not a string')
    if reply.get("id") not in (None, request_id):
        raise ControlError(f"{bad}: it answers another request")
    return reply


def _no_socket_message(directory: str) -> str:
    return (
        f"no trainer is running in {directory} (no control socket); it may have finished "
        "— see `fireflytui runs`"
    )


def parse_assignments(items: list[str]) -> dict[str, str]:
    """Turn ``["eta=12", "lr=0.05"]`` into ``{"eta": "12", "lr": "0.05"}`` for ``send_command``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise ControlError(f"expected KEY=VALUE, got {item!r}")
        if key in out:
            raise ControlError(f"{key!r} is given twice; give each KEY=VALUE once")
        out[key] = value.strip()
    return out
