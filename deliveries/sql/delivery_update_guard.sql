-- Body of the statement-level trigger after every UPDATE of deliveries: the guard of D1 and D4
-- on the write paths that do not go through the link rule (QuerySet.update, raw SQL, the admin,
-- a script). Declared through pgtrigger (MessageDelivery.Meta.triggers), which reads this file;
-- the header is not part of it.
--
-- * A delivery's guest and message never change: moving one would hand a message to someone
--   it was not sent to.
-- * A delivery whose guest is active and linked carries that guest's user: an UPDATE may not
--   clear it nor set another user. Changing who reads a guest's messages is done on the guest
--   (the guest trigger moves its deliveries, audited).
--
-- The link rule's own updates always satisfy both (they set the guest's user, or a phone match
-- for a guest without one). The check reads the guest as committed now, so an update racing
-- a guest moved to another user fails instead of leaving the delivery on the previous user.
-- Status changes (the common UPDATE) find nothing to check.
--
-- trigger: deliveries_messagedelivery.delivery_update_guard

    IF EXISTS (
        SELECT 1
        FROM new_rows JOIN old_rows ON old_rows.id = new_rows.id
        WHERE new_rows.guest_id <> old_rows.guest_id
           OR new_rows.message_id <> old_rows.message_id
    ) THEN
        RAISE EXCEPTION 'a delivery''s guest and message never change'
            USING ERRCODE = 'check_violation',
                  HINT = 'Send the message to the other guest instead.';
    END IF;
    IF EXISTS (
        SELECT 1
        FROM new_rows
        JOIN old_rows ON old_rows.id = new_rows.id
        JOIN deliveries_eventguest AS guest ON guest.id = new_rows.guest_id
        WHERE new_rows.user_id IS DISTINCT FROM old_rows.user_id
          AND guest.user_id IS NOT NULL AND guest.removed_at IS NULL
          AND new_rows.user_id IS DISTINCT FROM guest.user_id
    ) THEN
        RAISE EXCEPTION 'a delivery of an active, linked guest carries that guest''s user'
            USING ERRCODE = 'check_violation',
                  HINT = 'Link, relink or unlink the guest: its deliveries follow it.';
    END IF;
    RETURN NULL;
