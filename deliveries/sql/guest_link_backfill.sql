-- Body of the statement-level trigger after every UPDATE of guests: the deliveries of guests that
-- became active and linked in the statement (user NULL -> a user, or a linked guest restored) are
-- linked through deliveries_link_apply (deliveries/sql/link_rule.sql). A linked guest moved to
-- another user is guest_relink_user's job. Declared through pgtrigger (EventGuest.Meta.triggers),
-- which reads this file; the header is not part of it. The event lock is the key of
-- deliveries/locks.py: hashtextextended('deliveries.event:' || event_id, 0).
--
-- trigger: deliveries_eventguest.guest_link_backfill

    PERFORM pg_advisory_xact_lock(hashtextextended('deliveries.event:' || events.event_id::text, 0))
    FROM (
        SELECT DISTINCT new_rows.event_id
        FROM new_rows JOIN old_rows ON old_rows.id = new_rows.id
        WHERE 
    new_rows.user_id IS NOT NULL AND new_rows.removed_at IS NULL
    AND (old_rows.user_id IS NULL OR old_rows.removed_at IS NOT NULL)

        ORDER BY new_rows.event_id
    ) AS events;
    PERFORM deliveries_link_apply(
        ARRAY(
            SELECT delivery.id
            FROM new_rows
            JOIN old_rows ON old_rows.id = new_rows.id
            JOIN deliveries_messagedelivery AS delivery
              ON delivery.guest_id = new_rows.id AND delivery.user_id IS NULL
            WHERE 
    new_rows.user_id IS NOT NULL AND new_rows.removed_at IS NULL
    AND (old_rows.user_id IS NULL OR old_rows.removed_at IS NOT NULL)

        ),
        'guest_backfill',
        true
    );
    RETURN NULL;
