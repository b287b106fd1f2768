"""The raw PostgreSQL ceiling on this machine: COPY and bare single-row upserts.

Every other benchmark prints its own figures beside these (through `bench.reference`); this
module prints them on their own, every reference kind (`bench.REFERENCE_KINDS`: COPY and
single-row inserts from 1 and 16 connections, each with the server's durability and with
`synchronous_commit = on`), and measures both ways of feeding COPY from Python so that
`bench.reference.FASTEST_COPY_METHOD` can be checked against this machine.
"""

from __future__ import annotations

from bench import Context, Result
from bench.reference import reference_results


def run(ctx: Context) -> list[Result]:
    return reference_results(
        ctx,
        prefix="postgres",
        copy_rows_count=ctx.size(quick=60_000, full=1_000_000, minimum=20),
        # Sized for about 1-2 s per loop in the quick run on a 2-core machine. At least two rows
        # per connection, or the 16-connection loop could not split them past its warm-up.
        insert_rows_count=ctx.size(quick=4_000, full=120_000, minimum=32),
        durable_rows_count=ctx.size(quick=1_500, full=20_000, minimum=32),
        copy_methods=("write_row", "text_stream"),
        # Every kind the other modules divide by, so this table shows them all side by side.
        durable_copy=True,
        durable_inserts=True,
    )
