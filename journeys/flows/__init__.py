"""Journey flows: the flow graph and its validation (`flow`), what each node kind computes
(`nodes`) and the calls of the nodes with side effects (`effects`).

The session runner that walks sessions through these flows is `journeys.services.engine`.
"""
