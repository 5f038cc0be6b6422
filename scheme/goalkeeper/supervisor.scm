;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

(define-module (goalkeeper supervisor)
  #:use-module (goalkeeper ffi)
  #:use-module (goalkeeper scheduler)
  #:use-module (system foreign)
  #:use-module (system foreign-library)
  #:use-module (rnrs bytevectors)
  #:use-module (ice-9 match)
  #:use-module (srfi srfi-1)
  #:export (run-worker
            spawn-builder))

;;; Commentary:
;;;
;;; 'run-worker' drives a worker (see (goalkeeper scheduler)) until every
;;; goal has finished: it runs the goals the worker says to run, with a
;;; procedure of the host's, which may start a builder process with
;;; 'spawn-builder', and reports each goal when its builder exits.
;;;
;;; A builder must not outlive its host, since the host's locks die with
;;; it: a builder still writing an output after that writes with no lock
;;; held.  'spawn-builder' starts it in a process group of its own, killed
;;; by the kernel when the host dies (PR_SET_PDEATHSIG), without running
;;; Scheme in the child.  'run-worker' kills a builder's process group and
;;; reaps the builder before its goal's locks are released, whichever way
;;; the goal ends: normal exit (what the builder left running), an
;;; exception, or SIGINT, SIGTERM or SIGHUP, which then take their usual
;;; effect.  doc/design.md#builders-die-with-their-host says what
;;; remains when the host is killed by SIGKILL.
;;;
;;; Code:


;;;
;;; Starting builders.
;;;

(define-goalkeeper-procedure (%gk-spawn argv argc stdin stdout stderr pid-out)
  "gk_spawn" int32 ('* size_t int32 int32 int32 '*))

