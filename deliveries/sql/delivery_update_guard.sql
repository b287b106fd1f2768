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

    -- EXCEPT rather than a join of the two transition tables: they have no index, and a
    -- nested loop over them would grow with the square of the rows a statement updates.
    IF EXISTS (
        SELECT id, guest_id, message_id FROM new_rows
        EXCEPT
        SELECT id, guest_id, message_id FROM old_rows
    ) THEN
        RAISE EXCEPTION 'a delivery''s guest and message never change'
            USING ERRCODE = 'check_violation',
                  HINT = 'Send the message to the other guest instead.';
    END IF;
    IF EXISTS (
        SELECT 1
        FROM (
            SELECT id, guest_id, user_id FROM new_rows
            EXCEPT
            SELECT id, guest_id, user_id FROM old_rows
        ) AS changed
        JOIN deliveries_eventguest AS guest ON guest.id = changed.guest_id
        WHERE guest.user_id IS NOT NULL AND guest.removed_at IS NULL
          AND changed.user_id IS DISTINCT FROM guest.user_id
    ) THEN
        RAISE EXCEPTION 'a delivery of an active, linked guest carries that guest''s user'
            USING ERRCODE = 'check_violation',
                  HINT = 'Link, relink or unlink the guest: its deliveries follow it.';
    END IF;
    RETURN NULL;
