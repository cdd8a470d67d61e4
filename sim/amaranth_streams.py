"""Helpers for Amaranth-simulator testbenches (``async def testbench(ctx)``) on ``lib.stream`` interfaces.

``rng`` and a probability add random bubbles before a put and random back-pressure before a get.
"""

__all__ = ["stream_put", "stream_get"]


async def stream_put(ctx, stream, payload, *, rng=None, bubble_prob=0.0):
    """Offer ``payload`` on ``stream`` and return once it has been taken."""
    while rng is not None and rng.random() < bubble_prob:
        await ctx.tick()
    ctx.set(stream.valid, 1)
    ctx.set(stream.payload, payload)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream, *, rng=None, stall_prob=0.0):
    """Take one payload from ``stream`` and return it."""
    while rng is not None and rng.random() < stall_prob:
        await ctx.tick()
    ctx.set(stream.ready, 1)
    payload, = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload
