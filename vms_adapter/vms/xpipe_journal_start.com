$! xpipe_journal_start.com -- start the XPipe journal service as a detached process.
$!
$! Usage:  @XPIPE_JOURNAL_START [data-dir] [port] [secret-file] [extra-options]
$!
$! Each parameter falls back to a logical name (define them system-wide in SYLOGICALS.COM or
$! in the LNM$SYSTEM table, so the service also starts from SYSTARTUP_VMS.COM):
$!   XPIPE_JOURNAL_DATA_DIR     data directory in Unix syntax, e.g. /DKA100/XPIPE/JOURNAL   (required)
$!   XPIPE_JOURNAL_PORT         TCP port (default 7430)
$!   XPIPE_JOURNAL_SECRET_FILE  file holding the shared HELLO secret, Unix syntax (recommended)
$!   XPIPE_JOURNAL_OPTIONS      further options, e.g. "--tls-cert /... --tls-key /... --host 0.0.0.0"
$!   XPIPE_JOURNAL_HOME         kit root in Unix syntax (the directory holding vms_adapter/), unless the
$!                              package is installed in VSI Python's site-packages
$!   XPIPE_JOURNAL_PYTHON_SETUP the VSI Python set-up procedure (default SYS$MANAGER:PYTHON$SETUP.COM)
$!   XPIPE_JOURNAL_LOG          log file (default SYS$MANAGER:XPIPE_JOURNAL.LOG)
$!
$! The detached process runs xpipe_journal_run.com through LOGINOUT, so it gets a DCL environment
$! in which the VSI Python set-up procedure can define the PYTHON command.
$!
$ set noon
$ on control_y then goto done
$ here = f$parse(f$environment("procedure"),,,"device") + f$parse(f$environment("procedure"),,,"directory")
$ data_dir = p1
$ if data_dir .eqs. "" then data_dir = f$trnlnm("XPIPE_JOURNAL_DATA_DIR")
$ if data_dir .eqs. ""
$ then
$   write sys$output "%XPIPE-E-NODATADIR, give the data directory as P1 or define XPIPE_JOURNAL_DATA_DIR"
$   exit 44
$ endif
$ port = p2
$ if port .eqs. "" then port = f$trnlnm("XPIPE_JOURNAL_PORT")
$ if port .eqs. "" then port = "7430"
$ secret = p3
$ if secret .eqs. "" then secret = f$trnlnm("XPIPE_JOURNAL_SECRET_FILE")
$ extra = p4
$ if extra .eqs. "" then extra = f$trnlnm("XPIPE_JOURNAL_OPTIONS")
$ log = f$trnlnm("XPIPE_JOURNAL_LOG")
$ if log .eqs. "" then log = "SYS$MANAGER:XPIPE_JOURNAL.LOG"
$ ctx = ""
$ pid = f$pid(ctx)
$check:
$ if pid .eqs. "" then goto not_running
$ if f$getjpi(pid, "PRCNAM") .eqs. "XPIPE_JOURNAL"
$ then
$   write sys$output "%XPIPE-W-RUNNING, XPIPE_JOURNAL is already running (PID ''pid')"
$   exit 1
$ endif
$ pid = f$pid(ctx)
$ goto check
$not_running:
$!
$! Hand the settings to the detached process:
$! LOGINOUT starts a new job, so they go into the system table under names of their own.
$ define/system/nolog XPIPE_JOURNAL_RUN_DATA_DIR "''data_dir'"
$ define/system/nolog XPIPE_JOURNAL_RUN_PORT "''port'"
$ define/system/nolog XPIPE_JOURNAL_RUN_SECRET "''secret'"
$ define/system/nolog XPIPE_JOURNAL_RUN_OPTIONS "''extra'"
$!
$ run/detached sys$system:loginout.exe -
      /input='here'xpipe_journal_run.com -
      /output='log' -
      /error='log' -
      /process_name=XPIPE_JOURNAL -
      /authorize
$ write sys$output "%XPIPE-I-STARTED, XPIPE_JOURNAL detached; log in ''log'"
$ write sys$output "%XPIPE-I-STOP, stop it cleanly with @''here'xpipe_journal_stop"
$done:
$ exit 1
