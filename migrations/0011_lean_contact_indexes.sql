-- Indexes that cost every contact write and serve no query (a bulk import writes three rows
-- per contact, so each index is paid 100,000 times per 100,000-row import):
--
-- * The suppression and verification timestamps of contacts only serve "has it" filters
--   (`IS NOT NULL`): almost every row is NULL there. Partial indexes hold just the rows with
--   a value.
-- * subscriptions (contact_id, updated_at) is read by no query (contact lookups use the
--   unique (contact_id, audience_id, client_id) index), and indexing updated_at made every
--   subscription update a non-HOT update of all five indexes.
-- * contact_tags' surrogate id: the pair (contact_id, tag_id) is the key.
DROP INDEX contacts_verified_at_idx;
DROP INDEX contacts_global_unsub_idx;
DROP INDEX contacts_hard_bounced_idx;
DROP INDEX contacts_complained_idx;
CREATE INDEX contacts_verified_at_idx ON contacts (verified_at) WHERE verified_at IS NOT NULL;
CREATE INDEX contacts_global_unsub_idx ON contacts (global_unsubscribed_at)
    WHERE global_unsubscribed_at IS NOT NULL;
CREATE INDEX contacts_hard_bounced_idx ON contacts (hard_bounced_at) WHERE hard_bounced_at IS NOT NULL;
CREATE INDEX contacts_complained_idx ON contacts (complained_at) WHERE complained_at IS NOT NULL;

DROP INDEX subscriptions_contact_updated;

ALTER TABLE contact_tags DROP COLUMN id;
ALTER TABLE contact_tags DROP CONSTRAINT contact_tags_contact_id_tag_id_key;
ALTER TABLE contact_tags ADD PRIMARY KEY (contact_id, tag_id);
