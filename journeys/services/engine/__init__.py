"""The engine: advance claimed sessions node by node, persisting every step through the funnel.

A worker claims a batch of active sessions with a lease (one UPDATE ... FOR UPDATE SKIP LOCKED),
then repeats: evaluate every session's current node; the pure nodes of the whole batch are
persisted in ONE funnel statement (session state + step row + contact stub); each node with a
side effect is run on its own with the at-most-once protocol of J4:

1. record the step as `started`, with its idempotency key (derived from session and step);
2. make the call outside any transaction, carrying that key;
3. record the step `completed` together with the session's move to the next node.

A step found `completed` is never run again (the session already moved past it in the same
statement); a step found `started` (the worker died between 1 and 3) is re-sent with the same
key, which the receiver recognises. Waits persist their deadline and release the session;
`sessions_resume_due` picks them up again.

The package, one concern per module:

- `context`: `AdvanceRun`, the one object a run passes from step to step (lease token, flows,
  contacts, step limit, time budget, report), and the sessions it holds;
- `claim`: claiming sessions under a lease, loading their flows and contacts, enriching stub
  contacts before a node reads them;
- `steps`: the write of each step (pure nodes, endings, failures, crashes) and persisting it,
  with the one fallback that fails a session whose write cannot be stored;
- `protocol`: the side-effect protocol above (J4);
- `runner`: `sessions_advance`, the loop over all of these, and handing sessions over to a new
  task when the time budget runs out.
"""

from journeys.services.engine.context import AdvanceReport
from journeys.services.engine.protocol import idempotency_key_for
from journeys.services.engine.runner import sessions_advance, sessions_enqueue_advance

__all__ = [
    "AdvanceReport",
    "idempotency_key_for",
    "sessions_advance",
    "sessions_enqueue_advance",
]
