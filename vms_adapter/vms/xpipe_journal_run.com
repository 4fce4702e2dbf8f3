$! xpipe_journal_run.com -- what the detached XPIPE_JOURNAL process runs (started by
$! xpipe_journal_start.com through LOGINOUT). Not meant to be run interactively, though it works.
$!
$ set noon
$ set process/name=XPIPE_JOURNAL
$!
$! VSI Python 3.10: run the kit's set-up procedure so that the PYTHON command exists. Its name depends
$! on the kit; override with the logical XPIPE_JOURNAL_PYTHON_SETUP.
$ setup = f$trnlnm("XPIPE_JOURNAL_PYTHON_SETUP")
$ if setup .eqs. "" then setup = "SYS$MANAGER:PYTHON$SETUP.COM"
$ if f$search(setup) .nes. "" then @'setup'
$!
$ data_dir = f$trnlnm("XPIPE_JOURNAL_RUN_DATA_DIR")
$ port     = f$trnlnm("XPIPE_JOURNAL_RUN_PORT")
$ secret   = f$trnlnm("XPIPE_JOURNAL_RUN_SECRET")
$ extra    = f$trnlnm("XPIPE_JOURNAL_RUN_OPTIONS")
$ home     = f$trnlnm("XPIPE_JOURNAL_HOME")
$!
$! Where the vms_adapter package is, unless it was installed into Python's site-packages: the kit's
$! root directory in Unix syntax (the directory that holds vms_adapter/), e.g. /DKA100/XPIPE/KIT.
$ if home .nes. "" then define/process PYTHONPATH "''home'"
$ secret_option = ""
$ if secret .nes. "" then secret_option = "--secret-file ''secret'"
$!
$ write sys$output "''f$time()' starting the XPipe journal service on port ''port', data in ''data_dir'"
$ python -m vms_adapter.server --data-dir "''data_dir'" --host 0.0.0.0 --port 'port' 'secret_option' 'extra'
$ status = $status
$ write sys$output "''f$time()' the XPipe journal service exited with status ''status'"
$ exit status
