-- Body of the statement-level trigger after every INSERT of deliveries: link and audit the
-- new rows through deliveries_link_apply (deliveries/sql/link_rule.sql). Declared through
-- pgtrigger (MessageDelivery.Meta.triggers), which reads this file; the header is not part of it.
--
-- trigger: deliveries_messagedelivery.delivery_link_on_insert

    -- A guest being linked in a concurrent transaction either sees these deliveries when it
    -- backfills (it waits for this lock), or has committed before the lookup below runs.
    PERFORM pg_advisory_xact_lock_shared(hashtextextended('deliveries.event:' || events.event_id::text, 0))
    FROM (
        SELECT DISTINCT guest.event_id
        FROM new_rows
        JOIN deliveries_eventguest AS guest ON guest.id = new_rows.guest_id
        ORDER BY guest.event_id
    ) AS events;
    PERFORM deliveries_link_apply(ARRAY(SELECT id FROM new_rows), NULL, true);
    RETURN NULL;
