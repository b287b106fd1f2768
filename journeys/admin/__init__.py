"""The journeys admin: thin, every write through the services.

Journeys (`journeys.py`) show their flow as a diagram with the sessions at each node, and are
edited as indented JSON with the flow validator's messages shown on the field; sessions
(`sessions.py`) are read-only with their step timeline inline, and the actions their status
allows as confirmed buttons and list actions that call the services; contacts (`contacts.py`)
are read-only with a "stub, not yet enriched" filter. The session and contact lists count their
rows with the huge-table paginator (evoflow.admin_lists): both tables grow without bound.
"""

from journeys.admin.contacts import ContactAdmin
from journeys.admin.journeys import JourneyAdmin
from journeys.admin.sessions import JourneySessionAdmin

__all__ = ["ContactAdmin", "JourneyAdmin", "JourneySessionAdmin"]
