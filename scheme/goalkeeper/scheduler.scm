;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

(define-module (goalkeeper scheduler)
  #:use-module (goalkeeper abi)
  #:use-module (goalkeeper ffi)
  #:use-module (system foreign)
  #:use-module (system foreign-library)
  #:use-module (rnrs bytevectors)
  #:use-module (ice-9 match)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-9)
  #:use-module (srfi srfi-9 gnu)
  #:export (make-worker
            worker?
            worker-closed?
            worker-close!
            call-with-worker
            worker-add-goal!
            worker-add-dependency!
            worker-next-event
            worker-report!
            worker-cancel!
            worker-audit
            worker-log
            worker-fd
            worker-goals

            goal?
            goal-worker
            goal-kind
            goal-outputs
            goal-state
            goal-outcome
            goal-finished?

            worker-log-records
            log-record?
            log-record-kind
            log-record-goal
            log-record-path
            log-record-holder-pid
            log-record-holder-goal
            log-record-time
            log-record-duration
            log-record-message

            run-worker))

;;; Commentary:
;;;
;;; The goal scheduler of one client request, as in the build daemon: a
;;; worker holds goals (build: locks its outputs; substitute: locks one
;;; path; plain: no lock) with their dependencies, and the host pulls
;;; events from it.  'worker-next-event' returns one of
;;;
;;;   (run GOAL)                its inputs are done, a slot is taken and its
;;;                             output locks are held: run it, then call
;;;                             'worker-report!';
;;;   (finished GOAL OUTCOME)   GOAL ended without running (already valid,
;;;                             dependency failed, cached failure, cancelled);
;;;   (wait FD TIMEOUT)         nothing to do now: wait until FD is readable
;;;                             (a lock another process held may be free) or
;;;                             a builder exits, for at most TIMEOUT seconds
;;;                             (#f: no limit);
;;;   (done)                    every goal has finished.
;;;
;;; A goal's locks are released when it finishes, whichever way, before any
;;; waiter is woken (Guix bug #31785).  'run-worker' drives that loop with a
;;; Scheme procedure per goal, which may start child processes.
;;;
;;; Code:


;;;
;;; Enumerations (their values are declared in (goalkeeper abi)).
;;;

(define (symbol->value enum symbol what origin)
  "Return the number SYMBOL stands for in ENUM, a <c-enum>; raise a
&goalkeeper-error naming ORIGIN and WHAT if it stands for none."
  (or (c-enum-value enum symbol)
      (raise-goalkeeper-error
       'invalid-argument
       (format #f "unknown ~a ~s; expected one of ~s"
               what symbol (c-enum-symbols enum))
       origin)))

(define (outcome->symbol outcome)
  (or (c-enum-symbol %gk-outcome outcome)
      (string->symbol
       (pointer->string (%gk-outcome-name outcome) -1 "UTF-8"))))

(define (state->symbol state)
  (or (c-enum-symbol %gk-goal-state state)
      (string->symbol (format #f "unknown-state-~a" state))))


;;;
;;; Workers and goals.
;;;

(define-record-type <worker>
  (%make-worker handle goals fd predicates)
  %worker?
  (handle       worker-handle set-worker-handle!) ;integer; 0 once closed
  (goals        worker-goal-table)                ;id -> <goal>
  (fd           %worker-fd)                       ;integer
  (predicates   worker-predicates))               ;callbacks kept alive

(set-record-type-printer! <worker>
  (lambda (worker port)
    (format port "#<worker ~a ~a goals>"
            (if (worker-closed? worker) "closed" "open")
            (hash-count (const #t) (worker-goal-table worker)))))

(define-record-type <goal>
  (make-goal worker id kind outputs)
  %goal?
  (worker  %goal-worker)
  (id      goal-id)                               ;the library's goal id
  (kind    %goal-kind)
  (outputs %goal-outputs))

(define (worker? object)
  "Return #t if OBJECT is a worker, as returned by 'make-worker'."
  (%worker? object))

(define (goal? object)
  "Return #t if OBJECT is a goal, as returned by 'worker-add-goal!'."
  (%goal? object))

(define (assert-goal object origin)
  (unless (%goal? object)
    (raise-goalkeeper-error 'invalid-argument
                            (format #f "~s is not a goal" object) origin)))

(define (goal-worker goal)
  "Return the worker GOAL belongs to."
  (assert-goal goal 'goal-worker)
  (%goal-worker goal))

(define (goal-kind goal)
  "Return the kind of GOAL: 'build, 'substitute or 'plain."
  (assert-goal goal 'goal-kind)
  (%goal-kind goal))

(define (goal-outputs goal)
  "Return the store paths GOAL produces, as given to 'worker-add-goal!'."
  (assert-goal goal 'goal-outputs)
  (%goal-outputs goal))

(set-record-type-printer! <goal>
  (lambda (goal port)
    (format port "#<goal ~a ~a ~a>" (goal-id goal) (goal-kind goal)
            (string-join (goal-outputs goal)))))

(define (worker-closed? worker)
  "Return #t if WORKER has been closed with 'worker-close!'."
  (zero? (worker-handle worker)))

(define (live-worker worker origin)
  (unless (worker? worker)
    (raise-goalkeeper-error 'invalid-argument
                            (format #f "~s is not a worker" worker) origin))
  (let ((handle (worker-handle worker)))
    (when (zero? handle)
      (raise-goalkeeper-error 'stale-handle "the worker was closed" origin))
    handle))

(define (worker-goal worker goal origin)
  "Return the id of GOAL, checking that it belongs to WORKER."
  (unless (and (goal? goal) (eq? (goal-worker goal) worker))
    (raise-goalkeeper-error 'invalid-argument
                            (format #f "~s is not a goal of ~s" goal worker)
                            origin))
  (goal-id goal))

(define %worker-guardian
  ;; Reports workers that become garbage while open, as for lock sets.
  (make-guardian))

(define (report-collected-workers)
  (let loop ()
    (match (%worker-guardian)
      (#f #t)
      (worker
       (unless (worker-closed? worker)
         (format (current-error-port)
                 "goalkeeper: warning: a worker became garbage while open; \
the locks of its running goals are NOT released by the garbage collector \
and stay held until the process exits; close workers with 'worker-close!' \
or 'call-with-worker'~%"))
       (loop)))))

(add-hook! after-gc-hook report-collected-workers)

(define (predicate->pointer proc name)
  "Wrap PROC, a procedure of a store path, as a gk_path_predicate.  An
exception raised by PROC is reported and taken as \"no\" (the library logs
it too): it must not unwind through the library's C frames."
  (procedure->pointer
   int32
   (lambda (data path)
     (or (with-continuation-barrier
          (lambda ()
            (with-exception-handler
                (lambda (e)
                  (false-if-exception
                   (format (current-error-port)
                           "goalkeeper: warning: the ~a predicate raised an \
exception, taken as #f: ~a~%" name (exception->string e)))
                  -1)
              (lambda ()
                (if (proc (pointer->string path -1 "UTF-8")) 1 0))
              #:unwind? #t)))
         -1))
   '(* *)))

(define %uint32-max (- (expt 2 32) 1))

(define-goalkeeper-procedure (%gk-worker-set-store-database worker db-path)
  "gk_worker_set_store_database" int32 (uint64 '*))

(define* (make-worker #:key (max-jobs 1) (keep-going? #f)
                      (store-database #f)
                      (valid-path? #f) (cached-failure? #f)
                      (backend 'ofd) (recheck-interval #f)
                      (legacy-hold? #f))
  "Return a new worker, the scheduler of one client request.

MAX-JOBS is the number of build slots shared by build and substitute goals.
When KEEP-GOING? is true, a failure does not cancel independent goals.
STORE-DATABASE, the file name of the store's database (absolute, such as
\"/var/guix/db/db.sqlite\"), makes an output valid when it is registered in
its ValidPaths table, as for the daemon: what a real store needs, since a
build writes its output in place long before it is valid.  The database is
opened read-only and checked at once; a bad one raises a &goalkeeper-error
naming the file ('store-db-missing, 'store-db-not-sqlite,
'store-db-no-valid-paths, 'store-db-locked, 'store-db-unreadable,
'store-db, or 'invalid-path for a relative name; see 'store-path-valid?').
If it cannot answer later, no goal is finished as valid: a goal about to
run fails, one waiting for a lock keeps waiting, a reported success is
recorded as failed, and 'worker-log' says why.  Without STORE-DATABASE or
VALID-PATH?, an output is valid when it exists, which is only right for a
store without a database.  VALID-PATH?, a procedure of a store path, says
whether an output is valid instead (not together with STORE-DATABASE);
CACHED-FAILURE?, whether an output failed before (the default: never).  They are called only from within the worker's own
procedures, on the calling thread, and must return normally.  BACKEND is
'ofd or 'flock, as for 'lock-paths'.  RECHECK-INTERVAL is how often, in
seconds, a goal waiting on another process's lock re-checks whether its
outputs became valid (#f: the library's default, 1 s).  LEGACY-HOLD? is for
demonstrating Guix bug #31785 in tests only: finished goals then keep their
locks, as in the C++ daemon, and the worker reports the violation.

Close the worker with 'worker-close!' (or use 'call-with-worker'): that
cancels its unfinished goals and releases their locks."
  (define (check ok? fmt . args)
    (unless ok?
      (raise-goalkeeper-error 'invalid-argument (apply format #f fmt args)
                              'make-worker)))
  (check (and (exact-integer? max-jobs) (<= 0 max-jobs %uint32-max))
         "max-jobs ~s is not a non-negative integer" max-jobs)
  (check (or (not recheck-interval)
             (and (real? recheck-interval) (> recheck-interval 0)))
         "recheck-interval ~s is not a positive number of seconds"
         recheck-interval)
  (check (or (not valid-path?) (procedure? valid-path?))
         "valid-path? ~s is not a procedure" valid-path?)
  (check (or (not store-database) (string? store-database))
         "store-database ~s is not a file name" store-database)
  (check (not (and store-database valid-path?))
         "give either store-database or valid-path?, not both: each alone \
decides validity")
  (when (and store-database (string-index store-database #\nul))
    (raise-goalkeeper-error 'invalid-path
                            (format #f "store database ~s contains a NUL \
character" store-database)
                            'make-worker))
  (check (or (not cached-failure?) (procedure? cached-failure?))
         "cached-failure? ~s is not a procedure" cached-failure?)
  (let* ((options (make-c-struct-bytevector %gk-worker-options))
         (out     (make-bytevector 8 0)))
    (write-gk-worker-options!
     options 0
     max-jobs keep-going? (backend->c backend 'make-worker)
     (if recheck-interval
         (min %uint32-max
              (max 1 (inexact->exact (round (* 1000 recheck-interval)))))
         0)
     legacy-hold?)
    (check-status (%gk-worker-new (bytevector->pointer options)
                                  (bytevector->pointer out))
                  'make-worker)
    (let ((handle (bytevector-u64-native-ref out 0))
          (fd     (make-bytevector 4 0))
          (valid  (and valid-path?
                       (predicate->pointer valid-path? "valid-path?")))
          (failed (and cached-failure?
                       (predicate->pointer cached-failure? "cached-failure?"))))
      (define (check-or-free status)
        (unless (= status %gk-ok)
          (let ((message (last-error-message)))
            (%gk-worker-free handle)
            (raise-goalkeeper-error (status->symbol status) message
                                    'make-worker))))
      (check-or-free (%gk-worker-fd handle (bytevector->pointer fd)))
      (when store-database
        (check-or-free (%gk-worker-set-store-database
                        handle (string->pointer store-database "UTF-8"))))
      (when valid
        (check-or-free (%gk-worker-set-valid-path handle valid %null-pointer)))
      (when failed
        (check-or-free (%gk-worker-set-cached-failure handle failed
                                                      %null-pointer)))
      (let ((worker (%make-worker handle (make-hash-table)
                                  (bytevector-s32-native-ref fd 0)
                                  (list valid failed))))
        (%worker-guardian worker)
        worker))))

(define (worker-fd worker)
  "Return WORKER's file descriptor, an integer: it becomes readable when a
goal waiting on another process's lock may proceed.  'run-worker' waits on
it; a host running its own loop passes it to 'select' on a (wait …) event."
  (live-worker worker 'worker-fd)
  (%worker-fd worker))

(define (worker-close! worker)
  "Close WORKER: cancel every goal that has not finished and release every
lock and slot it holds.  Closing a closed worker does nothing."
  (unless (worker? worker)
    (raise-goalkeeper-error 'invalid-argument
                            (format #f "~s is not a worker" worker)
                            'worker-close!))
  (let ((handle (worker-handle worker)))
    (unless (zero? handle)
      (set-worker-handle! worker 0)
      (let ((status (%gk-worker-free handle)))
        (unless (or (= status %gk-ok) (= status %gk-wrong-process))
          (status-error status 'worker-close!))))))

(define (call-with-worker proc . options)
  "Call PROC with a new worker made with OPTIONS, the keyword arguments of
'make-worker', and close it however PROC exits; return PROC's values."
  (let ((worker (apply make-worker options)))
    (dynamic-wind
      (const #t)
      (lambda () (proc worker))
      (lambda () (worker-close! worker)))))

(define* (worker-add-goal! worker outputs
                           #:key (kind 'build) (mode 'normal)
                           (dependencies '()))
  "Add to WORKER a goal producing OUTPUTS, a list of absolute store paths,
and return it.  KIND is 'build (at least one output; it locks them all),
'substitute (exactly one output) or 'plain (any number, no locks).  MODE is
'normal, 'repair or 'check (rebuild even if valid).  The goal waits for
every goal in DEPENDENCIES.

The same output set again returns the same goal; a partial overlap with
another goal's outputs raises a &goalkeeper-error ('invalid-argument)."
  (let* ((handle (live-worker worker 'worker-add-goal!))
         (kind*  (symbol->value %gk-goal-kind kind "goal kind"
                                'worker-add-goal!))
         (mode*  (symbol->value %gk-build-mode mode "build mode"
                                'worker-add-goal!))
         (packed (pack-paths outputs 'worker-add-goal! #:allow-empty? #t)))
    (unless (list? dependencies)
      (raise-goalkeeper-error 'invalid-argument
                              (format #f "dependencies ~s is not a list"
                                      dependencies)
                              'worker-add-goal!))
    (for-each (lambda (dependency)
                (worker-goal worker dependency 'worker-add-goal!))
              dependencies)
    (let* ((scratch (take-scratch))
           (status  (%gk-worker-add-goal-packed
                     handle kind*
                     (if (zero? (bytevector-length packed))
                         %null-pointer
                         (scratch-input-pointer scratch packed))
                     (bytevector-length packed) mode*
                     (scratch-out-pointer scratch)))
           (id      (bytevector-u64-native-ref (scratch-out scratch) 0)))
      (give-back-scratch! scratch)
      (check-status status 'worker-add-goal!)
      (let* ((table (worker-goal-table worker))
             (goal  (or (hashv-ref table id)
                        (let ((goal (make-goal worker id kind outputs)))
                          (hashv-set! table id goal)
                          goal))))
        (for-each (lambda (dependency)
                    (worker-add-dependency! worker goal dependency))
                  dependencies)
        goal))))

(define (worker-add-dependency! worker goal dependency)
  "Make GOAL, which must not have started, wait for DEPENDENCY; both are
goals of WORKER."
  (check-status (%gk-worker-add-dependency
                 (live-worker worker 'worker-add-dependency!)
                 (worker-goal worker goal 'worker-add-dependency!)
                 (worker-goal worker dependency 'worker-add-dependency!))
                'worker-add-dependency!))

(define (worker-goals worker)
  "Return the goals of WORKER, in the order they were added."
  (sort (hash-map->list (lambda (id goal) goal) (worker-goal-table worker))
        (lambda (a b) (< (goal-id a) (goal-id b)))))

(define (lookup-goal worker id)
  (or (hashv-ref (worker-goal-table worker) id)
      (raise-goalkeeper-error 'invariant-violation
                              (format #f "the worker returned unknown goal ~a"
                                      id)
                              'worker-next-event)))

(define (worker-next-event worker)
  "Return the next event of WORKER, without blocking: (run GOAL),
(finished GOAL OUTCOME), (wait FD TIMEOUT) or (done); see the commentary of
this module.  OUTCOME is a symbol such as 'already-valid or
'dependency-failed; TIMEOUT is a number of seconds or #f.

Raise a &goalkeeper-error with status 'scheduler-deadlock if goals remain
but none can progress (the message names them)."
  (let* ((handle  (live-worker worker 'worker-next-event))
         (scratch (take-scratch))
         (status  (%gk-worker-next-event handle (scratch-out-pointer scratch)))
         (event   (read-gk-event (scratch-out scratch) 0 list)))
    (give-back-scratch! scratch)
    (unless (= status %gk-ok)
      (status-error status 'worker-next-event))
    (match event
      ((kind goal _ outcome fd timeout-ms)
       (match (c-enum-symbol %gk-event-kind kind)
         ('run
          (list 'run (lookup-goal worker goal)))
         ('finished
          (list 'finished (lookup-goal worker goal) (outcome->symbol outcome)))
         ('wait
          (list 'wait fd (and (>= timeout-ms 0) (/ timeout-ms 1000.))))
         ('done
          '(done))
         (#f
          (raise-goalkeeper-error 'invalid-state
                                  (format #f "unknown event kind ~a" kind)
                                  'worker-next-event)))))))

(define (worker-report! worker goal outcome)
  "Report how GOAL, which WORKER said to run, ended: OUTCOME is 'built,
'substituted, 'failed or 'timed-out.  A success is checked with the
validity predicate (an output that is not valid makes it 'failed).  GOAL's
locks and slot are released before any goal waiting for them is woken."
  (check-status (%gk-worker-report
                 (live-worker worker 'worker-report!)
                 (worker-goal worker goal 'worker-report!)
                 (symbol->value %gk-outcome outcome "outcome"
                                'worker-report!))
                'worker-report!))

(define (worker-cancel! worker goal)
  "Cancel GOAL of WORKER, which has not finished (a running goal: the host
stopped it).  Goals that depend on it end 'dependency-failed.  Its locks
and slot are released."
  (check-status (%gk-worker-cancel (live-worker worker 'worker-cancel!)
                                   (worker-goal worker goal 'worker-cancel!))
                'worker-cancel!))

(define (goal-result goal origin)
  (let* ((handle  (live-worker (goal-worker goal) origin))
         (scratch (take-scratch))
         (status  (%gk-worker-goal-result handle (goal-id goal)
                                          (scratch-out-pointer scratch)))
         (result  (read-gk-goal-result (scratch-out scratch) 0 list)))
    (give-back-scratch! scratch)
    (check-status status origin)
    result))

(define (goal-state goal)
  "Return the state of GOAL: 'waiting-deps, 'ready, 'waiting-slot,
'waiting-lock, 'running or 'finished."
  (match (goal-result goal 'goal-state)
    ((state _ _ _) (state->symbol state))))

(define (goal-outcome goal)
  "Return how GOAL ended, a symbol such as 'built or 'dependency-failed, or
#f if it has not finished."
  (match (goal-result goal 'goal-outcome)
    ((_ outcome _ _)
     (match (outcome->symbol outcome)
       ('none #f)
       (symbol symbol)))))

(define (goal-finished? goal)
  "Return #t if GOAL has finished."
  (eq? 'finished (goal-state goal)))

(define (worker-audit worker)
  "Return WORKER's counts as an association list: goals by state
('waiting-deps, 'ready, 'waiting-slot, 'waiting-lock, 'running, 'finished),
'succeeded, 'failed, 'locks-held, 'locks-held-by-finished (always 0: a
finished goal holds no lock), 'slots-used, 'max-jobs, 'foreign-waits,
'handoffs, 'validity-rechecks, 'checks and 'violations."
  (let* ((handle  (live-worker worker 'worker-audit))
         (scratch (take-scratch))
         (status  (%gk-worker-audit handle (scratch-out-pointer scratch)))
         (counts  (c-struct->alist %gk-audit (scratch-out scratch))))
    (give-back-scratch! scratch)
    (check-status status 'worker-audit)
    counts))

(define (worker-log worker)
  "Return and clear WORKER's diagnostics, a list of strings such as
\"goal 3 waits for /gnu/store/…-foo.lock held by pid 123\": the messages
of the records 'worker-log-records' returns, from the same log."
  (let ((handle (live-worker worker 'worker-log)))
    (read-list (lambda (buf cap len-out)
                 (%gk-worker-take-log handle buf cap len-out))
               'worker-log)))


;;;
;;; Diagnostics log records.
;;;

(define-record-type <log-record>
  (make-log-record kind goal path holder-pid holder-goal time duration
                   message)
  log-record?
  (kind        log-record-kind)                   ;symbol, see %gk-log-kind
  (goal        log-record-goal)                   ;<goal> or #f
  (path        log-record-path)                   ;string or #f
  (holder-pid  log-record-holder-pid)             ;integer or #f
  (holder-goal log-record-holder-goal)            ;<goal> or #f
  (time        log-record-time)                   ;nanoseconds
  (duration    log-record-duration)               ;seconds or #f
  (message     log-record-message))               ;string

(set-record-type-printer! <log-record>
  (lambda (record port)
    (format port "#<log-record ~a ~s>" (log-record-kind record)
            (log-record-message record))))

(define %log-batch
  ;; Records taken per call.
  32)

(define (worker-log-records worker)
  "Return and clear WORKER's diagnostics as a list of log records, oldest
first.  Each record has a kind, a symbol such as:

  'waits-foreign   its goal waits for the lock of its path, held by another
                   process (whose pid is its holder-pid, when the kernel
                   tells) or by a lock set or worker of this process;
  'waits-local     … held by its holder-goal, a goal of the same worker;
  'handed-over     its goal got the lock after waiting DURATION seconds;
  'became-valid    its goal, waiting DURATION seconds for a lock, found its
                   outputs valid and finished without running;
  'on-disk-not-valid  its goal, waiting DURATION seconds so far for another
                   process's lock, re-checked and found its path on disk
                   but not registered in the store database (or refused by
                   VALID-PATH?): still being built; it keeps waiting;

and 'could-not-lock, 'release-failed, 'predicate-error, 'cached-failure,
'not-valid-after-success, 'cancelled-by-failure, 'no-build-slots,
'mode-kept, 'ledger-violation, 'dropped (older records were dropped),
'validity-unknown (the store database could not answer).
'log-record-goal' and 'log-record-holder-goal' are goals of WORKER (or #f),
'log-record-path' a store path (or #f), 'log-record-holder-pid' an integer
(or #f), 'log-record-time' the time it was recorded in nanoseconds of
CLOCK_MONOTONIC (one clock for every process of the machine),
'log-record-duration' a number of seconds (or #f), and
'log-record-message' the line 'worker-log' would have returned."
  (define handle (live-worker worker 'worker-log-records))
  (define size (c-struct-size %gk-log-record))
  (define (goal-of id)
    (and (not (zero? id)) (hashv-ref (worker-goal-table worker) id)))
  (define (string-at pointer len)
    (and (not (null-pointer? pointer))
         (utf8->string (pointer->bytevector pointer len))))
  (define (record-at bv offset)
    (read-gk-log-record
     bv offset
     (lambda (kind holder-pid goal holder-goal time duration path path-len
                   message message-len)
       (make-log-record (or (c-enum-symbol %gk-log-kind kind)
                            (string->symbol
                             (pointer->string (%gk-log-kind-name kind) -1
                                              "UTF-8")))
                        (goal-of goal)
                        (string-at path path-len)
                        (and (>= holder-pid 0) holder-pid)
                        (goal-of holder-goal)
                        time
                        (and (>= duration 0) (/ duration 1e9))
                        (or (string-at message message-len) "")))))
  (let loop ((acc '()))
    (let* ((out     (make-bytevector (* %log-batch size) 0))
           (scratch (take-scratch))
           (status  (%gk-worker-take-log-records
                     handle (bytevector->pointer out) %log-batch
                     (scratch-out-pointer scratch)))
           (n       (size-t-ref (scratch-out scratch) 0)))
      (give-back-scratch! scratch)
      (check-status status 'worker-log-records)
      ;; The strings are valid until the next call: copy them now.
      (let ((acc (fold (lambda (i acc) (cons (record-at out (* i size)) acc))
                       acc (iota n))))
        (if (< n %log-batch)
            (reverse acc)
            (loop acc))))))


;;;
;;; Driving the pull loop.
;;;

(define (outcome-of-status status)
  (if (and (status:exit-val status) (zero? (status:exit-val status)))
      'built
      'failed))

(define %pidfd-open
  ;; Linux's pidfd_open(2) (5.3 and later), through syscall(2): a
  ;; descriptor that becomes readable when the process exits.  It lets
  ;; 'run-worker' wait for builders with 'select', without a SIGCHLD
  ;; handler: a Scheme signal handler starts Guile's signal-delivery
  ;; thread, and with it running, a child forked by the host's procedure
  ;; can deadlock in Guile 3.0.8 (seen here: a builder stuck on the symbol
  ;; table lock).
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

(define* (run-worker worker proc
                     #:key (on-finished (const #t)) (on-exit #f)
                     (on-log #f) (watch '()))
  "Drive WORKER until every goal has finished, and return the list of
(GOAL . OUTCOME) pairs in the order the goals finished.

PROC is called as (PROC GOAL) for each goal WORKER says to run, with the
goal's output locks held and a build slot taken.  It returns either an
outcome ('built, 'substituted, 'failed or 'timed-out), reported at once, or
the PID of a child process it started: the goal is then reported when that
process exits, 'built if it exited with status 0 and 'failed otherwise.
Several goals run at once up to the worker's max-jobs.

The host may also pass:

  #:on-finished  called as (ON-FINISHED GOAL OUTCOME) when a goal finishes,
                 whichever way, after its locks were released;
  #:on-exit      called as (ON-EXIT GOAL STATUS) when the child process
                 running GOAL has exited, STATUS being its wait status,
                 before the goal is reported (its locks are still held);
                 it returns the outcome to report;
  #:on-log       called as (ON-LOG RECORD) for each record of the worker's
                 diagnostics log (see 'worker-log-records'), as soon as the
                 step that made it returns: who waits for whose lock,
                 hand-offs, goals that became valid while waiting;
  #:watch        descriptors to wait on in the same 'select' as the
                 worker's: a list of (PORT-OR-FD . PROCEDURE) pairs, or a
                 procedure of no arguments returning such a list, asked
                 before each wait (for descriptors that come and go, such
                 as builders' output pipes).  When PORT-OR-FD is readable,
                 PROCEDURE is called with it; then the worker is asked for
                 its next event.

While waiting, 'run-worker' blocks in 'select' on the worker's file
descriptor, on one descriptor per running child (pidfd_open), and on the
watched descriptors, so it neither polls nor installs a signal handler;
only on kernels without pidfd_open (before Linux 5.3) does it look at its
children every 50 ms.  If PROC or a hook raises, or control leaves
'run-worker' otherwise, the goal being started is cancelled, and the child
processes still running are killed with SIGKILL and reaped and their goals
cancelled: their locks are released before the exception goes on.  PROC
must not reap its children itself."
  (define running '())                            ;list of (PID GOAL FD)
  (define starting #f)                            ;the goal PROC is starting
  (define results '())

  (define watched
    ;; A thunk returning the current (PORT-OR-FD . PROCEDURE) list.
    (match watch
      ((? procedure?) (lambda () (check-watch (watch))))
      (_ (check-watch watch) (const watch))))

  (define (flush-log!)
    (when on-log
      (for-each on-log (worker-log-records worker))))

  (define (finished! goal outcome)
    (set! results (cons (cons goal outcome) results))
    (on-finished goal outcome))

  (define (report! goal outcome)
    (worker-report! worker goal outcome)
    (flush-log!)
    (finished! goal (goal-outcome goal)))

  (define (exited! goal status)
    (report! goal (if on-exit
                      (on-exit goal status)
                      (outcome-of-status status))))

  (define (forget! entry)
    (set! running (delq entry running))
    (match entry
      ((_ _ fd) (when fd (false-if-exception (close-fdes fd))))))

  (define (reap!)
    ;; Report every tracked child that has exited.  A child leaves the
    ;; list before its goal is reported, so that 'abandon!' never signals a
    ;; reaped (perhaps reused) PID if the report raises; the goal is then
    ;; 'starting', so that 'abandon!' cancels it.
    (for-each (match-lambda
                ((and entry (pid goal _))
                 (match (waitpid pid WNOHANG)
                   ((0 . _) #t)
                   ((_ . status)
                    (forget! entry)
                    (set! starting goal)
                    (exited! goal status)
                    (set! starting #f)))))
              running))

  (define (track! goal pid)
    ;; GOAL runs as child process PID.
    (match (catch 'system-error
             (lambda () (waitpid pid WNOHANG))
             (const #f))
      (#f
       (worker-report! worker goal 'failed)
       (set! starting #f)
       (raise-goalkeeper-error
        'invalid-argument
        (format #f "the procedure run for ~s returned ~a, which is not a \
child process of this process" goal pid)
        'run-worker))
      ((0 . _)
       (set! running (cons (list pid goal (process-descriptor pid))
                           running))
       (set! starting #f))
      ((_ . status)                             ;it exited already
       (exited! goal status)
       (set! starting #f))))

  (define (wait! fd timeout)
    ;; Block until FD, a child's descriptor or a watched one is readable,
    ;; or TIMEOUT; then call the procedures of the watched ones.
    (let* ((children (filter-map third running))
           (extra    (watched))
           (timeout  (if (any (lambda (entry) (not (third entry))) running)
                         (min (or timeout %fallback-poll) %fallback-poll)
                         timeout))
           (ready    (catch 'system-error
                       (lambda ()
                         (let ((read (cons fd (append children
                                                      (map car extra)))))
                           (first
                            (if timeout
                                (let ((seconds (inexact->exact
                                                (floor timeout))))
                                  (select read '() '() seconds
                                          (inexact->exact
                                           (round (* 1e6 (- timeout
                                                            seconds))))))
                                (select read '() '())))))
                       (lambda args
                         (if (= EINTR (system-error-errno args))
                             '()
                             (apply throw args))))))
      (for-each (match-lambda
                  ((port-or-fd . procedure)
                   (when (memv port-or-fd ready)
                     (procedure port-or-fd))))
                extra)))

  (define (abandon!)
    ;; Control is leaving abnormally: stop what is still running, and
    ;; cancel the goals, which releases their locks.
    (when (and starting (not (worker-closed? worker)))
      (false-if-exception (worker-cancel! worker starting)))
    (for-each (match-lambda
                ((and entry (pid goal _))
                 (false-if-exception (kill pid SIGKILL))
                 (false-if-exception (waitpid pid))
                 (forget! entry)
                 (unless (worker-closed? worker)
                   (false-if-exception (worker-cancel! worker goal)))))
              running))

  (live-worker worker 'run-worker)
  (let ((completed? #f))
    (dynamic-wind
      (const #t)
      (lambda ()
        (let loop ()
          (reap!)
          (let ((event (worker-next-event worker)))
            (flush-log!)
            (match event
              (('run goal)
               (set! starting goal)
               (match (proc goal)
                 ((? exact-integer? pid)
                  (track! goal pid))
                 ((? symbol? outcome)
                  (report! goal outcome)
                  (set! starting #f))
                 (other
                  (worker-report! worker goal 'failed)
                  (set! starting #f)
                  (raise-goalkeeper-error
                   'invalid-argument
                   (format #f "the procedure run for ~s returned ~s, which is \
neither an outcome nor a process id" goal other)
                   'run-worker)))
               (loop))
              (('finished goal outcome)
               (finished! goal outcome)
               (loop))
              (('wait fd timeout)
               (wait! fd timeout)
               (loop))
              (('done)
               (set! completed? #t)
               (reverse results))))))
      (lambda ()
        (unless completed?
          (abandon!))))))

;;; scheduler.scm ends here
