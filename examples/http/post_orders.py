#!/usr/bin/env python3
"""Posts order events to `tally ingest` (POST /v1/orders), standard library only.

Reads one JSON order event per line (a file, or standard input) and posts
them as NDJSON batches with a bearer token. Every answer is handled as the
API documents it:

- 200: every event of the batch was accepted (acknowledged by the broker);
- 207: some were refused; the answer names each by line and reason, and
  the rest were accepted: this client prints the refusals and goes on;
- 503 (and a connection that fails or times out, or a proxy's 502 or 504):
  wait Retry-After seconds (1 without it) and send the *same* body again.
  Resending the same events is safe: tally counts an event_id once, so
  even a batch that was accepted before its answer was lost is counted once;
- anything else (400, 401, 413, ...) is a mistake to fix: stop.

    python3 post_orders.py --url http://127.0.0.1:8080 --token "$TALLY_TOKEN" events.ndjson
"""

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

GIVE_UP_AFTER = 300  # seconds of 503s or refused connections for one batch
RETRIED = (502, 503, 504)  # nothing of the batch was accepted: send it again


def retry_after(value):
    """Seconds to wait: the Retry-After header's, or 1."""
    try:
        return max(float(value), 0.0)
    except (TypeError, ValueError):
        return 1.0


def answer_of(error):
    """An error answer's JSON body, or its text when it is not JSON."""
    body = error.read().decode("utf-8", "replace")
    try:
        return json.loads(body)
    except ValueError:
        return body


def post(url, token, body):
    """Sends one batch until it is answered with something other than 503."""
    started = time.monotonic()
    retries = 0
    while True:
        request = urllib.request.Request(
            url + "/v1/orders",
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {token}",
                     "Content-Type": "application/x-ndjson"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.load(answer), retries
        except urllib.error.HTTPError as error:
            if error.code not in RETRIED:
                return error.code, answer_of(error), retries
            wait = retry_after(error.headers.get("Retry-After"))
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            wait = 1.0
            print(f"warning: {error}; retrying", file=sys.stderr)
        if time.monotonic() - started > GIVE_UP_AFTER:
            sys.exit(f"error: ingest kept refusing a batch for {GIVE_UP_AFTER} s")
        retries += 1
        time.sleep(wait)


def batches(lines, size):
    batch = []
    for line in lines:
        line = line.rstrip(b"\r\n")
        if line:
            batch.append(line)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--token", required=True)
    parser.add_argument("--batch", type=int, default=500, help="events per request")
    parser.add_argument("input", nargs="?", default="-", help="NDJSON file (default: stdin)")
    args = parser.parse_args()

    source = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")
    accepted = rejected = retries = 0
    with source:
        for batch in batches(source, args.batch):
            status, answer, retried = post(args.url.rstrip("/"), args.token, b"\n".join(batch))
            retries += retried
            if status not in (200, 207):
                sys.exit(f"error: ingest answered {status}: {answer}")
            accepted += answer["accepted"]
            rejected += answer["rejected"]
            for refusal in answer.get("errors", []):
                print(f"refused: {json.dumps(refusal)}", file=sys.stderr)
    print(json.dumps({"accepted": accepted, "rejected": rejected, "retries": retries}))


if __name__ == "__main__":
    main()
