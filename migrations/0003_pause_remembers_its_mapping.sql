-- A pause on AWS also disables the queue's Lambda event source mapping (`datamailer pause`),
-- so that records are not handed back until they dead-letter. The pause remembers the mapping
-- it disabled, and `datamailer resume` enables only that one: a mapping that was already
-- disabled (email-events at launch) stays as it was.
ALTER TABLE queue_pauses ADD COLUMN disabled_mapping text NOT NULL DEFAULT '';
