"""A stop that hangs ends the process, with what it waited on; one that finishes does not."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, sys, time
    from warnsvc.service import StopWatchdog

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    async def main(hang: bool) -> None:
        watchdog = StopWatchdog(0.5, asyncio.get_running_loop())
        watchdog.start()
        pending = asyncio.create_task(asyncio.sleep(60), name="a-task-left-waiting")
        await asyncio.sleep(0)
        if hang:
            time.sleep(20)  # the loop itself is blocked: only a thread can end this
        else:
            await asyncio.sleep(0.1)
            watchdog.cancel()
            await asyncio.sleep(1.0)  # past the limit: a cancelled watchdog stays quiet
        pending.cancel()
        print("finished")

    asyncio.run(main(sys.argv[1] == "hang"))
    """
)


def run(mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=15
    )


def test_a_hung_stop_exits_1_with_the_stacks() -> None:
    done = run("hang")
    assert done.returncode == 1
    assert "finished" not in done.stdout
    assert "the stop did not finish within 0.5s: exiting" in done.stderr
    assert "Thread 0x" in done.stderr and " in main\n" in done.stderr  # the blocked loop thread
    assert "a-task-left-waiting" in done.stderr  # and the tasks still pending


def test_a_stop_that_finishes_is_left_alone() -> None:
    done = run("finish")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "finished"
    assert "did not finish" not in done.stderr
