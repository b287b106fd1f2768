-- A message whose text or edit count changed (a webhook edit, the sync reading another text, a
-- pending edit applied): its first text is kept as version 0 of the append-only history, the
-- conversation's version is bumped, and its preview follows when it is the last message. The
-- last message itself never moves (C4: an edit is not a new message). Statement level with
-- transition tables: one pass per statement, nothing for updates that change neither (marks).
--
-- trigger: conversations_message.message_text_change

    INSERT INTO conversations_messageedit (page_id, mid, num_edit, text, occurred_at, source)
    SELECT o.page_id, o.mid, 0, o.text, COALESCE(o.text_as_of, o.sent_at), o.source
    FROM old_messages AS o
    JOIN new_messages AS n ON n.id = o.id
    WHERE o.edit_count = 0 AND n.text IS DISTINCT FROM o.text
    ON CONFLICT DO NOTHING;
    UPDATE conversations_conversation AS c SET
        version = c.version + 1,
        last_message_text = COALESCE(changed.last_text, c.last_message_text),
        updated_at = now()
    FROM (
        SELECT n.conversation_id,
            max(n.text) FILTER (WHERE n.mid = conv.last_message_mid) AS last_text
        FROM new_messages AS n
        JOIN old_messages AS o ON o.id = n.id
        JOIN conversations_conversation AS conv ON conv.id = n.conversation_id
        WHERE n.text IS DISTINCT FROM o.text OR n.edit_count <> o.edit_count
        GROUP BY n.conversation_id
    ) AS changed
    WHERE c.id = changed.conversation_id;
    RETURN NULL;
