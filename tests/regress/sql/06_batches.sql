-- Batches, processed here by process_queue inside the queuing transaction
-- (the worker cannot see uncommitted items), so the output is deterministic.
\set SHOW_CONTEXT never
SELECT tenancy.register_template('failing', '{"tables": ["CREATE TABLE a (id int REFERENCES nowhere (id))"]}');

BEGIN;
SELECT tenancy.provision_batch('[
  {"slug": "alpha", "name": "Alpha"},
  {"slug": "beta", "template": "trading", "max_users": 10},
  {"slug": "gamma", "template": "failing"}
]', '{"max_concurrent": 2, "retry_attempts": 2}') AS batch \gset
SELECT status, total, max_concurrent, retry_attempts, continue_on_error FROM tenancy.batches WHERE id = :'batch';
SELECT tenancy.process_queue();
COMMIT;
SELECT s->>'status' AS status, s->'total' AS total, s->'succeeded' AS succeeded,
       s->'failed' AS failed, s->'pending' AS pending
FROM tenancy.batch_status(:'batch') AS s;
SELECT r->>'slug' AS slug, r->'success' AS success, r->>'schema_name' AS schema_name,
       r->'attempts' AS attempts, r->>'sqlstate' AS sqlstate, r->>'error' AS error
FROM jsonb_array_elements(tenancy.batch_status(:'batch')->'results') AS r;
SELECT tenancy.wait_batch(:'batch');

-- cancel: what is still queued is cancelled
BEGIN;
SELECT tenancy.provision_batch('[{"slug": "d1"}, {"slug": "d2"}, {"slug": "d3"}]') AS batch2 \gset
SELECT tenancy.process_queue(1);
SELECT tenancy.cancel_batch(:'batch2');
COMMIT;
SELECT tenancy.batch_status(:'batch2')->>'status' AS status,
       tenancy.batch_status(:'batch2')->'succeeded' AS succeeded,
       tenancy.batch_status(:'batch2')->'cancelled' AS cancelled;
\set VERBOSITY terse
SELECT tenancy.cancel_batch(:'batch2');
\set VERBOSITY default
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.batch_status('00000000-0000-0000-0000-000000000000');
\echo :LAST_ERROR_SQLSTATE

-- a bad batch is refused whole, with every bad item, and queues nothing
SELECT tenancy.provision_batch('[{"slug": "ok1"}, {"slug": "Bad"}, {"slug": "alpha"}, {"slug": "ok1"}, 42]');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.provision_batch('[{"slug": "alpha"}]');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.provision_batch('[{"slug": "x1"}]', '{"max_concurrent": 50, "retry_delay": "soon"}');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.provision_batch('[]');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS batches FROM tenancy.batches;

-- finished batches older than the given age are removed
SELECT tenancy.cleanup_batches('0 seconds');
SELECT count(*) AS batches FROM tenancy.batches;
