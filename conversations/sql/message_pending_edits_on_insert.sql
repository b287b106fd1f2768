-- Edits that arrived before their message (a message_edit webhook overtaking the message, or a
-- message the sync stores later): applied to the rows just inserted, the highest num_edit
-- first, forward only. The text is taken only when the edit is newer than the text stored (a
-- message the sync read after the edit already holds it). Runs after the C4 trigger (names sort
-- after it), so the UPDATE it makes reaches the conversation's preview through
-- message_text_change.
--
-- trigger: conversations_message.message_pending_edits_on_insert

    UPDATE conversations_message AS m SET
        text = CASE WHEN m.text_as_of IS NULL OR e.occurred_at > m.text_as_of
            THEN e.text ELSE m.text END,
        text_as_of = CASE WHEN m.text_as_of IS NULL OR e.occurred_at > m.text_as_of
            THEN e.occurred_at ELSE m.text_as_of END,
        edit_count = e.num_edit
    FROM (
        SELECT DISTINCT ON (e.page_id, e.mid) e.page_id, e.mid, e.text, e.num_edit, e.occurred_at
        FROM new_messages AS n
        JOIN conversations_messageedit AS e ON e.page_id = n.page_id AND e.mid = n.mid
        WHERE e.num_edit > 0
        ORDER BY e.page_id, e.mid, e.num_edit DESC
    ) AS e
    WHERE m.page_id = e.page_id AND m.mid = e.mid AND e.num_edit > m.edit_count;
    RETURN NULL;