(define (descriptor object default what)
  "Return the file descriptor OBJECT stands for: a port's descriptor, an
integer, or DEFAULT's for #f."
  (match object
    (#f (descriptor default #f what))
    ((? port?)
     (when (output-port? object)
       (force-output object))
     (or (false-if-exception (fileno object))
         (raise-goalkeeper-error
          'invalid-argument
          (format #f "~a ~s has no file descriptor" what object)
          'spawn-builder)))
    ((? (lambda (fd) (and (exact-integer? fd) (>= fd 0)))) object)
    (_ (raise-goalkeeper-error
        'invalid-argument
        (format #f "~a ~s is neither a port, a file descriptor nor #f"
                what object)
        'spawn-builder))))

(define* (spawn-builder command #:key (input #f) (output #f) (error #f))
  "Start COMMAND, a non-empty list of strings (the program, looked up in
PATH when it has no slash, and its arguments), as a builder that cannot
outlive this process, and return its pid, which 'run-worker' takes from the
procedure that runs a goal.

The builder leads a process group of its own, which 'run-worker' kills
before the goal's locks are released; the kernel kills it with SIGKILL when
the calling thread exits, so call this from the thread that runs
'run-worker'.  Its standard input, output and error are INPUT, OUTPUT and
ERROR: each a port with a file descriptor or a descriptor, or #f for
/dev/null (input) or this process's current output or error port.  No
other descriptor of this process is inherited, and no Scheme code runs in
the child.  A program that cannot be started raises a &goalkeeper-error
naming it, as do bad arguments."
  (unless (and (pair? command) (list? command) (every string? command))
    (raise-goalkeeper-error
     'invalid-argument
     (format #f "command ~s is not a non-empty list of strings" command)
     'spawn-builder))
  (let ((null (and (not input) (open-fdes "/dev/null" (logior O_RDONLY
                                                             O_CLOEXEC)))))
    (dynamic-wind
      (const #t)
      (lambda ()
        (let* ((strings (map (lambda (s)
                               (when (string-index s #\nul)
                                 (raise-goalkeeper-error
                                  'invalid-argument
                                  (format #f "argument ~s contains a NUL \
character" s)
                                  'spawn-builder))
                               (string->pointer s "UTF-8"))
                             command))
               (argv (make-bytevector (* (sizeof '*) (length strings)) 0))
               (pid  (make-bytevector 4 0)))
          (for-each (lambda (i pointer)
                      (bytevector-uint-set! argv (* i (sizeof '*))
                                            (pointer-address pointer)
                                            (native-endianness) (sizeof '*)))
                    (iota (length strings)) strings)
          (check-status (%gk-spawn (bytevector->pointer argv) (length strings)
                                   (or null (descriptor input #f "input"))
                                   (descriptor output (current-output-port)
                                               "output")
                                   (descriptor error (current-error-port)
                                               "error")
                                   (bytevector->pointer pid))
                        'spawn-builder)
          ;; STRINGS lives until here: the C strings are not collected
          ;; before the child has exec'd.
          (and (pair? strings) (bytevector-s32-native-ref pid 0))))
      (lambda ()
        (when null (close-fdes null))))))


;;;
;;; Builders' exits.
;;;

(define (outcome-of-status status)
  (if (and (status:exit-val status) (zero? (status:exit-val status)))
      'built
      'failed))

(define %pidfd-open
  ;; Linux's pidfd_open(2) (5.3 and later), through syscall(2): a
  ;; descriptor that becomes readable when the process exits, so that
  ;; 'run-worker' waits for builders with 'select', without a SIGCHLD
  ;; handler.
  (delay
    (and (not (string-prefix? "alpha" %host-type)) ;another syscall number
         (let ((syscall (false-if-exception
                         (foreign-library-function
                          #f "syscall"
                          #:return-type long
                          #:arg-types (list long int unsigned-int)))))
           (and syscall
                (lambda (pid)
                  (let ((fd (syscall 434 pid 0)))  ;SYS_pidfd_open
                    (and (>= fd 0) fd))))))))

(define (process-descriptor pid)
  "Return a descriptor readable when child process PID exits, or #f if the
kernel cannot give one (then 'run-worker' re-checks its children every
%fallback-poll seconds)."
  (let ((open (force %pidfd-open)))
    (and open (open pid))))

(define %fallback-poll
  ;; Without pidfd_open only: how long 'run-worker' waits before looking
  ;; at its children again.
  0.05)

(define (retry-on-eintr thunk)
  "Call THUNK until it does not fail with EINTR."
  (let loop ()
    (catch 'system-error
      thunk
      (lambda args
        (if (= EINTR (system-error-errno args))
            (loop)
            (apply throw args))))))

(define (kill-group! pid)
  "Send SIGKILL to the process group PID leads (a builder from
'spawn-builder' and what it started), and to PID itself in case it left the
group or was started otherwise."
  (false-if-exception (kill (- pid) SIGKILL))
  (false-if-exception (kill pid SIGKILL)))


;;;
;;; Signals.  While a 'run-worker' runs, SIGINT, SIGTERM and SIGHUP, if their
;;; action is the default, are caught by the library (a C handler, not a
;;; Scheme one, which would start Guile's signal-delivery thread: a child
;;; forked while that thread runs Scheme can deadlock).  Every running
;;; 'run-worker' then stops its builders, reaps them and cancels their goals,
;;; which releases their locks; the last one to leave gives the signal its
;;; default action back and raises it again, which ends the process.  A
;;; signal the host handles or ignores is left to the host (a handler that
;;; raises an exception stops 'run-worker' as any exception does).
;;;

(define-goalkeeper-procedure (%gk-signal-watch-start fd-out)
  "gk_signal_watch_start" int32 ('*))
(define-goalkeeper-procedure (%gk-signal-watch-caught signal-out)
  "gk_signal_watch_caught" int32 ('*))
(define-goalkeeper-procedure (%gk-signal-watch-stop)
  "gk_signal_watch_stop" int32 ())

(define (start-signal-watch!)
  "Start a signal watch; return its descriptor."
  (let ((out (make-bytevector 4 0)))
    (check-status (%gk-signal-watch-start (bytevector->pointer out))
                  'run-worker)
    (bytevector-s32-native-ref out 0)))

(define (caught-signal out)
  "The signal the watch caught, or #f; OUT is a 4-byte bytevector."
  (check-status (%gk-signal-watch-caught (bytevector->pointer out))
                'run-worker)
  (let ((signal (bytevector-s32-native-ref out 0)))
    (and (not (zero? signal)) signal)))


;;;
;;; Driving a worker.
;;;

(define %run-batch
  ;; Events asked for per call into the library.
  256)

(define %reportable '(built substituted failed timed-out))

(define* (run-worker worker proc
                     #:key (on-finished #f) (on-exit #f)
                     (on-log #f) (watch '()))
  "Drive WORKER until every goal has finished, and return the list of
(GOAL . OUTCOME) pairs in the order the goals finished.

PROC is called as (PROC GOAL) for each goal WORKER says to run, with the
goal's output locks held and a build slot taken, in the thread that called
'run-worker'.  It returns either an outcome ('built, 'substituted, 'failed
or 'timed-out), or the PID of a child process it started, best with
'spawn-builder': the goal is then reported when that process exits, 'built
if it exited with status 0 and 'failed otherwise, after its process group
was killed (what the builder left running must not write the output once
its lock is released).  Several goals run at once up to the worker's
max-jobs.

The events come up to 256 per call into the library, and the outcomes of
the goals of one batch are reported together after it, with those of the
children that exited meanwhile, so a goal costs little bookkeeping.  Goals
started in the same batch are run even if one of them fails.

The host may also pass:

  #:on-finished  called as (ON-FINISHED GOAL OUTCOME) when a goal finishes,
                 whichever way, after its locks were released;
  #:on-exit      called as (ON-EXIT GOAL STATUS) when the child process
                 running GOAL has exited, STATUS being its wait status,
                 before the goal is reported (its locks are still held);
                 it returns the outcome to report;
  #:on-log       called as (ON-LOG RECORD) for each record of the worker's
                 diagnostics log (see 'worker-log-records'), as soon as the
                 step that made it returns;
  #:watch        descriptors to wait on in the same 'select' as the
                 worker's: a list of (PORT-OR-FD . PROCEDURE) pairs, or a
                 procedure of no arguments returning such a list, asked
                 before each wait.  When PORT-OR-FD is readable, PROCEDURE
                 is called with it; then the worker is asked for its next
                 event.

While waiting, 'run-worker' blocks in 'select' on the worker's descriptor,
one descriptor per running child (pidfd_open; without it, before Linux 5.3,
it looks at its children every 50 ms) and the watched descriptors; signal
handlers and other asyncs run meanwhile.

If PROC or a hook raises, or control leaves 'run-worker' otherwise, the
outcomes already returned are reported (or their goals cancelled), the goal
being started and those of the batch not started yet are cancelled, and the
running children's process groups are killed with SIGKILL, the children
reaped and their goals cancelled: their locks are released after their
builders are gone, before the exception goes on.  SIGINT, SIGTERM and
SIGHUP, unless the host handles or ignores them, do the same, then take
their default action, which ends the process.  PROC must not reap its
children itself."
  (define running '())                            ;list of (PID GOAL FD)
  (define starting #f)                            ;the goal PROC is starting
  (define batch '())                              ;the batch's events left
  (define pending '())                            ;(GOAL . OUTCOME), newest first
  (define results '())
  (define signal-fd #f)                           ;the signal watch's

  (define watched
    ;; A thunk returning the current (PORT-OR-FD . PROCEDURE) list.
    (match watch
      ((? procedure?) (lambda () (check-watch (watch))))
      (_ (check-watch watch) (const watch))))

  (define steps 0)

  (define (check-signal!)
    ;; Asked when the watch's descriptor was readable, and every 64 steps
    ;; (a call costs a few hundred nanoseconds, as much as a step).
    (let ((signal (caught-signal (make-bytevector 4 0))))
      (when signal
        (raise-goalkeeper-error
         'interrupted
         (format #f "interrupted by signal ~a: the builders are stopped and \
their goals cancelled" signal)
         'run-worker))))

  (define (flush-log!)
    (when on-log
      (for-each on-log (worker-log-records worker))))

  (define (finished! goal outcome)
    (set! results (cons (cons goal outcome) results))
    (when on-finished
      (on-finished goal outcome)))

  (define (send!)
    ;; Report the pending outcomes, then run the hooks of their goals.
    (unless (null? pending)
      (let* ((reports  (reverse pending))
             (recorded (worker-report-many! worker reports)))
        (set! pending '())
        (flush-log!)
        (let loop ((reports reports) (recorded recorded))
          (match reports
            (() #t)
            (((goal . _) . rest)
             (finished! goal (car recorded))
             (loop rest (cdr recorded))))))))

  (define (report! goal outcome)
    ;; Queue the report of GOAL; OUTCOME is checked now.
    (unless (memq outcome %reportable)
      (raise-goalkeeper-error
       'invalid-argument
       (format #f "~s is not an outcome to report; expected one of ~s"
               outcome %reportable)
       'run-worker))
    (set! pending (cons (cons goal outcome) pending)))

  (define (forget! entry)
    (set! running (delq entry running))
    (match entry
      ((_ _ fd) (when fd (false-if-exception (close-fdes fd))))))

  (define (exited! entry status)
    ;; ENTRY's child was reaped: stop what it left in its group, then
    ;; report its goal.  The goal is 'starting' meanwhile, so that it is
    ;; cancelled if the hook raises.
    (match entry
      ((pid goal _)
       (forget! entry)
       (kill-group! pid)
       (set! starting goal)
       (report! goal (if on-exit (on-exit goal status)
                         (outcome-of-status status)))
       (set! starting #f))))

  (define (reap!)
    (for-each (lambda (entry)
                (match (retry-on-eintr (lambda () (waitpid (car entry) WNOHANG)))
                  ((0 . _) #t)
                  ((_ . status) (exited! entry status))))
              running))

  (define (track! goal pid)
    ;; GOAL runs as child process PID.
    (match (catch 'system-error
             (lambda () (retry-on-eintr (lambda () (waitpid pid WNOHANG))))
             (const #f))
      (#f
       (set! starting #f)
       (worker-report! worker goal 'failed)
       (raise-goalkeeper-error
        'invalid-argument
        (format #f "the procedure run for ~s returned ~a, which is not a \
child process of this process" goal pid)
        'run-worker))
      (status
       (let ((entry (list pid goal (and (zero? (car status))
                                        (process-descriptor pid)))))
         (set! running (cons entry running))
         (set! starting #f)
         (unless (zero? (car status))             ;it exited already
           (exited! entry (cdr status)))))))

  (define (run! goal)
    (set! starting goal)
    (match (proc goal)
      ((? exact-integer? pid)
       (track! goal pid))
      ((? symbol? outcome)
       (report! goal outcome)
       (set! starting #f))
      (other
       (set! starting #f)
       (worker-report! worker goal 'failed)
       (raise-goalkeeper-error
        'invalid-argument
        (format #f "the procedure run for ~s returned ~s, which is \
neither an outcome nor a process id" goal other)
        'run-worker))))

  (define (wait! fd timeout)
    ;; Block until FD, a child's descriptor or a watched one is readable,
    ;; or TIMEOUT; then call the procedures of the watched ones.
    (let* ((extra   (watched))
           (timeout (if (any (lambda (entry) (not (third entry))) running)
                        (min (or timeout %fallback-poll) %fallback-poll)
                        timeout))
           (read    (cons* fd signal-fd
                           (append (filter-map third running)
                                   (map car extra))))
           (ready   (catch 'system-error
                      (lambda ()
                        (first
                         (if timeout
                             (let ((seconds (inexact->exact (floor timeout))))
                               (select read '() '() seconds
                                       (inexact->exact
                                        (round (* 1e6 (- timeout seconds))))))
                             (select read '() '()))))
                      (lambda args
                        (if (= EINTR (system-error-errno args))
                            '()
                            (apply throw args))))))
      (when (or (null? ready) (memv signal-fd ready))
        (check-signal!))
      (for-each (match-lambda
                  ((port-or-fd . procedure)
                   (when (memv port-or-fd ready)
                     (procedure port-or-fd))))
                extra)))

  (define (abandon!)
    ;; Control is leaving abnormally: stop the builders and reap them,
    ;; report what was decided, and cancel the rest, which releases their
    ;; locks.  Signals wait until this is done.
    (define (cancel! goal)
      (false-if-exception (worker-cancel! worker goal)))
    (for-each (match-lambda ((pid _ _) (kill-group! pid))) running)
    (for-each (match-lambda
                ((pid _ _)
                 (false-if-exception
                  (retry-on-eintr (lambda () (waitpid pid))))))
              running)
    (unless (worker-closed? worker)
      (unless (or (null? pending)
                  (false-if-exception
                   (begin (worker-report-many! worker (reverse pending)) #t)))
        (for-each (compose cancel! car) pending))
      (when starting
        (cancel! starting))
      (for-each (match-lambda
                  (('run goal) (cancel! goal))
                  (_ #t))
                batch)
      (for-each (compose cancel! second) running))
    (for-each forget! running)
    (set! pending '())
    (set! batch '()))

  (define (step!)
    ;; One batch of events; #t once the worker is done.
    (set! steps (+ steps 1))
    (when (zero? (logand steps 63))
      (check-signal!))
    (reap!)
    (send!)
    (set! batch (worker-next-events worker %run-batch))
    (flush-log!)
    (let loop ()
      (match batch
        (() #f)
        ((event . rest)
         (set! batch rest)
         (match event
           (('run goal) (run! goal) (loop))
           (('finished goal outcome) (finished! goal outcome) (loop))
           (('wait fd timeout) (wait! fd timeout) #f)
           (('done) #t))))))

  (when (worker-closed? worker)
    (raise-goalkeeper-error 'stale-handle "the worker was closed"
                            'run-worker))
  (let ((completed? #f))
    (dynamic-wind
      (lambda ()
        (set! signal-fd (start-signal-watch!)))
      (lambda ()
        (let loop ()
          (if (step!)
              (begin
                (set! completed? #t)
                (reverse results))
              (loop))))
      (lambda ()
        (unless completed?
          (call-with-blocked-asyncs abandon!))
        ;; The last watch raises a caught signal again: the process ends
        ;; here, its builders gone and its locks released.
        (check-status (%gk-signal-watch-stop) 'run-worker)))))

(define (check-watch watch)
  "Check WATCH, a list of (PORT-OR-FD . PROCEDURE) pairs, for 'run-worker';
return it."
  (unless (list? watch)
    (raise-goalkeeper-error
     'invalid-argument
     (format #f "#:watch gave ~s, not a list of (PORT-OR-FD . PROCEDURE) pairs"
             watch)
     'run-worker))
  (for-each (lambda (entry)
              (match entry
                (((or (? port?)
                      (? (lambda (fd) (and (exact-integer? fd) (>= fd 0)))))
                  . (? procedure?))
                 #t)
                (_
                 (raise-goalkeeper-error
                  'invalid-argument
                  (format #f "#:watch entry ~s is not a (PORT-OR-FD . \
PROCEDURE) pair" entry)
                  'run-worker))))
            watch)
  watch)

;;; supervisor.scm ends here
