"""A hand-written exactly-once consumer, as a team writes one in Python
without a framework: the baseline `bench e2e --python` compares tally with.

It reads the orders topic with confluent-kafka (librdkafka underneath, the
same client library as tally), decodes each event with `json.loads`, checks
the same rules as tally's schema, drops repeats of an event id, sums per
(merchant, currency, UTC day), and once a second commits the merged sums and
the next offset of each partition to PostgreSQL in one transaction: on a
restart it seeks to the offsets the database holds, so nothing is counted
twice. What it leaves out, as such consumers usually do: invalid events are
counted and logged, not written to a dead-letter topic; the dedupe set lives
in memory only (a restart forgets it) and grows without bound; there is no
local day, no fencing between two copies, no metrics.

    python_eos.py BROKERS TOPIC PARTITIONS DATABASE_URL EVENTS EXPECTED_CSV

Creates its tables, reads until EVENTS messages were consumed, commits, then
compares its table with the expected-totals file (the bench's generator
wrote it) and prints one JSON line: {"seconds": from start to the last
commit, "cpu_seconds", "counted", "duplicate", "invalid", "rows",
"differences": rows that differ from the expected ones}.
"""

import csv
import json
import re
import sys
import time
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation

import psycopg
from confluent_kafka import Consumer, TopicPartition

TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})\Z"
)
FIELDS = ("event_id", "order_id", "merchant_id", "kind", "amount", "currency", "occurred_at")
COMMIT_EVERY = 1.0


def judge(key, value):
    """The (merchant, currency, day, kind, amount, event_id) of a valid
    event, or None."""
    try:
        event = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(event, dict):
        return None
    for field in FIELDS:
        if not isinstance(event.get(field), str) and field != "amount":
            return None
    for field in ("event_id", "order_id", "merchant_id"):
        text = event[field]
        if not 1 <= len(text.encode()) <= 128 or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text):
            return None
    if key is not None and key != event["merchant_id"].encode():
        return None
    if event["kind"] not in ("sale", "refund"):
        return None
    amount = event.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, (str, int, float)):
        return None
    try:
        # A JSON number is read from its text: json.loads gives a float,
        # whose repr is the shortest text that reads back the same.
        amount = Decimal(amount if isinstance(amount, str) else repr(amount))
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount <= 0 or amount.as_tuple().exponent < -4:
        return None
    currency = event["currency"]
    if len(currency) != 3 or not (currency.isascii() and currency.isupper() and currency.isalpha()):
        return None
    stamp = event["occurred_at"]
    if not TIMESTAMP.match(stamp):
        return None
    try:
        at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    day = at.astimezone(timezone.utc).date()
    return event["merchant_id"], currency, day, event["kind"], amount, event["event_id"]


def main():
    brokers, topic, partitions, url, events, expected = sys.argv[1:7]
    partitions, events = int(partitions), int(events)
    started = time.monotonic()
    database = psycopg.connect(url)
    with database.transaction():
        database.execute(
            "CREATE TABLE IF NOT EXISTS peer_sales (merchant_id text, currency text, day date,"
            " sales_amount numeric NOT NULL, sales_count bigint NOT NULL,"
            " refund_amount numeric NOT NULL, refund_count bigint NOT NULL,"
            " PRIMARY KEY (merchant_id, currency, day))"
        )
        database.execute(
            "CREATE TABLE IF NOT EXISTS peer_offsets (topic text, partition int, next_offset bigint NOT NULL,"
            " PRIMARY KEY (topic, partition))"
        )
        stored = dict(
            database.execute(
                "SELECT partition, next_offset FROM peer_offsets WHERE topic = %s", (topic,)
            ).fetchall()
        )
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"python-eos-{topic}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.assign([TopicPartition(topic, p, stored.get(p, 0)) for p in range(partitions)])
    seen = set()
    sums = {}
    next_offsets = {}
    counts = {"counted": 0, "duplicate": 0, "invalid": 0}
    consumed = 0
    last_commit = time.monotonic()

    def commit():
        with database.transaction():
            with database.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO peer_sales VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (merchant_id, currency, day) DO UPDATE SET"
                    " sales_amount = peer_sales.sales_amount + excluded.sales_amount,"
                    " sales_count = peer_sales.sales_count + excluded.sales_count,"
                    " refund_amount = peer_sales.refund_amount + excluded.refund_amount,"
                    " refund_count = peer_sales.refund_count + excluded.refund_count",
                    [(m, c, d, *row) for (m, c, d), row in sums.items()],
                )
                cursor.executemany(
                    "INSERT INTO peer_offsets VALUES (%s, %s, %s)"
                    " ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                    [(topic, p, o) for p, o in next_offsets.items()],
                )
        sums.clear()

    while consumed < events:
        messages = consumer.consume(num_messages=10_000, timeout=0.1)
        for message in messages:
            if message.error():
                continue
            consumed += 1
            next_offsets[message.partition()] = message.offset() + 1
            judged = judge(message.key(), message.value())
            if judged is None:
                counts["invalid"] += 1
                continue
            merchant, currency, day, kind, amount, event_id = judged
            if event_id in seen:
                counts["duplicate"] += 1
                continue
            seen.add(event_id)
            counts["counted"] += 1
            row = sums.setdefault((merchant, currency, day), [Decimal(0), 0, Decimal(0), 0])
            at = 0 if kind == "sale" else 2
            row[at] += amount
            row[at + 1] += 1
        if time.monotonic() - last_commit >= COMMIT_EVERY:
            commit()
            last_commit = time.monotonic()
    commit()
    seconds = time.monotonic() - started
    cpu = time.process_time()
    consumer.close()
    table = {
        (m, c, str(d)): (a, n, r, k)
        for m, c, d, a, n, r, k in database.execute("SELECT * FROM peer_sales").fetchall()
    }
    database.close()
    with open(expected, newline="") as file:
        rows = csv.DictReader(file)
        wanted = {
            (row["merchant_id"], row["currency"], row["day"]): (
                Decimal(row["sales_amount"]),
                int(row["sales_count"]),
                Decimal(row["refund_amount"]),
                int(row["refund_count"]),
            )
            for row in rows
        }
    differing = [key for key, value in wanted.items() if table.get(key) != value]
    differing += [key for key in table if key not in wanted]
    for key in differing[:5]:
        print(f"differs: {key}: expected {wanted.get(key)}, got {table.get(key)}", file=sys.stderr)
    differences = len(differing)
    print(
        json.dumps(
            {"seconds": seconds, "cpu_seconds": cpu, **counts, "rows": len(table), "differences": differences}
        )
    )


if __name__ == "__main__":
    main()
