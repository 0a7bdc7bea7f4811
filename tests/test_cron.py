"""pg_cron beside the worker: cron jobs calling tenancy.run_maintenance()
and tenancy.process_queue(), and CALL tenancy.run_worker_pass(), run in a
tenant database (the documented ways to run without the worker)."""

import pytest

from conftest import skip_without, connect, wait_for


def test_pg_cron_job_runs_maintenance_and_process_queue(db, fresh_db):
    with connect("postgres", autocommit=True) as pg:
        if not pg.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_cron'").fetchone():
            skip_without("pg_cron", "pg_cron is not installed")
        pg.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        db.execute("CREATE TABLE public.queue_runs (at timestamptz DEFAULT now(), processed int)")
        db.execute("SELECT tenancy.provision_batch('[{\"slug\": \"cron1\"}]')")
        job = pg.execute(
            "SELECT cron.schedule_in_database('tenancy-queue-test', '* * * * *', "
            "'SELECT tenancy.run_maintenance(); INSERT INTO public.queue_runs (processed) SELECT tenancy.process_queue(100)', %s)",
            (fresh_db,),
        ).fetchone()[0]
        call_job = pg.execute(
            "SELECT cron.schedule_in_database('tenancy-pass-test', '* * * * *', "
            "'CALL tenancy.run_worker_pass(100)', %s)", (fresh_db,)).fetchone()[0]
        try:
            # pg_cron 1.4 runs at most once a minute
            run = wait_for(
                lambda: pg.execute(
                    "SELECT status, return_message FROM cron.job_run_details WHERE jobid = %s AND status IN ('succeeded', 'failed')",
                    (job,)).fetchone(),
                timeout=90, interval=1, what="the cron job to run")
            assert run[0] == "succeeded", run
            assert db.execute("SELECT count(*) FROM public.queue_runs").fetchone()[0] >= 1
            assert db.execute("SELECT count(*) FROM tenancy.tenants WHERE slug = 'cron1'").fetchone()[0] == 1
            run = wait_for(
                lambda: pg.execute(
                    "SELECT status, return_message FROM cron.job_run_details WHERE jobid = %s AND status IN ('succeeded', 'failed')",
                    (call_job,)).fetchone(),
                timeout=90, interval=1, what="the CALL job to run")
            assert run[0] == "succeeded", run
        finally:
            pg.execute("SELECT cron.unschedule(%s)", (job,))
            pg.execute("SELECT cron.unschedule(%s)", (call_job,))
