-- Body of the statement-level trigger after every UPDATE of guests: a guest's deliveries follow
-- its user, whatever wrote the guest (a service, the admin, QuerySet.update, raw SQL). Declared
-- through pgtrigger (EventGuest.Meta.triggers), which reads this file; the header is not part
-- of it. Both cases go through deliveries_link_apply (deliveries/sql/link_rule.sql), which
-- writes one audit row per delivery:
--
-- * a guest that became active and linked (user NULL -> a user, or a linked guest restored):
--   its deliveries without a user are linked by the rule, flags honoured (`guest_backfill`);
-- * a linked guest moved to another user, or unlinked: its deliveries on the previous user (and,
--   when it moved to someone, those on none) move to the new user, or to no user, whatever the
--   flags (`manual`, with `previous_user_id`). The previous user never keeps reading them (D1,
--   D4). One call per moved guest, since each names its own previous user.
--
-- Both take the event's link lock exclusively first, so deliveries inserted concurrently are
-- either seen here or see the new user. The key is the one of deliveries/locks.py:
-- hashtextextended('deliveries.event:' || event_id, 0).
--
-- `moved` is declared by the trigger's declaration (a record).
--
-- trigger: deliveries_eventguest.guest_link_backfill

    PERFORM pg_advisory_xact_lock(hashtextextended('deliveries.event:' || events.event_id::text, 0))
    FROM (
        SELECT DISTINCT new_rows.event_id
        FROM new_rows JOIN old_rows ON old_rows.id = new_rows.id
        WHERE new_rows.user_id IS DISTINCT FROM old_rows.user_id
           OR (new_rows.user_id IS NOT NULL AND new_rows.removed_at IS NULL
               AND old_rows.removed_at IS NOT NULL)
        ORDER BY new_rows.event_id
    ) AS events;
    PERFORM deliveries_link_apply(
        ARRAY(
            SELECT delivery.id
            FROM new_rows
            JOIN old_rows ON old_rows.id = new_rows.id
            JOIN deliveries_messagedelivery AS delivery
              ON delivery.guest_id = new_rows.id AND delivery.user_id IS NULL
            WHERE new_rows.user_id IS NOT NULL AND new_rows.removed_at IS NULL
              AND (old_rows.user_id IS NULL
                   OR (old_rows.user_id = new_rows.user_id AND old_rows.removed_at IS NOT NULL))
            ORDER BY delivery.id
        ),
        'guest_backfill',
        true
    );
    FOR moved IN
        SELECT new_rows.id AS guest_id, new_rows.user_id, old_rows.user_id AS previous_user_id
        FROM new_rows JOIN old_rows ON old_rows.id = new_rows.id
        WHERE old_rows.user_id IS NOT NULL
          AND new_rows.user_id IS DISTINCT FROM old_rows.user_id
        ORDER BY new_rows.id
    LOOP
        PERFORM deliveries_link_apply(
            ARRAY(
                SELECT delivery.id
                FROM deliveries_messagedelivery AS delivery
                WHERE delivery.guest_id = moved.guest_id
                  AND (delivery.user_id = moved.previous_user_id
                       OR (delivery.user_id IS NULL AND moved.user_id IS NOT NULL))
                ORDER BY delivery.id
            ),
            'manual',
            true,
            moved.previous_user_id
        );
    END LOOP;
    RETURN NULL;
