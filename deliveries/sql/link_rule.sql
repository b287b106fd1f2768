-- The delivery link rule (D1, D2) and its audit (D3): the current definition of the two SQL
-- functions every linking path goes through. Migrations apply frozen copies of this file
-- (deliveries/migrations/sql/); tests/core/test_sql_drift.py fails when the database and this
-- file disagree (docs/sql.md says how to change it).
--
-- * deliveries_link_resolve(ids): for each delivery, the user it should carry and why. The rule,
--   written once; it reads and never writes. It reads the feature flags from their table in the
--   same statement (no cache, so a flip is seen by the very next delivery). A missing flag row
--   means the default of FeatureFlag.DEFAULTS, the one definition of the defaults
--   (tests/deliveries/test_flag_defaults.py checks this copy agrees with it).
-- * deliveries_link_apply(ids, method, audit_all, previous_user_id): one UPDATE ... FROM applying
--   the links and one INSERT ... SELECT writing the audit rows (all attempts, or only the links
--   when audit_all is false), in the caller's transaction. `method` NULL means "as created": the
--   audit method is then `guest` or `phone_fallback`, whichever rule decided. Method `manual` is
--   a guest moved to another user, or unlinked (by the service, the admin or any UPDATE of the
--   guest, through the guest trigger): every given delivery moves to its guest's user (`linked`),
--   or to no user when the guest has none (`no_match`, reason `guest_unlinked`), whatever the
--   flags, audited with `previous_user_id`. The audit details carry the actor and request id
--   services set for the transaction (set_config('deliveries.actor_id', ..., true)). Every audit
--   row of the app is written here.
--
-- Outcomes are the requirements' (docs/invariants.md, D3): `linked`, `no_match` (nobody, or
-- more than one candidate: the reason says which), `skipped` (a flag is off: reason `flag_off`)
-- and `already_linked`.
--
-- Why plain functions and not pgtrigger declarations: the rule is shared by two triggers (both
-- declared through pgtrigger in deliveries/models.py, bodies in this folder), the historical
-- backfill and the manual relink; pgtrigger declares triggers, not functions they share.
--
-- trigger: deliveries_messagedelivery.delivery_link_on_insert
-- trigger: deliveries_eventguest.guest_link_backfill

CREATE OR REPLACE FUNCTION deliveries_link_resolve(p_delivery_ids bigint[])
RETURNS TABLE (
    delivery_id bigint,
    guest_id bigint,
    current_user_id bigint,
    target_user_id bigint,
    outcome text,
    rule text,
    details jsonb
)
LANGUAGE sql STABLE AS $$
    -- The flags, read from their table by this very statement (no cache: a flip is seen by
    -- the next delivery); a missing row means the documented default. Materialised: read
    -- once per statement, not once per delivery.
    WITH flags AS MATERIALIZED (
        SELECT coalesce(bool_or(enabled) FILTER (WHERE name = 'LINK_USER_BY_PHONE'), true)
                   AS linking,
               coalesce(bool_or(enabled)
                        FILTER (WHERE name = 'LINK_USER_BY_PHONE_FALLBACK_TO_USERS'), false)
                   AS fallback
        FROM deliveries_featureflag
        WHERE name IN ('LINK_USER_BY_PHONE', 'LINK_USER_BY_PHONE_FALLBACK_TO_USERS')
    ),
    candidate AS (
        SELECT delivery.id,
               delivery.guest_id,
               delivery.user_id,
               coalesce(delivery.phone_e164, guest.phone_e164) AS phone_e164,
               guest.user_id AS guest_user_id,
               guest.removed_at IS NULL AS guest_active,
               guest.event_id
        FROM deliveries_messagedelivery AS delivery
        JOIN deliveries_eventguest AS guest ON guest.id = delivery.guest_id
        WHERE delivery.id = ANY (p_delivery_ids)
    ),
    gated AS (
        SELECT candidate.*,
               flags.linking,
               flags.fallback,
               flags.linking AND flags.fallback AND candidate.guest_active
                   AND candidate.guest_user_id IS NULL AND candidate.user_id IS NULL
                   AND candidate.phone_e164 IS NOT NULL AS tries_phone
        FROM candidate
        CROSS JOIN flags
    ),
    looked_up AS (
        -- The phone lookups run only for deliveries that reach the fallback: a CASE evaluates
        -- its subquery only when its condition holds.
        SELECT gated.*,
               CASE WHEN gated.tries_phone THEN (
                   SELECT count(*)
                   FROM deliveries_eventguest AS other
                   WHERE other.event_id = gated.event_id
                     AND other.phone_e164 = gated.phone_e164
                     AND other.removed_at IS NULL
               ) END AS guest_count,
               CASE WHEN gated.tries_phone THEN coalesce((
                   SELECT array_agg(account.id ORDER BY account.id)
                   FROM evoflow_user AS account
                   WHERE account.phone_e164 = gated.phone_e164 AND account.is_active
               ), '{}') END AS phone_user_ids
        FROM gated
    ),
    decided AS (
        SELECT looked_up.*,
               cardinality(looked_up.phone_user_ids) AS user_count,
               looked_up.phone_user_ids[1] AS phone_user_id
        FROM looked_up
    )
    SELECT decided.id,
           decided.guest_id,
           decided.user_id,
           CASE
               WHEN NOT decided.linking OR NOT decided.guest_active THEN NULL
               WHEN decided.guest_user_id IS NOT NULL THEN decided.guest_user_id
               WHEN decided.user_id IS NOT NULL THEN decided.user_id
               WHEN decided.guest_count > 1 OR decided.user_count <> 1 THEN NULL
               ELSE decided.phone_user_id
           END,
           CASE
               WHEN NOT decided.linking THEN 'skipped'
               WHEN NOT decided.guest_active THEN 'no_match'
               WHEN decided.guest_user_id IS NOT NULL THEN
                   CASE WHEN decided.user_id = decided.guest_user_id
                        THEN 'already_linked' ELSE 'linked' END
               WHEN decided.user_id IS NOT NULL THEN 'already_linked'
               WHEN NOT decided.fallback OR decided.phone_e164 IS NULL THEN 'no_match'
               WHEN decided.guest_count > 1 OR decided.user_count > 1 THEN 'no_match'
               WHEN decided.user_count = 1 THEN 'linked'
               ELSE 'no_match'
           END,
           CASE WHEN decided.tries_phone THEN 'phone' ELSE 'guest' END,
           jsonb_strip_nulls(jsonb_build_object(
               'reason',
               CASE
                   WHEN NOT decided.linking THEN 'flag_off'
                   WHEN NOT decided.guest_active THEN 'guest_removed'
                   WHEN decided.guest_user_id IS NOT NULL THEN 'guest_user'
                   WHEN decided.user_id IS NOT NULL THEN 'user_given'
                   WHEN NOT decided.fallback THEN 'guest_not_linked'
                   WHEN decided.phone_e164 IS NULL THEN 'no_phone'
                   WHEN decided.guest_count > 1 THEN 'ambiguous_guests'
                   WHEN decided.user_count > 1 THEN 'ambiguous_users'
                   WHEN decided.user_count = 1 THEN 'unique_user_with_phone'
                   ELSE 'no_user_with_phone'
               END,
               'phone_e164', CASE WHEN decided.guest_count IS NOT NULL
                                  THEN decided.phone_e164 END,
               'guests_with_phone', decided.guest_count,
               'users_with_phone', decided.user_count,
               'previous_user_id', CASE WHEN decided.user_id IS DISTINCT FROM decided.guest_user_id
                                        AND decided.guest_user_id IS NOT NULL
                                        AND decided.guest_active AND decided.linking
                                        THEN decided.user_id END
           ))
    FROM decided
