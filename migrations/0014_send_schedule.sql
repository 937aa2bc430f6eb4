-- The SES account's send rate shared by every process (runtime/src/mailer/schedule.rs): one
-- virtual schedule, one slot every 1/rate seconds, on the database's clock.
CREATE TABLE send_schedule (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    next_free  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO send_schedule DEFAULT VALUES;
