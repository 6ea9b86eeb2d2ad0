from server.core.runtime import Runtime


async def test_inc_and_get(runtime: Runtime) -> None:
    out = await runtime.call("mutation", "counters:inc", {"name": "a", "by": 2})
    assert out.value == 2 and out.ts is not None
    out = await runtime.call("query", "counters:get", {"name": "a"})
    assert out.value == 2
