#!/usr/bin/env python3
"""A real SMTP server for the tests (aiosmtpd, from PyPI).

Stores each accepted message as <dir>/<n>.eml, with an `X-Rcpt-To:` line first naming the
envelope recipients. Refuses any recipient whose local part starts with `reject` with
`550 5.1.1`, as a server does for an unknown mailbox, echoing the mailbox as real servers do:
in capitals, in angle brackets and with a quoted local part. Refuses the message to any
recipient whose local part starts with `quote` with `554 5.7.1`, quoting its link as content
filters do (decoded, and the raw quoted-printable line that holds it), and stores that message
as <n>.quoted instead. With `--data-delay SECONDS` the
reply to DATA comes that much later (the message is stored first, as a server that has
received it and stalls; <n>.replied appears when the reply goes out). With
`--hold-data-until FILE` the reply to DATA waits until FILE exists, so a test decides when a
stalled reply goes out rather than racing a clock. Stops on SIGTERM or SIGINT.

    python3 scripts/smtp_sink.py --port 2525 --dir /tmp/mail [--data-delay 3]
        [--hold-data-until /tmp/release]
"""

import argparse
import asyncio
import itertools
import pathlib
import re
import signal
import threading

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, folder, data_delay, hold_until):
        self.data_delay = data_delay
        self.hold_until = pathlib.Path(hold_until) if hold_until else None
        self.folder = pathlib.Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.counter = itertools.count(1)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.split("@")[0].startswith("reject"):
            local, _, domain = address.partition("@")
            return f'550 5.1.1 <{address.upper()}>: No such user here ("{local}"@{domain})'
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        n = next(self.counter)
        if any(r.split("@")[0].startswith("quote") for r in envelope.rcpt_tos):
            return self.refuse_quoting(n, envelope.content)
        temp = self.folder / f".{n}.tmp"
        header = ("X-Rcpt-To: " + ",".join(envelope.rcpt_tos) + "\r\n").encode()
        temp.write_bytes(header + envelope.content)
        temp.rename(self.folder / f"{n}.eml")
        if self.data_delay or self.hold_until:
            await asyncio.sleep(self.data_delay)
            while self.hold_until and not self.hold_until.exists():
                await asyncio.sleep(0.02)
            # Tests read this to know the stalled reply has gone out.
            (self.folder / f"{n}.replied").touch()
        return "250 Message accepted for delivery"

    def refuse_quoting(self, n, content):
        raw = content.decode("ascii", "replace")
        (self.folder / f"{n}.quoted").write_text(raw)
        unfolded = raw.replace("=\r\n", "").replace("=3D", "=")
        link = re.search(r"https?://[^\s\"<>]*secret_code=[A-Za-z0-9]+", unfolded)
        line = next((line for line in raw.split("\r\n") if "secret_code" in line), "")
        found = link.group(0) if link else ""
        return f"554 5.7.1 Rejected: URL <{found}> listed in uribl; line: {line[:200]}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--data-delay", type=float, default=0.0)
    parser.add_argument("--hold-data-until", default=None)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sink = Sink(args.dir, args.data_delay, args.hold_data_until)
    controller = Controller(sink, hostname="127.0.0.1", port=args.port)
    controller.start()
    print("ready", flush=True)
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
