"""The step runtime: turns one command (an argv, never a shell string) into a step service.

`xpipe-step -- ARGV...` serves `com.xpipe.step.run` CloudEvents over HTTP, runs one attempt per request
with the run's params rendered into the argv and env, sends heart-beats to `K_SINK` while it runs, and
replies with `com.xpipe.step.finished`. See docs/execution.md.
"""