$$;

CREATE OR REPLACE FUNCTION deliveries_link_apply(
    p_delivery_ids bigint[], p_method text, p_audit_all boolean,
    p_previous_user_id bigint DEFAULT NULL
)
RETURNS TABLE (link_outcome text, delivery_count bigint)
LANGUAGE plpgsql
-- Planning this statement costs more than running it for one guest's hundred deliveries; the
-- generic plan (index lookups by id, whatever the array's size) suits every caller.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    -- Who is acting, as services set it for this transaction (empty for raw SQL).
    v_context jsonb := jsonb_strip_nulls(jsonb_build_object(
        'actor_id', nullif(current_setting('deliveries.actor_id', true), '')::bigint,
        'request_id', nullif(current_setting('deliveries.request_id', true), '')
    ));
BEGIN
    IF coalesce(array_length(p_delivery_ids, 1), 0) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH resolved AS MATERIALIZED (
        SELECT * FROM deliveries_link_resolve(p_delivery_ids)
        WHERE p_method IS DISTINCT FROM 'manual'
        UNION ALL
        -- A manual relink: a person's decision, so neither the flags nor the phone rule apply;
        -- each delivery moves to the user its guest now has.
        SELECT delivery.id,
               delivery.guest_id,
               delivery.user_id,
               guest.user_id,
               CASE WHEN guest.user_id IS NULL THEN 'no_match' ELSE 'linked' END,
               'guest',
               jsonb_strip_nulls(jsonb_build_object(
                   'reason', CASE WHEN guest.user_id IS NULL THEN 'guest_unlinked'
                                  ELSE 'guest_relinked' END,
                   'previous_user_id', p_previous_user_id
               ))
        FROM deliveries_messagedelivery AS delivery
        JOIN deliveries_eventguest AS guest ON guest.id = delivery.guest_id
        WHERE p_method = 'manual' AND delivery.id = ANY (p_delivery_ids)
    ),
    linked AS (
        UPDATE deliveries_messagedelivery AS delivery
        SET user_id = resolved.target_user_id, updated_at = now()
        FROM resolved
        WHERE delivery.id = resolved.delivery_id
          AND (resolved.outcome = 'linked' OR p_method = 'manual')
          AND delivery.user_id IS DISTINCT FROM resolved.target_user_id
    ),
    audited AS (
        INSERT INTO deliveries_userlinkaudit
            (delivery_id, guest_id, user_id, outcome, method, details, created_at)
        SELECT resolved.delivery_id,
               resolved.guest_id,
               -- The user the delivery carries after the attempt (none once unlinked).
               CASE WHEN p_method = 'manual' THEN resolved.target_user_id
                    ELSE coalesce(resolved.target_user_id, resolved.current_user_id) END,
               resolved.outcome,
               coalesce(p_method,
                        CASE resolved.rule WHEN 'phone' THEN 'phone_fallback' ELSE 'guest' END),
               resolved.details || v_context,
               now()
        FROM resolved
        WHERE p_audit_all OR resolved.outcome = 'linked'
        ORDER BY resolved.delivery_id
    )
    SELECT resolved.outcome, count(*)
    FROM resolved
    GROUP BY resolved.outcome;
END
$$;
