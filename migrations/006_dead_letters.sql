-- Dead letters recorded in the same transaction as their batch's events (issue 10).
--
-- They used to be produced to the dead-letter topic before the batch was written, so a
-- crash in between sent them again on redelivery. Now the row is written with the batch,
-- once (the source position is the key), and the dead-letter topic is fed from this table
-- afterwards (published_at): a crash before that leaves the row to be published by the next
-- round, never a second row. GET /v1/dead-letters lists them without a Kafka client.
CREATE TABLE dead_letters (
    id           bigint      GENERATED ALWAYS AS IDENTITY,
    topic        text        NOT NULL,
    "partition"  integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    message_at   timestamptz,          -- the message's Kafka timestamp
    received_at  timestamptz NOT NULL DEFAULT now(),
    reason       text        NOT NULL, -- one of tracker.events.REASONS
    detail       text        NOT NULL, -- for people: what was wrong
    key          bytea,
    value        bytea,                -- as published to the dead-letter topic (cut to fit it)
    size         integer,              -- the original value's length in bytes; NULL: no value
    published_at timestamptz,          -- on the dead-letter topic since; NULL: not yet
    PRIMARY KEY (topic, "partition", "offset")
);
-- GET /v1/dead-letters: newest first, keyset paging; retention.
CREATE UNIQUE INDEX dead_letters_received ON dead_letters (received_at, id);
-- What is still to be published (normally nothing).
CREATE INDEX dead_letters_unpublished ON dead_letters (id) WHERE published_at IS NULL;
