-- Storage for hundreds of millions of events, trace search, and rollups.
--
-- * events: range-partitioned by day on ts. Daily partitions are created ahead
--   by the system (tracker/maintenance.py, run by the consumer and by
--   `tracker retention`); an event outside them lands in events_default, never
--   fails. Retention drops whole partitions.
--   The key is (event_id, ts): PostgreSQL requires the partition key in a
--   unique constraint. A redelivered message has the same content, hence the
--   same ts, so redelivery still writes once.
-- * traces: attributes for search (least non-null value seen, so the result
--   does not depend on arrival order) and created_at, set once when the trace
--   is first stored: the immutable sort key that makes cursor paging exact.
-- * rollup_counts / rollup_elapsed: maintained by the consumer in the same
--   transaction as the events, so the stats endpoints never scan events.

ALTER TABLE events RENAME TO events_v1;
ALTER TABLE events_v1 RENAME CONSTRAINT events_pkey TO events_v1_pkey;
ALTER INDEX events_trace_ts RENAME TO events_v1_trace_ts;

-- Same columns, defaults and NOT NULLs as before; only the key changes.
CREATE TABLE events (
    LIKE events_v1 INCLUDING DEFAULTS,
    PRIMARY KEY (event_id, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE events_default PARTITION OF events DEFAULT;

-- A trace's history and errors (GET /v1/traces/{id}, /events, compat routes).
CREATE INDEX events_trace_ts ON events (trace_id, ts, event_id);
-- GET /v1/events newest first, with or without a time window.
CREATE INDEX events_ts ON events (ts, event_id);
-- GET /v1/events?service=... (the most used filter of the statuses view).
CREATE INDEX events_service_ts ON events (service, ts, event_id);
-- GET /v1/lookup?path=... and the Status API's status-from-path.
CREATE INDEX events_path ON events (path) WHERE path IS NOT NULL;

INSERT INTO events SELECT * FROM events_v1;
DROP TABLE events_v1;

ALTER TABLE traces
    ADD COLUMN created_at   timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN account      text,
    ADD COLUMN org_id       text,
    ADD COLUMN inventory_id text,
    ADD COLUMN system_id    text,
    ADD COLUMN source       text,
    ADD COLUMN domain       text,
    ADD COLUMN domain_id    text;

UPDATE traces t SET
    created_at = t.first_at,
    account = e.account, org_id = e.org_id, inventory_id = e.inventory_id, system_id = e.system_id,
    source = e.source, domain = e.domain, domain_id = e.domain_id
FROM (SELECT trace_id, min(account) AS account, min(org_id) AS org_id, min(inventory_id) AS inventory_id,
             min(system_id) AS system_id, min(source) AS source, min(domain) AS domain,
             min(domain_id) AS domain_id
      FROM events GROUP BY trace_id) e
WHERE e.trace_id = t.trace_id;

-- Search: newest first by (created_at, trace_id), narrowed by the selective filters.
CREATE INDEX traces_created ON traces (created_at, trace_id);
CREATE INDEX traces_status_created ON traces (status, created_at, trace_id);
CREATE INDEX traces_account_created ON traces (account, created_at, trace_id) WHERE account IS NOT NULL;
CREATE INDEX traces_org_created ON traces (org_id, created_at, trace_id) WHERE org_id IS NOT NULL;
CREATE INDEX traces_inventory ON traces (inventory_id) WHERE inventory_id IS NOT NULL;
CREATE INDEX traces_system ON traces (system_id) WHERE system_id IS NOT NULL;
CREATE INDEX traces_domain_created ON traces (domain_id, created_at, trace_id) WHERE domain_id IS NOT NULL;
-- Time windows (since/lookback) and retention's expiry of old traces.
CREATE INDEX traces_last_at ON traces (last_at);
-- Search by service: from the service to its traces.
CREATE INDEX trace_services_service ON trace_services (service, trace_id);

-- Per service: when it started (earliest event time or Status API start_time)
-- and its first outcome (success, or a failure), for the start -> outcome
-- elapsed time (the Payload Tracker's "upload time", received -> success/error).
ALTER TABLE trace_services
    ADD COLUMN start_at          timestamptz,
    ADD COLUMN outcome_at        timestamptz,
    ADD COLUMN outcome_event_id  text,
    ADD COLUMN outcome_failed    boolean;

UPDATE trace_services s SET start_at = e.start_at, outcome_at = e.outcome_at,
    outcome_event_id = e.outcome_event_id, outcome_failed = e.outcome_failed
FROM (SELECT trace_id, service, min(LEAST(ts, coalesce(start_time, ts))) AS start_at,
             (array_agg(ts ORDER BY ts, event_id) FILTER (WHERE status = 'success' OR failed))[1] AS outcome_at,
             (array_agg(event_id ORDER BY ts, event_id) FILTER (WHERE status = 'success' OR failed))[1]
                 AS outcome_event_id,
             (array_agg(failed ORDER BY ts, event_id) FILTER (WHERE status = 'success' OR failed))[1]
                 AS outcome_failed
      FROM events GROUP BY trace_id, service) e
WHERE e.trace_id = s.trace_id AND e.service = s.service;
UPDATE trace_services SET start_at = first_at WHERE start_at IS NULL;
ALTER TABLE trace_services ALTER COLUMN start_at SET NOT NULL;

-- Histogram bin of an elapsed time: ceil(ln(ms) / ln(1.15)), 0 for <= 1 ms, at most 160 (~ 5 days).
CREATE FUNCTION tracker_elapsed_bin(elapsed interval) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT LEAST(160, GREATEST(0, ceil(ln(GREATEST(extract(epoch FROM elapsed) * 1000, 1)) / ln(1.15))))::smallint
$$;

-- Events per minute of event time, by service and status.
CREATE TABLE rollup_counts (
    bucket   timestamptz NOT NULL,
    service  text NOT NULL,
    status   text NOT NULL,
    events   bigint NOT NULL,
    PRIMARY KEY (bucket, service, status)
);

-- Elapsed-time histograms per hour: kind 'service' (received -> outcome of one
-- service in one trace) or 'trace' (first event -> finishing event), by
-- outcome; bin = ceil(ln(milliseconds) / ln(1.15)), about 7% relative error.
CREATE TABLE rollup_elapsed (
    bucket   timestamptz NOT NULL,
    kind     text NOT NULL,
    service  text NOT NULL,      -- '' for kind 'trace'
    failed   boolean NOT NULL,
    bin      smallint NOT NULL,
    n        bigint NOT NULL,
    PRIMARY KEY (bucket, kind, service, failed, bin)
);

INSERT INTO rollup_counts (bucket, service, status, events)
SELECT date_trunc('minute', ts), service, status, count(*) FROM events GROUP BY 1, 2, 3;

INSERT INTO rollup_elapsed (bucket, kind, service, failed, bin, n)
SELECT date_trunc('hour', outcome_at), 'service', service, outcome_failed,
       tracker_elapsed_bin(outcome_at - start_at), count(*)
FROM trace_services WHERE outcome_at IS NOT NULL GROUP BY 1, 2, 3, 4, 5;

INSERT INTO rollup_elapsed (bucket, kind, service, failed, bin, n)
SELECT date_trunc('hour', finish_at), 'trace', '', finish_failed, tracker_elapsed_bin(finish_at - first_at), count(*)
FROM traces WHERE done GROUP BY 1, 2, 3, 4, 5;
