#!/usr/bin/env python3
"""A tiny fake of the Amazon SES v2 SendEmail endpoint, for load tests (standard library only).

    python3 fake_ses.py --port 4599 [--latency-ms 20] [--fail-every 0]

* `POST /v2/email/outbound-emails` -> 200 `{"MessageId": "fake-<pid>-<n>"}`, after the optional
  artificial latency (an asyncio sleep per request: latency does not cap throughput).
* `GET /stats` -> `{"requests": n, "sends": n, "errors": n, "uptime_s": s}`; `POST /reset`
  zeroes the counters.
* `GET /sends` -> `{"times": [unix seconds of each accepted send, in order], "to": [its first
  To address, in the same order]}` (rate and exactly-once checks).
* `GET /v2/email/account` (SES v2 `GetAccount`) -> the `SendQuota` given by `--max-send-rate`,
  `--max-24-hour-send` and `--sent-last-24-hours`.
* Anything else -> 404 with an SES-shaped error.
* `--fail-every N` answers every Nth send with 429 TooManyRequestsException (exercises the
  sender's throttle retries and the limiter's cool-down).
* `--reject S` (repeatable) answers a send whose To address contains S with 400
  MessageRejected, as SES does for an address it refuses (a permanent error).

Why not `http.server`: `ThreadingHTTPServer` measured ~800 req/s on this 2-core machine, below
the 1,500 req/s a 1,000 emails/s test needs. This is an asyncio `Protocol` with a minimal
HTTP/1.1 parser (keep-alive, Content-Length bodies, pipelining-safe); it measured well above
that (see ../README.md). The request body is read and discarded: nothing checks the SigV4
signature.
"""
import argparse
import asyncio
import json
import os
import sys
import time

STATS = {"requests": 0, "sends": 0, "errors": 0}
SEND_TIMES = []
SEND_TO = []
QUOTA = {"Max24HourSend": 50000.0, "MaxSendRate": 14.0, "SentLast24Hours": 0.0}
STARTED = time.monotonic()
PID = os.getpid()
COUNTER = 0
SEND_PATH = b"/v2/email/outbound-emails"


def first_to(body: bytes) -> str:
    """The first To address of a SendEmail request ("" when there is none)."""
    try:
        return json.loads(body)["Destination"]["ToAddresses"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


def response(status: int, reason: str, payload: dict, error_type: str = "") -> bytes:
    body = json.dumps(payload).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"x-amzn-RequestId: req-{PID}-{COUNTER}\r\n"
    )
    if error_type:
        head += f"x-amzn-ErrorType: {error_type}\r\n"
    return head.encode() + b"\r\n" + body


class FakeSes(asyncio.Protocol):
    latency = 0.0
    fail_every = 0
    reject = ()

    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip() or 0)
            total = end + 4 + length
            if len(self.buf) < total:
                return  # wait for the rest of the body
            body = self.buf[end + 4:total]
            self.buf = self.buf[total:]
            request_line = head.split(b"\r\n", 1)[0].split(b" ")
            method = request_line[0]
            path = request_line[1].split(b"?", 1)[0] if len(request_line) > 1 else b"/"
            self.dispatch(method, path, body)

    def dispatch(self, method, path, body):
        global COUNTER
        STATS["requests"] += 1
        COUNTER += 1
        n = COUNTER
        if method == b"POST" and path.rstrip(b"/") == SEND_PATH:
            to = first_to(body)
            if self.fail_every and n % self.fail_every == 0:
                STATS["errors"] += 1
                out = response(429, "Too Many Requests", {"message": "Maximum sending rate exceeded."},
                               "TooManyRequestsException")
            elif any(r in to for r in self.reject):
                STATS["errors"] += 1
                out = response(400, "Bad Request", {"message": f"Address rejected: {to}"},
                               "MessageRejected")
            else:
                STATS["sends"] += 1
                SEND_TIMES.append(time.time())
                SEND_TO.append(to)
                out = response(200, "OK", {"MessageId": f"fake-{PID}-{n:010d}"})
            self.emit(out, self.latency)
        elif method == b"GET" and path == b"/stats":
            snap = dict(STATS, uptime_s=round(time.monotonic() - STARTED, 3))
            self.emit(response(200, "OK", snap), 0)
        elif method == b"GET" and path == b"/sends":
            self.emit(response(200, "OK", {"times": SEND_TIMES, "to": SEND_TO}), 0)
        elif method == b"GET" and path.rstrip(b"/") == b"/v2/email/account":
            self.emit(response(200, "OK", {"SendQuota": QUOTA, "SendingEnabled": True,
                                           "ProductionAccessEnabled": True}), 0)
        elif method == b"POST" and path == b"/reset":
            for k in STATS:
                STATS[k] = 0
            SEND_TIMES.clear()
            SEND_TO.clear()
            self.emit(response(200, "OK", {"ok": True}), 0)
        else:
            STATS["errors"] += 1
            self.emit(response(404, "Not Found", {"message": f"no route {path.decode(errors='replace')}"},
                               "NotFoundException"), 0)

    def emit(self, out: bytes, delay: float):
        if not delay:
            self.transport.write(out)
            return
        # A timer, not a task: cheaper, and with one fixed delay the timers of a connection
        # fire in the order they were set, so responses keep request order.
        asyncio.get_running_loop().call_later(delay, self.write_later, out)

    def write_later(self, out: bytes):
        if not self.transport.is_closing():
            self.transport.write(out)


async def serve(host: str, port: int):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FakeSes, host, port, backlog=1024, reuse_address=True)
    print(f"fake-ses listening on http://{host}:{port} latency={FakeSes.latency * 1000:g}ms "
          f"fail_every={FakeSes.fail_every}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4599)
    p.add_argument("--latency-ms", type=float, default=0.0, help="artificial latency per send")
    p.add_argument("--fail-every", type=int, default=0, help="answer every Nth send with 429 throttling")
    p.add_argument("--reject", action="append", default=[],
                   help="answer sends to addresses containing this with 400 MessageRejected")
    p.add_argument("--max-send-rate", type=float, default=14.0, help="GetAccount's MaxSendRate")
    p.add_argument("--max-24-hour-send", type=float, default=50000.0, help="GetAccount's Max24HourSend")
    p.add_argument("--sent-last-24-hours", type=float, default=0.0, help="GetAccount's SentLast24Hours")
    a = p.parse_args()
    QUOTA.update(MaxSendRate=a.max_send_rate, Max24HourSend=a.max_24_hour_send,
                 SentLast24Hours=a.sent_last_24_hours)
    FakeSes.latency = a.latency_ms / 1000.0
    FakeSes.fail_every = a.fail_every
    FakeSes.reject = tuple(a.reject)
    try:
        asyncio.run(serve(a.host, a.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
