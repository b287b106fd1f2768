-- C4: keeps the conversation's counters and last message in step with the message rows. Statement
-- level with transition tables: one UPDATE per statement whatever the batch size, and only rows
-- really inserted (ON CONFLICT DO NOTHING skips the rest) are in new_messages. The last message
-- only moves forward. Declared through pgtrigger (Message.Meta.triggers), which reads this file;
-- the header is not part of it.
--
-- trigger: conversations_message.message_count_and_last_on_insert

    UPDATE conversations_conversation AS c SET
        message_count = c.message_count + agg.added,
        last_message_at = CASE WHEN c.last_message_at IS NULL
            OR (agg.sent_at, agg.mid) > (c.last_message_at, c.last_message_mid)
            THEN agg.sent_at ELSE c.last_message_at END,
        last_message_mid = CASE WHEN c.last_message_at IS NULL
            OR (agg.sent_at, agg.mid) > (c.last_message_at, c.last_message_mid)
            THEN agg.mid ELSE c.last_message_mid END,
        last_message_text = CASE WHEN c.last_message_at IS NULL
            OR (agg.sent_at, agg.mid) > (c.last_message_at, c.last_message_mid)
            THEN agg.text ELSE c.last_message_text END,
        deleted_at = CASE WHEN c.deleted_at IS NOT NULL AND agg.sent_at > c.deleted_at
            THEN NULL ELSE c.deleted_at END,
        version = c.version + 1,
        updated_at = now()
    FROM (
        SELECT DISTINCT ON (conversation_id)
            conversation_id, sent_at, mid, text,
            count(*) OVER (PARTITION BY conversation_id) AS added
        FROM new_messages
        ORDER BY conversation_id, sent_at DESC, mid DESC
    ) AS agg
    WHERE c.id = agg.conversation_id;
    RETURN NULL;
