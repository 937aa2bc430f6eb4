-- Erase keeps a tombstone (facts §4.3 [GAP]): an HMAC-SHA256 of the normalized address under
-- an installation key, with the suppressions the contact had. A contact created later with the
-- same address gets them back from the BEFORE INSERT trigger below, whichever path creates it
-- (API upsert, import, transactional send), so erasing never makes a bounced or complained
-- address sendable again.
--
-- The key is generated here, once per installation, and kept with its HMAC pads precomputed
-- (so the hash is two sha256 calls, cheap enough for a trigger on bulk imports). It lives in
-- the database: it stops a tombstone from being matched against a list of addresses by anyone
-- without database access, not by someone holding a full dump.

CREATE TABLE server_keys (
    name        text PRIMARY KEY,
    inner_pad   bytea NOT NULL,
    outer_pad   bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

DO $$
DECLARE
    key bytea := decode(replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', ''), 'hex')
                 || decode(repeat('00', 32), 'hex');
    ipad bytea := key;
    opad bytea := key;
BEGIN
    FOR i IN 0..63 LOOP
        ipad := set_byte(ipad, i, get_byte(key, i) # 54);
        opad := set_byte(opad, i, get_byte(key, i) # 92);
    END LOOP;
    INSERT INTO server_keys (name, inner_pad, outer_pad) VALUES ('tombstone', ipad, opad);
END $$;

CREATE FUNCTION datamailer_email_hash(normalized text) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT sha256(outer_pad || sha256(inner_pad || convert_to(normalized, 'UTF8')))
    FROM server_keys WHERE name = 'tombstone'
$$;

CREATE FUNCTION datamailer_restore_tombstone() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    t suppression_tombstones%ROWTYPE;
BEGIN
    -- Most installations have few or no tombstones: skip the hash then (a bulk import pays
    -- ~5 µs a row for this check instead of ~50 µs for the hash and lookup).
    IF NOT EXISTS (SELECT 1 FROM suppression_tombstones) THEN
        RETURN NEW;
    END IF;
    SELECT * INTO t FROM suppression_tombstones WHERE email_hash = datamailer_email_hash(NEW.normalized_email);
    IF FOUND THEN
        NEW.hard_bounced_at := COALESCE(NEW.hard_bounced_at, t.hard_bounced_at);
        NEW.complained_at := COALESCE(NEW.complained_at, t.complained_at);
        NEW.global_unsubscribed_at := COALESCE(NEW.global_unsubscribed_at, t.global_unsubscribed_at);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER contacts_restore_tombstone BEFORE INSERT ON contacts
FOR EACH ROW EXECUTE FUNCTION datamailer_restore_tombstone();
