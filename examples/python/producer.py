#!/usr/bin/env python3
"""Publishes order events to tally's orders topic with confluent-kafka.

Reads one JSON order event per line (a file, or standard input) and sends
each line's bytes unchanged, keyed by its merchant_id. The producer is set
up as tally expects of every producer:

- partitioner=murmur2_random: murmur2 of the key, as Java clients and
  tally's own producers partition, so a merchant's events always land in
  the same partition whoever produced them (librdkafka's default, CRC32,
  would put them elsewhere);
- enable.idempotence: a retry after a lost acknowledgement is written once;
- acks=all (implied by idempotence).

A line that is not JSON, or has no merchant_id, is sent without a key:
tally keeps it, with its reason, in the dead-letter topic.

    pip install confluent-kafka
    python3 producer.py --brokers 127.0.0.1:9092 --topic orders events.ndjson
"""

import argparse
import json
import sys

from confluent_kafka import KafkaException, Producer


def merchant_key(line):
    """The line's merchant_id as the record key, or None."""
    try:
        merchant = json.loads(line).get("merchant_id")
    except (ValueError, AttributeError):
        return None
    return merchant.encode() if isinstance(merchant, str) else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="orders")
    parser.add_argument("input", nargs="?", default="-", help="NDJSON file (default: stdin)")
    args = parser.parse_args()

    producer = Producer(
        {
            "bootstrap.servers": args.brokers,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
        }
    )
    failed = []

    def delivered(error, message):
        if error is not None:
            failed.append(f"offset of {message.key()!r}: {error}")

    source = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")
    sent = 0
    with source:
        for line in source:
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            while True:
                try:
                    producer.produce(args.topic, value=line, key=merchant_key(line),
                                     on_delivery=delivered)
                    break
                except BufferError:
                    # The local queue is full: let deliveries drain it.
                    producer.poll(0.1)
                except KafkaException as error:
                    sys.exit(f"error: cannot produce to {args.topic}: {error}")
            producer.poll(0)
            sent += 1
    unsent = producer.flush(60)
    if unsent or failed:
        sys.exit(f"error: {unsent} events unacknowledged and {len(failed)} refused: {failed[:5]}")
    print(f"published {sent} events to {args.topic}")


if __name__ == "__main__":
    main()
