#!/bin/bash
# Runs once, when PostgreSQL initialises an empty data directory: a read-only
# role for Grafana's "Top merchants today" panel. tally's own migrations
# create the tables later, as the tally user, so the grant is a default
# privilege on what that user creates.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v reader_password="$GRAFANA_READER_PASSWORD" <<'SQL'
CREATE ROLE grafana_reader LOGIN PASSWORD :'reader_password';
GRANT CONNECT ON DATABASE tally TO grafana_reader;
GRANT USAGE ON SCHEMA public TO grafana_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE tally IN SCHEMA public GRANT SELECT ON TABLES TO grafana_reader;
SQL
