-- One row per `datamailer import-original` run. The first run needs a database with none of
-- its own data; a row here marks the data as the original's, so later runs (catching up
-- before the cut-over) are allowed.
CREATE TABLE original_imports (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The source, without its password.
    source       text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    -- Per table: rows in the original, inserted, updated.
    report       jsonb NOT NULL DEFAULT '{}'
);
