"""The control channel: Unix-socket protocol, refusals, owner-only access and client errors."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import ANY

import pytest

from fireflytui import control
from fireflytui.control import (
    MAX_MESSAGE,
    SOCKET_NAME,
    ControlError,
    ControlServer,
    Request,
    parse_assignments,
    send_command,
)

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def server(run_dir: Path) -> Iterator[ControlServer]:
    with ControlServer(run_dir, reply_timeout=5.0) as srv:
        yield srv


class Trainer:
    """A thread playing the trainer: answers every request with ok, a step and what it saw."""

    def __init__(self, srv: ControlServer) -> None:
        self.srv = srv
        self.seen: list[Request] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for req in self.srv.wait(0.05):
                self.seen.append(req)
                req.reply(True, applied_step=120, state="running", echo=req.args)

    def __enter__(self) -> Trainer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def raw(run_dir: Path, payload: bytes, *, shut_write: bool = True) -> dict:
    """Send raw bytes on the control socket and decode the single reply line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        sock.connect(str(run_dir / SOCKET_NAME))
        try:
            sock.sendall(payload)
            if shut_write:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        buf = b""
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    assert buf.endswith(b"\n"), buf
    return json.loads(buf)


def in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, list]:
    """Run ``fn`` in a thread; the list receives its result or exception."""
    out: list = []

    def target() -> None:
        try:
            out.append(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - handed back to the test
            out.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def stale_socket(path: Path) -> None:
    """Leave a socket file nobody listens on, as a killed trainer would."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


# ---------------------------------------------------------------- round trip


def test_round_trip_returns_trainer_fields_and_typed_args(server: ControlServer, run_dir: Path):
    args = {"eta": "12", "lr": 0.05, "steps": 3, "hold": True}
    with Trainer(server) as trainer:
        reply = send_command(run_dir, "set", args, timeout=5.0)
    assert reply["ok"] is True and reply["error"] is None
    assert reply["applied_step"] == 120 and reply["state"] == "running"
    assert reply["echo"] == args
    assert [(r.command, r.args) for r in trainer.seen] == [("set", args)]


def test_request_id_is_passed_through(server: ControlServer, run_dir: Path):
    with Trainer(server) as trainer:
        reply = raw(run_dir, b'{"command": "pause", "id": "abc-1"}\n', shut_write=False)
    assert reply["ok"] is True and reply["id"] == "abc-1"
    assert trainer.seen[0].id == "abc-1" and trainer.seen[0].args == {}


def test_trainer_error_reply_reaches_client(server: ControlServer, run_dir: Path):
    def trainer() -> None:
        for req in server.wait(5.0):
            req.reply(False, "unknown command 'jump'; try: pause, resume, set")
            req.reply(True)  # ignored: the first answer stands

    t, _ = in_thread(trainer)
    reply = send_command(run_dir, "jump", timeout=5.0)
    t.join()
    assert reply == {
        "ok": False,
        "error": "unknown command 'jump'; try: pause, resume, set",
        "id": reply["id"],
    }


def test_request_of_exactly_max_message_bytes_is_accepted(server: ControlServer, run_dir: Path):
    head, tail = b'{"command": "ping"', b"}"
    line = head + b" " * (MAX_MESSAGE - len(head) - len(tail)) + tail
    assert len(line) == MAX_MESSAGE
    with Trainer(server) as trainer:
        reply = raw(run_dir, line + b"\n")
    assert reply["ok"] is True
    assert [r.command for r in trainer.seen] == ["ping"]


# ---------------------------------------------------------------- malformed requests

BAD_REQUESTS = {
    "oversized line": b'{"command": "set", "args": {"a": "' + b"x" * MAX_MESSAGE + b'"}}\n',
    "oversized, no newline": b"x" * (MAX_MESSAGE + 10),
    "truncated JSON then close": b'{"command": "pau',
    "empty then close": b"",
    "invalid UTF-8": b'{"command": "pause", "args": {"a": "\xff\xfe"}}\n',
    "invalid JSON": b"{command: pause}\n",
    "deep nesting": b"[" * 50000 + b"\n",
    "array": b'["pause"]\n',
    "string": b'"pause"\n',
    "number": b"42\n",
    "missing command": b'{"args": {}}\n',
    "command not a string": b'{"command": 5}\n',
    "empty command": b'{"command": ""}\n',
    "upper-case command": b'{"command": "Pause"}\n',
    "command with a dash": b'{"command": "set-lr"}\n',
    "command too long": b'{"command": "' + b"a" * 33 + b'"}\n',
    "unknown field": b'{"command": "pause", "force": true}\n',
    "id not a string": b'{"command": "pause", "id": 5}\n',
    "args an array": b'{"command": "set", "args": ["eta", 12]}\n',
    "args null": b'{"command": "set", "args": null}\n',
    "nested object value": b'{"command": "set", "args": {"eta": {"v": 1}}}\n',
    "array value": b'{"command": "set", "args": {"eta": [1, 2]}}\n',
    "null value": b'{"command": "set", "args": {"eta": null}}\n',
    "NaN value": b'{"command": "set", "args": {"eta": NaN}}\n',
    "infinite value": b'{"command": "set", "args": {"eta": 1e999}}\n',
    "too many args": json.dumps(
        {"command": "set", "args": {f"k{i}": i for i in range(17)}}
    ).encode()
    + b"\n",
    "key too long": json.dumps({"command": "set", "args": {"k" * 33: 1}}).encode() + b"\n",
    "empty key": b'{"command": "set", "args": {"": 1}}\n',
    "value too long": json.dumps({"command": "set", "args": {"k": "v" * 257}}).encode() + b"\n",
}


@pytest.mark.parametrize("payload", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_malformed_request_is_refused_and_never_queued(
    server: ControlServer, run_dir: Path, payload: bytes
):
    reply = raw(run_dir, payload)
    assert reply["ok"] is False
    assert isinstance(reply["error"], str) and reply["error"]
    assert "\n" not in reply["error"]
    assert server.poll() == []


def test_refusal_reasons_name_the_problem(server: ControlServer, run_dir: Path):
    def error(payload: bytes) -> str:
        return raw(run_dir, payload)["error"]

    assert "too large" in error(b"x" * (MAX_MESSAGE + 10))
    assert "UTF-8" in error(b'{"command": "\xff"}\n')
    assert "JSON" in error(b"{nope\n")
    assert "object" in error(b"[1]\n")
    assert "incomplete" in error(b'{"command": "pau')
    assert '"command"' in error(b'{"command": "Pause"}\n')
    assert "args.eta" in error(b'{"command": "set", "args": {"eta": [1]}}\n')
    assert "16" in error(
        json.dumps({"command": "set", "args": {f"k{i}": i for i in range(17)}}).encode() + b"\n"
    )


def test_server_still_serves_after_every_kind_of_bad_request(server: ControlServer, run_dir: Path):
    baseline = threading.active_count()
    for payload in BAD_REQUESTS.values():
        assert raw(run_dir, payload)["ok"] is False
    assert server.poll() == []
    with Trainer(server):
        reply = send_command(run_dir, "resume", {"at": 3}, timeout=5.0)
    assert reply["ok"] is True and reply["echo"] == {"at": 3}
    # connection threads end with their connection: bad traffic leaves nothing behind
    deadline = time.monotonic() + 5.0
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= baseline


def test_silent_client_is_dropped(
    server: ControlServer, run_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(control, "IDLE_TIMEOUT", 0.2)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        sock.connect(str(run_dir / SOCKET_NAME))
        sock.sendall(b'{"command": "pa')  # never finishes the line
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    reply = json.loads(data)
    assert reply["ok"] is False and "no complete request" in reply["error"]
    assert server.poll() == []


def test_other_user_is_refused(
    server: ControlServer, run_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(control, "_peer_uid", lambda conn: os.geteuid() + 1)
    reply = raw(run_dir, b'{"command": "pause"}\n')
    assert reply == {"ok": False, "error": "permission denied"}
    assert server.poll() == []


@pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED"), reason="SO_PEERCRED is Linux-only")
def test_peer_uid_is_read_from_the_kernel(run_dir: Path):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert control._peer_uid(a) == os.geteuid()


# ---------------------------------------------------------------- socket file


def test_socket_is_owner_only_and_umask_is_restored(run_dir: Path):
    old = os.umask(0o002)
    try:
        with ControlServer(run_dir):
            mode = stat.S_IMODE(os.stat(run_dir / SOCKET_NAME).st_mode)
            assert stat.S_ISSOCK(os.stat(run_dir / SOCKET_NAME).st_mode)
            assert mode & 0o077 == 0
            assert os.umask(0o002) == 0o002
    finally:
        os.umask(old)


def test_close_removes_the_socket(run_dir: Path):
    srv = ControlServer(run_dir)
    srv.start()
    assert (run_dir / SOCKET_NAME).exists()
    srv.close()
    assert not os.path.lexists(run_dir / SOCKET_NAME)
    with pytest.raises(ControlError, match="no trainer is running"):
        send_command(run_dir, "pause", timeout=2.0)


def test_stale_socket_is_replaced_by_start(run_dir: Path):
    stale_socket(run_dir / SOCKET_NAME)
    with ControlServer(run_dir) as srv, Trainer(srv):
        assert send_command(run_dir, "pause", timeout=5.0)["ok"] is True


def test_second_server_on_a_live_socket_is_refused(server: ControlServer, run_dir: Path):
    with pytest.raises(ControlError, match="another trainer is listening"):
        ControlServer(run_dir).start()
    with Trainer(server):  # the first trainer's socket survives the attempt
        assert send_command(run_dir, "pause", timeout=5.0)["ok"] is True


def test_non_socket_file_is_not_deleted(run_dir: Path):
    (run_dir / SOCKET_NAME).write_text("notes")
    with pytest.raises(ControlError, match="not a socket"):
        ControlServer(run_dir).start()
    assert (run_dir / SOCKET_NAME).read_text() == "notes"


def test_missing_run_directory_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ControlError, match="does not exist"):
        ControlServer(tmp_path / "nope").start()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_long_run_directory_path(tmp_path: Path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert len(str(deep / SOCKET_NAME)) > 120
    stale_socket_path = deep / SOCKET_NAME
    with control._short_path(str(stale_socket_path)) as short:
        stale_socket(Path(short))  # a killed trainer's socket, at the long path
    with ControlServer(deep) as srv:
        assert stat.S_ISSOCK(os.stat(stale_socket_path).st_mode)
        with Trainer(srv):
            reply = send_command(deep, "set", {"eta": "12"}, timeout=5.0)
    assert reply["ok"] is True and reply["applied_step"] == 120
    assert not os.path.lexists(stale_socket_path)


# ---------------------------------------------------------------- client errors


def test_client_without_socket(run_dir: Path):
    with pytest.raises(ControlError) as info:
        send_command(run_dir, "pause")
    msg = str(info.value)
    assert "no trainer is running" in msg and "fireflytui runs" in msg and "\n" not in msg


def test_client_on_stale_socket(run_dir: Path):
    stale_socket(run_dir / SOCKET_NAME)
    with pytest.raises(ControlError, match="not running \\(stale control socket\\)"):
        send_command(run_dir, "pause", timeout=2.0)


def test_client_timeout_when_trainer_never_answers(run_dir: Path):
    with ControlServer(run_dir, reply_timeout=30.0):
        with pytest.raises(ControlError, match="no reply from the trainer within 0.2 s"):
            send_command(run_dir, "pause", timeout=0.2)


def test_server_answers_when_trainer_misses_reply_timeout(run_dir: Path):
    with ControlServer(run_dir, reply_timeout=0.2) as srv:
        reply = send_command(run_dir, "pause", timeout=5.0)
        assert reply["ok"] is False and reply["error"] == "timed out waiting for the trainer"
        assert srv.poll() == []  # the abandoned request is not applied later


def test_client_refuses_unencodable_args(run_dir: Path):
    with pytest.raises(ControlError, match="strings, finite numbers or booleans"):
        send_command(run_dir, "set", {"eta": float("nan")})


def test_client_rejects_malformed_reply(run_dir: Path):
    path = run_dir / SOCKET_NAME
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as fake:
        fake.bind(str(path))
        fake.listen(1)

        def answer() -> None:
            conn, _ = fake.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b'{"status": "fine"}\n')

        t, _ = in_thread(answer)
        with pytest.raises(ControlError, match="malformed reply"):
            send_command(run_dir, "pause", timeout=5.0)
        t.join()


# ---------------------------------------------------------------- shutdown and back-pressure


def test_close_answers_request_taken_but_not_answered(run_dir: Path):
    srv = ControlServer(run_dir, reply_timeout=30.0)
    srv.start()
    t, out = in_thread(send_command, run_dir, "pause", timeout=10.0)
    taken = srv.wait(5.0)
    assert [r.command for r in taken] == ["pause"]
    srv.close()
    t.join()
    assert out[0]["ok"] is False and out[0]["error"] == "trainer stopped"


def test_full_queue_refuses_and_close_answers_queued_request(run_dir: Path):
    srv = ControlServer(run_dir, reply_timeout=30.0, max_pending=1)
    srv.start()
    clients = [in_thread(send_command, run_dir, cmd, timeout=10.0) for cmd in ("pause", "resume")]
    for t, _ in clients:  # one request fills the queue; the other is refused at once
        t.join(timeout=0.05)
    deadline = time.monotonic() + 5.0
    while all(t.is_alive() for t, _ in clients) and time.monotonic() < deadline:
        time.sleep(0.01)
    refused = [out[0] for t, out in clients if not t.is_alive()]
    assert refused == [
        {"ok": False, "error": "busy: too many pending commands", "id": refused[0]["id"]}
    ]
    srv.close()
    for t, _ in clients:
        t.join()
    replies = [out[0] for _, out in clients]
    assert {"ok": False, "error": "trainer stopped", "id": ANY} in replies
    assert srv.poll() == []


def test_too_many_connections_are_refused_busy(server: ControlServer, run_dir: Path):
    idle = []
    try:
        for _ in range(control.MAX_CONNECTIONS):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(run_dir / SOCKET_NAME))
            idle.append(s)
        reply = raw(run_dir, b'{"command": "pause"}\n')
        assert reply == {"ok": False, "error": "busy: too many connections"}
    finally:
        for s in idle:
            s.close()
    with Trainer(server):  # capacity returns once the idle clients leave
        deadline = time.monotonic() + 5.0
        while (reply := send_command(run_dir, "pause", timeout=5.0))["ok"] is False:
            assert reply["error"].startswith("busy") and time.monotonic() < deadline
    assert reply["ok"] is True


def test_never_opens_a_network_socket(run_dir: Path, monkeypatch: pytest.MonkeyPatch):
    families: list[int] = []
    real = socket.socket

    class Recording(real):
        def __init__(self, family=-1, *args, **kwargs):
            super().__init__(family, *args, **kwargs)
            families.append(self.family)

    monkeypatch.setattr(socket, "socket", Recording)
    with ControlServer(run_dir) as srv, Trainer(srv):
        assert send_command(run_dir, "pause", timeout=5.0)["ok"] is True
        assert raw(run_dir, b"nope\n")["ok"] is False
    assert families and set(families) == {socket.AF_UNIX}


# ---------------------------------------------------------------- parse_assignments


def test_parse_assignments():
    assert parse_assignments(["eta=12", "lr=0.05", "note=a=b"]) == {
        "eta": "12",
        "lr": "0.05",
        "note": "a=b",
    }
    assert parse_assignments([]) == {}


@pytest.mark.parametrize("item", ["x", "=3", "eta=", ""])
def test_parse_assignments_rejects_non_assignments(item: str):
    with pytest.raises(ControlError, match=f"expected KEY=VALUE, got {item!r}"):
        parse_assignments([item])


def test_parse_assignments_rejects_repeated_key():
    with pytest.raises(ControlError, match="given twice"):
        parse_assignments(["eta=1", "eta=2"])


def test_module_uses_only_the_standard_library():
    source = Path(control.__file__).read_text()
    assert "import torch" not in source and "textual" not in source
    imported = {
        line.split()[1].split(".")[0]
        for line in source.splitlines()
        if line.startswith(("import ", "from "))
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}


def test_values_that_once_crashed_the_trainer_are_refused_and_print_on_one_line():
    from fireflytui.settings import SettingError, parse_settings
    from fireflytui.table import format_event

    for key in ("ratio", "lr"):  # an integer literal beyond any float
        with pytest.raises(SettingError, match=f"{key} must be a finite number"):
            parse_settings({key: 10**400})
    event = {
        "type": "control",
        "command": "set\u2028",
        "args": {"\udfff": "1\n2", "eta": "\ud800"},
        "ok": False,
        "error": "unknown setting '\\udfff'",
        "applied_step": None,
    }
    line = format_event(event)
    assert "\n" not in line and line.encode("utf-8")  # one line, printable on any terminal
    assert "set\\u2028 \\udfff=1\\n2 eta=\\ud800 refused" in line
