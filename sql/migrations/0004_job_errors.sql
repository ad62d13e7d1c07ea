-- Why a job failed, attempt by attempt (procrastinate keeps only the status). The failed jobs
-- with their last error are the dead-letter queue `job-handlers dlq` shows.
CREATE TABLE IF NOT EXISTS grails_workers.job_errors (
    id         bigserial PRIMARY KEY,
    job_id     bigint NOT NULL,
    task_name  text NOT NULL,
    attempt    integer NOT NULL,
    error_type text NOT NULL,
    error      text NOT NULL,
    retryable  boolean NOT NULL,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS job_errors_job ON grails_workers.job_errors (job_id, id);
