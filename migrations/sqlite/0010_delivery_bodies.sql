-- A job's request body and headers move out of its row into a table of their own, written once
-- when the job is queued. The row is rewritten by every claim (its lease) and every attempt
-- (its state), and SQLite rewrites a row's whole record, overflow pages included: a batch of a
-- hundred events (tens of KiB) was copied three times over into the WAL and then into the
-- database. Now each of those writes is a few hundred bytes.
CREATE TABLE delivery_bodies (
    job_id  TEXT NOT NULL PRIMARY KEY REFERENCES delivery_jobs (id) ON DELETE CASCADE,
    payload BLOB NOT NULL,
    headers TEXT NOT NULL
);

-- A delivered request's body is no longer kept (the attempt that delivers one deletes it).
INSERT INTO delivery_bodies (job_id, payload, headers)
    SELECT id, payload, headers FROM delivery_jobs WHERE state <> 'delivered';
ALTER TABLE delivery_jobs DROP COLUMN payload;
ALTER TABLE delivery_jobs DROP COLUMN headers;
