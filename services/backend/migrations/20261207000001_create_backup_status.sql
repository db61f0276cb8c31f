-- What the environment's database backups did, one row per kind of run (backup, offsite,
-- test_restore, repository_check): written by `stackship db` on the manager after each run,
-- read by GET /metrics for Prometheus. Its rows are not backed up (pg_dump
-- --exclude-table-data): a restore must not bring back an older state of the backups.
CREATE TABLE IF NOT EXISTS backup_status (
    kind         TEXT        PRIMARY KEY,
    last_success TIMESTAMPTZ,
    last_run     TIMESTAMPTZ NOT NULL,
    last_run_ok  BOOLEAN     NOT NULL
);
