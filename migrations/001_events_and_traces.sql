-- Events are the source of truth; traces and trace_services are the state
-- derived from them, maintained by the consumer in the same transaction as
-- the events (see consumer/store.py), so they are never ahead or behind.

CREATE TABLE events (
    event_id      text PRIMARY KEY,      -- given, or derived from the content (redelivery-safe)
    trace_id      text NOT NULL,
    service       text NOT NULL,
    status        text NOT NULL,
    failed        boolean NOT NULL,
    ts            timestamptz NOT NULL,  -- when it happened (the ordering key, ties by event_id)
    trace_status  text,                  -- STARTED | CONTINUE | FINISHED
    start_time    timestamptz,
    end_time      timestamptz,
    duration_ms   double precision,
    source        text,
    account       text,
    org_id        text,
    inventory_id  text,
    system_id     text,
    domain        text,
    domain_id     text,
    username      text,
    operation     text,
    path          text,
    message       text,
    errors        text[] NOT NULL DEFAULT '{}',
    exception     text,
    meta          jsonb,
    body          jsonb,
    format        text NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now()
);

-- Serves a trace's history in time order and its error list.
CREATE INDEX events_trace_ts ON events (trace_id, ts, event_id);

CREATE TABLE traces (
    trace_id         text PRIMARY KEY,
    first_at         timestamptz NOT NULL,
    last_at          timestamptz NOT NULL,
    event_count      bigint NOT NULL,
    error_count      bigint NOT NULL,
    done             boolean NOT NULL,
    finish_at        timestamptz,        -- the finishing event: latest FINISHED by (ts, event_id)
    finish_event_id  text,
    finish_failed    boolean,
    status           text NOT NULL,      -- in_progress | success | failed
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE trace_services (
    trace_id         text NOT NULL,
    service          text NOT NULL,
    first_at         timestamptz NOT NULL,
    last_at          timestamptz NOT NULL,
    event_count      bigint NOT NULL,
    latest_at        timestamptz NOT NULL,  -- the latest event by (ts, event_id)
    latest_event_id  text NOT NULL,
    latest_status    text NOT NULL,
    latest_failed    boolean NOT NULL,
    PRIMARY KEY (trace_id, service)
);
