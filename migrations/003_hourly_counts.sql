-- Events per hour by service and status, beside the per-minute rollup: a
-- 24-hour question then reads 24 rows per service and status instead of 1,440
-- (bench/query measured the per-minute read at ~45 ms for one day on 20 services).
CREATE TABLE rollup_counts_hour (
    bucket   timestamptz NOT NULL,
    service  text NOT NULL,
    status   text NOT NULL,
    events   bigint NOT NULL,
    PRIMARY KEY (bucket, service, status)
);

INSERT INTO rollup_counts_hour (bucket, service, status, events)
SELECT date_trunc('hour', bucket), service, status, sum(events) FROM rollup_counts GROUP BY 1, 2, 3;
