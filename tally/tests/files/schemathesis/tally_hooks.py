"""Schemathesis hooks for tally's API tests: NDJSON bodies are sent as the
text they are (one event per line)."""

import schemathesis

schemathesis.serializer.alias("application/x-ndjson", "text/plain")
