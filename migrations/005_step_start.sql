-- A service's and a trace's first time include Status API step starts (issue 9):
-- first_at = the earliest least(ts, start_time), as start_at (migration 002) already
-- was for the elapsed-time rollups, so that the trace document and /v1/stats/elapsed
-- agree. Existing rows are brought in line, and the per-trace elapsed histogram,
-- which reads traces.first_at, is recounted.

UPDATE trace_services SET first_at = start_at WHERE start_at < first_at;

UPDATE traces t SET first_at = s.first_at
FROM (SELECT trace_id, min(first_at) AS first_at FROM trace_services GROUP BY trace_id) s
WHERE s.trace_id = t.trace_id AND s.first_at < t.first_at;

DELETE FROM rollup_elapsed WHERE kind = 'trace';
INSERT INTO rollup_elapsed (bucket, kind, service, failed, bin, n)
SELECT date_trunc('hour', finish_at, 'UTC'), 'trace', '', finish_failed, tracker_elapsed_bin(finish_at - first_at), count(*)
FROM traces WHERE done GROUP BY 1, 2, 3, 4, 5;
