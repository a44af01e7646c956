-- The per-minute event counts move into their hour's row (issue 10): an array of
-- 60 counts, minute m of the hour at index m + 1, beside the hour's total.
--
-- Why: a row per (minute, service, status) meant about one new row per event
-- whenever events are sparser than a few per minute and key (a backlog of days
-- replayed, a quiet pipeline), and each new row cost PostgreSQL an insert into
-- the heap and the key's index (~6.5 us per event on bench/ingest's data set, scratch run).
-- One upsert per (hour, service, status) and batch now carries the same counts;
-- a batch touches a few rows per hour it spans instead of one per event.
--
-- rollup_counts stays as a view with the old columns (and the hour, so that a
-- query can narrow the rows it unnests), for the API's queries, for operators'
-- ad hoc SQL and for the tests that compare the rollups with a computation from
-- scratch. A minute with no events has no row, as before.

ALTER TABLE rollup_counts_hour ADD COLUMN minutes integer[];

UPDATE rollup_counts_hour h SET minutes = ARRAY(
    SELECT coalesce(c.events, 0)::integer
    FROM generate_series(0, 59) AS g(i)
    LEFT JOIN rollup_counts c
           ON c.bucket = h.bucket + g.i * interval '1 minute' AND c.service = h.service AND c.status = h.status
    ORDER BY g.i);

ALTER TABLE rollup_counts_hour
    ALTER COLUMN minutes SET NOT NULL,
    ADD CONSTRAINT rollup_counts_hour_minutes CHECK (cardinality(minutes) = 60);

DROP TABLE rollup_counts;

CREATE VIEW rollup_counts AS
SELECT h.bucket AS hour, h.bucket + (m.i - 1) * interval '1 minute' AS bucket, h.service, h.status,
       m.n::bigint AS events
FROM rollup_counts_hour h CROSS JOIN LATERAL unnest(h.minutes) WITH ORDINALITY AS m(n, i)
WHERE m.n <> 0;
