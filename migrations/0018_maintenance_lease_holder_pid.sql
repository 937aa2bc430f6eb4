-- The maintainer lease also names the database session that last renewed it. When that
-- session is gone (its process was killed: Postgres ends the backend as the socket closes),
-- another maintainer may take the lease at once instead of waiting out its TTL, so a SIGKILL
-- pauses campaign and outbox recovery for one tick, not 45 s. The TTL still covers what
-- this cannot see (a hung process whose connection stays open, a reused pid).
ALTER TABLE maintenance_lease ADD COLUMN holder_pid integer;
