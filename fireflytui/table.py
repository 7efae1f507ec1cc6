"""The headless trainer's output: one fixed-width line per epoch and per grow step."""

from __future__ import annotations

from typing import Any, TextIO

HEADER = (
    f"{'epoch':>5} {'step':>8} {'train loss':>10} {'train acc':>9} {'test loss':>9} "
    f"{'test acc':>8} {'params':>11} {'img/s':>7} {'seconds':>7}"
)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_event(event: dict[str, Any]) -> str | None:
    """The line a headless run prints for `event`, or None for events it does not print."""
    kind = event["type"]
    if kind == "start":
        arch, data = event.get("architecture", {}), event.get("data", {})
        resumed = f", resumed from {event['resumed_from']}" if event.get("resumed_from") else ""
        widths = ",".join(str(u["width"]) for u in arch.get("units", []))
        return (
            f"{arch.get('name', '?')} [{widths}] {event.get('params', 0):,} params on "
            f"{event.get('device', '?')}; {data.get('source', '?')}: "
            f"{data.get('train_images', 0):,} train / {data.get('test_images', 0):,} test images"
            f"{resumed}\n{HEADER}"
        )
    if kind == "epoch":
        return (
            f"{event['epoch']:>5} {event['step']:>8} {_num(event['train_loss'], '.4f'):>10} "
            f"{_pct(event['train_acc']):>9} {_num(event['test_loss'], '.4f'):>9} "
            f"{_pct(event['test_acc']):>8} {event['params']:>11,} "
            f"{_num(event.get('images_per_second'), '.0f'):>7} {event['seconds']:>7.1f}"
        )
    if kind == "grow":
        if event.get("error"):
            return f"{'grow':>5} {event['step']:>8}  {event['error']}"
        grown = " ".join(
            f"{u['name']}+{u['width_after'] - u['width_before']}"
            for u in event["units"]
            if u["width_after"] > u["width_before"]
        )
        return (
            f"{'grow':>5} {event['step']:>8} round {event['round']} ({event['trigger']}) "
            f"{event['method']} eta {event['eta']}: params {event['params_before']:,} -> "
            f"{event['params_after']:,}, loss change predicted "
            f"{_num(event['predicted_loss_change'], '+.4f')} measured "
            f"{_num(event['measured_loss_change'], '+.4f')}, {event['seconds']:.1f} s; {grown}"
        )
    if kind == "checkpoint" and event.get("error"):
        return f"{'ckpt':>5} {event['step']:>8}  {event['error']}"
    if kind == "control":
        answer = "ok" if event["ok"] else f"refused: {printable(event['error'])}"
        return f"{'ctl':>5} {event.get('applied_step') or '':>8} {command_text(event)} {answer}"
    if kind == "end":
        error = f": {event['error']}" if event.get("error") else ""
        return f"{event['status']}{error}"
    return None


def printable(value: Any) -> str:
    """`value` as text safe to print on one line: control characters and lone surrogates, which
    a client can put in a command, are shown escaped."""
    text = str(value)
    if text.isprintable() and text.isascii():
        return text
    return "".join(
        c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else ascii(c)[1:-1] for c in text
    )


def command_text(event: dict[str, Any]) -> str:
    """A `control` event's command and arguments, as `set eta=12`."""
    args = event.get("args") if isinstance(event.get("args"), dict) else {}
    return " ".join(
        [
            printable(event.get("command")),
            *(f"{printable(k)}={printable(v)}" for k, v in args.items()),
        ]
    )


class TablePrinter:
    """An event callback that prints the headless table to `stream`, flushing each line."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        line = format_event(event)
        if line is None:
            return
        try:
            print(line, file=self.stream, flush=True)
        except UnicodeEncodeError:  # a stream that cannot show some character: escape it
            print(line.encode("ascii", "backslashreplace").decode(), file=self.stream, flush=True)
