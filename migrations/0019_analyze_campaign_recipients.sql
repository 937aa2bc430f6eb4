-- Fresh statistics for campaign_recipients right after a large snapshot (the fan-out calls
-- this): with statistics from before the snapshot the planner misjudges the new rows and
-- the claim, record and finish statements slow down several times over until autovacuum's
-- analyze comes round. ANALYZE needs the table owner's rights (Postgres 16 has no MAINTAIN
-- privilege), which the workers' role does not have: this function lends them for this one
-- statement only.
CREATE FUNCTION analyze_campaign_recipients() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    ANALYZE public.campaign_recipients;
END
$$;
