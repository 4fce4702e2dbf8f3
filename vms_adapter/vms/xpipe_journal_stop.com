$! xpipe_journal_stop.com -- stop the detached XPipe journal service cleanly.
$!
$! The service stops cleanly on SIGTERM or SIGINT (it finishes queued commits, fsyncs, writes a
$! snapshot). From DCL, a Ctrl-C equivalent is not available for a detached process, so this procedure
$! asks Python to deliver SIGTERM to it via os.kill; STOP/ID is the last resort (like kill -9: no
$! acknowledged commit is lost, the next start cuts any torn tail).
$ set noon
$ ctx = ""
$ pid = f$pid(ctx)
$loop:
$ if pid .eqs. "" then goto none
$ if f$getjpi(pid, "PRCNAM") .eqs. "XPIPE_JOURNAL" then goto found
$ pid = f$pid(ctx)
$ goto loop
$found:
$ setup = f$trnlnm("XPIPE_JOURNAL_PYTHON_SETUP")
$ if setup .eqs. "" then setup = "SYS$MANAGER:PYTHON$SETUP.COM"
$ if f$search(setup) .nes. "" then @'setup'
$ python -c "import os, signal; os.kill(int('''pid''', 16), signal.SIGTERM)"
$ write sys$output "%XPIPE-I-STOPPING, sent SIGTERM to XPIPE_JOURNAL (PID ''pid')"
$ exit 1
$none:
$ write sys$output "%XPIPE-W-NOTRUNNING, no XPIPE_JOURNAL process"
$ exit 1
