-- The write path at the limit (issue 10).
--
-- * traces.failed_services: how many of the trace's services have a failed
--   latest event. The overall status then follows from the row itself, so one
--   upsert per trace per batch sets it (there used to be a second pass).
-- * traces.active_hour: last_at truncated to the hour, indexed instead of
--   last_at. Every event moves last_at, and an update that changes an indexed
--   column cannot be HOT (it adds an entry to every index of the table);
--   active_hour changes at most once an hour per trace. Time windows read
--   active_hour >= hour(since) AND last_at >= since.
-- * fillfactor leaves room in each page for those HOT updates.

ALTER TABLE traces ADD COLUMN failed_services integer NOT NULL DEFAULT 0;
UPDATE traces t SET failed_services = s.n
FROM (SELECT trace_id, count(*) AS n FROM trace_services WHERE latest_failed GROUP BY trace_id) s
WHERE s.trace_id = t.trace_id;

ALTER TABLE traces ADD COLUMN active_hour timestamptz;
UPDATE traces SET active_hour = date_trunc('hour', last_at, 'UTC');
ALTER TABLE traces ALTER COLUMN active_hour SET NOT NULL;
DROP INDEX traces_last_at;
-- Time windows (since/lookback) and retention's expiry of old traces.
CREATE INDEX traces_active_hour ON traces (active_hour);

ALTER TABLE traces SET (fillfactor = 80);
ALTER TABLE trace_services SET (fillfactor = 80);
