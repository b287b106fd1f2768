"""The raw PostgreSQL ceiling on this machine: COPY and bare single-row upserts.

Every other benchmark prints its own figures beside these (through `bench.reference`); this
module prints them on their own, and measures both ways of feeding COPY from Python so that
`bench.reference.FASTEST_COPY_METHOD` can be checked against this machine.
"""

from __future__ import annotations

from bench import Context, Result
from bench.reference import reference_results


def run(ctx: Context) -> list[Result]:
    return reference_results(
        ctx,
        prefix="postgres",
        copy_rows_count=ctx.size(quick=200_000, full=1_000_000),
        # Sized for about 1-3 s per loop in the quick run on a 2-core machine. At least one row
        # per connection, or the 16-connection loop could not split them.
        insert_rows_count=ctx.size(quick=15_000, full=120_000, minimum=16),
        copy_methods=("write_row", "text_stream"),
    )
