-- The request log. Schema changes must stay additive: during a start-first rolling update the
-- previous version runs against this schema, and a rollback starts it on the newer one.
CREATE TABLE IF NOT EXISTS log_entries (
    id          BIGSERIAL PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    client_addr TEXT        NOT NULL,
    message     TEXT        NOT NULL
);
