-- C4: the conversation's message count follows deleted message rows (statement level, one UPDATE
-- per statement). Declared through pgtrigger (Message.Meta.triggers), which reads this file; the
-- header is not part of it.
--
-- trigger: conversations_message.message_count_on_delete

    UPDATE conversations_conversation AS c SET
        message_count = c.message_count - agg.removed,
        version = c.version + 1,
        updated_at = now()
    FROM (
        SELECT conversation_id, count(*) AS removed FROM old_messages GROUP BY conversation_id
    ) AS agg
    WHERE c.id = agg.conversation_id;
    RETURN NULL;
