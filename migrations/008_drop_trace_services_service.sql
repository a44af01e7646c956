-- trace_services keeps only its key (issue 10).
--
-- The one query that filters trace services by service, GET /v1/traces?service=, asks
-- for each candidate trace whether it has that service (an EXISTS with trace_id and
-- service both given): the primary key (trace_id, service) answers that probe as well
-- as (service, trace_id) did, in an index-only scan. What the second index cost was
-- one more insert for every (trace, service) row, half a row per event on
-- bench/ingest's data: 1.2 to 1.7 us of PostgreSQL CPU per event (scratch, two runs
-- each way), ~5 % of the backend's work per event.
DROP INDEX IF EXISTS trace_services_service;
