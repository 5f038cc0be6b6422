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
            worker-add-goals!
            worker-add-dependency!
            worker-next-event
            worker-next-events
            worker-report!
            worker-report-many!
            worker-cancel!
            worker-audit
            worker-log
            worker-fd
            worker-goals

            goal?
            goal-worker
            goal-kind
            goal-outputs
            goal-data

            goal-spec
            goal-spec?
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
            log-record-message))

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
;;; waiter is woken (Guix bug #31785).  'run-worker', in (goalkeeper
;;; supervisor), drives that loop with a Scheme procedure per goal, which
;;; may start builder processes.
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
  (%make-worker handle objects count goals fd predicates)
  %worker?
  (handle       worker-handle set-worker-handle!) ;integer; 0 once closed
  ;; The worker's <goal> records, indexed by their tag: every goal this
  ;; worker record made is given, as its C tag, the index of its slot here,
  ;; so an event finds its goal with 'vector-ref', and the records (and the
  ;; host's data they carry) live as long as the worker record.  A batch
  ;; entry that named a goal already known (S9) leaves its slot empty.
  (objects      worker-objects set-worker-objects!) ;vector of <goal> or #f
  (count        worker-tag-count set-worker-tag-count!) ;slots used
  (goals        worker-goal-count set-worker-goal-count!) ;goals in the worker
  (fd           %worker-fd)                       ;integer
  (predicates   worker-predicates))               ;callbacks kept alive

(set-record-type-printer! <worker>
  (lambda (worker port)
    (format port "#<worker ~a ~a goals>"
            (if (worker-closed? worker) "closed" "open")
            (worker-goal-count worker))))

(define-record-type <goal>
  (make-goal worker id kind outputs data)
  %goal?
  (worker  %goal-worker)
  (id      goal-id)                               ;the library's goal id
  (kind    %goal-kind)
  (outputs %goal-outputs)
  (data    %goal-data))                           ;the host's object

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

(define (goal-data goal)
  "Return the host's object given as #:data when GOAL was added (#f if
none).  A goal requested again with the same outputs (S9) keeps the object
of its first request.  The worker keeps it alive as long as the worker
record lives."
  (assert-goal goal 'goal-data)
  (%goal-data goal))

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
      (let ((worker (%make-worker handle (make-vector 16 #f) 0 0
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

;;;
;;; Goals, one or many per call.
;;;

(define-record-type <goal-spec>
  (%make-goal-spec outputs kind mode dependencies data)
  goal-spec?
  (outputs      goal-spec-outputs)               ;list of strings
  (kind         goal-spec-kind)                  ;'build, 'substitute, 'plain
  (mode         goal-spec-mode)                  ;gk_build_mode value
  (dependencies goal-spec-dependencies)          ;list of <goal>s and integers
  (data         goal-spec-data))                 ;the host's object

(define %uint32-limit (expt 2 32))

(define %kind-build (c-enum-value %gk-goal-kind 'build))
(define %kind-substitute (c-enum-value %gk-goal-kind 'substitute))
(define %kind-plain (c-enum-value %gk-goal-kind 'plain))
(define %mode-normal (c-enum-value %gk-build-mode 'normal))

(define-inlinable (kind->number kind origin)
  "The gk_goal_kind of KIND, a symbol; the common kinds without a table."
  (cond ((eq? kind 'plain) %kind-plain)
        ((eq? kind 'build) %kind-build)
        ((eq? kind 'substitute) %kind-substitute)
        (else (symbol->value %gk-goal-kind kind "goal kind" origin))))

(define (make-spec outputs kind mode dependencies data origin)
  "Check the arguments of a goal specification; return it."
  (define (bad status fmt . args)
    (raise-goalkeeper-error status (apply format #f fmt args) origin))
  (unless (list? outputs)
    (bad 'invalid-argument "expected a list of store paths, got ~s" outputs))
  (let check ((rest outputs))
    (match rest
      (() #t)
      (((? string? output) . rest)
       (when (string-index output #\nul)
         (bad 'invalid-path "store path ~s contains a NUL character" output))
       (check rest))
      ((output . _)
       (bad 'invalid-argument "store path ~s is not a string" output))))
  (unless (list? dependencies)
    (bad 'invalid-argument "dependencies ~s is not a list" dependencies))
  (let check ((rest dependencies))
    (match rest
      (() #t)
      ((dependency . rest)
       (unless (or (and (exact-integer? dependency)
                        (<= 0 dependency)
                        (< dependency %uint32-limit))
                   (%goal? dependency))
         (bad 'invalid-argument "dependency ~s is neither a goal nor the \
index of a goal of the same batch" dependency))
       (check rest))))
  (kind->number kind origin)                    ;checks it
  (%make-goal-spec outputs kind
                   (if (eq? mode 'normal)
                       %mode-normal
                       (symbol->value %gk-build-mode mode "build mode" origin))
                   dependencies data))


(define* (goal-spec outputs #:key (kind 'build) (mode 'normal)
                    (dependencies '()) (data #f))
  "Return the description of a goal for 'worker-add-goals!': OUTPUTS,
KIND, MODE and DATA as for 'worker-add-goal!'; DEPENDENCIES is a list of
goals of the worker and of integers, each the index of another goal of the
same batch (earlier or later in it)."
  (make-spec outputs kind mode dependencies data 'goal-spec))

(define* (worker-add-goal! worker outputs
                           #:key (kind 'build) (mode 'normal)
                           (dependencies '()) (data #f))
  "Add to WORKER a goal producing OUTPUTS, a list of absolute store paths,
and return it.  KIND is 'build (at least one output; it locks them all),
'substitute (exactly one output) or 'plain (any number, no locks).  MODE is
'normal, 'repair or 'check (rebuild even if valid).  The goal waits for
every goal in DEPENDENCIES.  DATA is any object of the host's, which
'goal-data' returns.

The same output set again returns the same goal, which keeps its first
DATA; a partial overlap with another goal's outputs raises a
&goalkeeper-error ('invalid-argument).  The goal and its dependencies are
added in one call, all or nothing."
  (vector-ref (add-goals worker
                         (vector (make-spec outputs kind mode dependencies
                                            data 'worker-add-goal!))
                         'worker-add-goal!)
              0))

(define (worker-add-goals! worker specs)
  "Add to WORKER the goals described by SPECS, a list or vector of goal
specifications (see 'goal-spec'), with their dependencies, in one call,
and return the list of goals, in the same order.  All or nothing: if a
specification is bad (an output, a dependency, an overlap with another
goal's outputs, ...), nothing is added and a &goalkeeper-error is raised
whose message names the first bad one, as \"goals[3].deps[1]: ...\".  A
specification with the same outputs as a goal of WORKER or as an earlier
one of SPECS gives that goal (S9), which keeps its first data."
  (let ((specs (cond ((vector? specs) specs)
                     ((list? specs) (list->vector specs))
                     (else (raise-goalkeeper-error
                            'invalid-argument
                            (format #f "~s is not a list of goal specifications"
                                    specs)
                            'worker-add-goals!)))))
    (let check ((i 0))
      (when (< i (vector-length specs))
        (unless (goal-spec? (vector-ref specs i))
          (raise-goalkeeper-error
           'invalid-argument
           (format #f "~s is not a goal specification (see 'goal-spec')"
                   (vector-ref specs i))
           'worker-add-goals!))
        (check (+ i 1))))
    (vector->list (add-goals worker specs 'worker-add-goals!))))

;; Reusable memory for the batch calls: one bytevector per thread, grown as
;; needed, whose address is taken once ('bytevector->pointer' costs about
;; 0.8 µs).  A call takes it and gives it back; a nested call (from a
;; predicate) finds none and makes its own.
(define %batch-memory
  (make-thread-local-fluid #f))

(define (take-batch-memory size)
  "Return a pair (BYTEVECTOR . ADDRESS) of at least SIZE bytes."
  (let ((memory (fluid-ref %batch-memory)))
    (fluid-set! %batch-memory #f)
    (if (and memory (>= (bytevector-length (car memory)) size))
        memory
        (let ((bv (make-bytevector
                   (max size 4096
                        (if memory (* 2 (bytevector-length (car memory))) 0))
                   0)))
          (cons bv (pointer-address (bytevector->pointer bv)))))))

(define (give-back-batch-memory! memory)
  (fluid-set! %batch-memory memory))

(define-inlinable (align8 n)
  (* 8 (quotient (+ n 7) 8)))

(define %batch-reference-high-offset
  ;; Where the high half of a 64-bit integer is in memory.
  (if (eq? (native-endianness) (endianness little)) 4 0))

(define-inlinable (write-batch-reference! bv offset k)
  "Store GK_BATCH_GOAL(K) at OFFSET in BV, as two 32-bit halves: the value
itself, above 2^62, would be a bignum, allocated on every write."
  (bytevector-u32-native-set! bv (+ offset %batch-reference-high-offset)
                              #xffffffff)
  (bytevector-u32-native-set! bv (- (+ offset 4) %batch-reference-high-offset)
                              k))

(define %batch-size (c-struct-size %gk-goal-batch))
(define %batch-error-size (c-struct-size %gk-batch-error))

(define (ensure-objects! worker size)
  "Make WORKER's goal vector hold at least SIZE slots."
  (let ((objects (worker-objects worker)))
    (when (< (vector-length objects) size)
      (let ((new (make-vector (max size (* 2 (vector-length objects))) #f)))
        (vector-move-left! objects 0 (vector-length objects) new 0)
        (set-worker-objects! worker new)))))

(define (tag->goal worker tag)
  "Return the goal of WORKER whose tag is TAG, or #f."
  (let ((objects (worker-objects worker)))
    (and (< tag (vector-length objects))
         (vector-ref objects tag))))

(define (id->goal worker id)
  "Return the goal of WORKER whose id is ID, or #f (asking the library for
its tag)."
  (and (not (zero? id))
       (let* ((scratch (take-scratch))
              (status  (%gk-worker-goal-tag (worker-handle worker) id
                                            (scratch-out-pointer scratch)))
              (tag     (bytevector-u64-native-ref (scratch-out scratch) 0)))
         (give-back-scratch! scratch)
         (and (= status %gk-ok)
              (let ((goal (tag->goal worker tag)))
                (and goal (= (goal-id goal) id) goal))))))

(define (add-goals worker specs origin)
  "Add the goals of SPECS, a vector of <goal-spec>, to WORKER in one
gk_worker_add_goals call; return the vector of their goals."
  (define handle (live-worker worker origin))
  (define n (vector-length specs))
  (define base-tag (worker-tag-count worker))
  ;; The sizes, the outputs (encoded once for the whole batch) and the
  ;; dependencies (checked to be goals of WORKER).
  (define-values (n-outputs n-deps strings)
    (let loop ((i 0) (n-outputs 0) (n-deps 0) (strings '()))
      (if (= i n)
          (values n-outputs n-deps strings)
          (let* ((spec (vector-ref specs i))
                 (outputs (goal-spec-outputs spec)))
            (let deps ((rest (goal-spec-dependencies spec)) (n-deps n-deps))
              (match rest
                (()
                 (loop (+ i 1) (+ n-outputs (length outputs)) n-deps
                       (if (null? outputs)
                           strings
                           (append-reverse outputs strings))))
                ((dependency . rest)
                 (unless (exact-integer? dependency)
                   (worker-goal worker dependency origin))
                 (deps rest (+ n-deps 1)))))))))
  (when (>= n %uint32-limit)
    (raise-goalkeeper-error 'invalid-argument
                            (format #f "~a goals in one batch; at most ~a"
                                    n (- %uint32-limit 1))
                            origin))
  (let* ((packed     (if (null? strings)
                         #vu8()
                         (string->utf8
                          (string-join (reverse strings) "\0" 'suffix))))
         (at-kinds   %batch-size)
         (at-modes   (+ at-kinds (align8 (* 4 n))))
         (at-tags    (+ at-modes (align8 (* 4 n))))
         (at-outoff  (+ at-tags (* 8 n)))
         (at-depoff  (+ at-outoff (if (zero? n-outputs) 0 (align8 (* 4 (+ n 1))))))
         (at-deps    (+ at-depoff (if (zero? n-deps) 0 (align8 (* 4 (+ n 1))))))
         (at-ids     (+ at-deps (* 8 n-deps)))
         (at-err     (+ at-ids (* 8 n)))
         (at-packed  (+ at-err (align8 %batch-error-size)))
         (size       (+ at-packed (bytevector-length packed)))
         (memory     (take-batch-memory size))
         (bv         (car memory))
         (address    (cdr memory)))
    (define (pointer-at offset)
      (make-pointer (+ address offset)))
    (let fill ((i 0) (out 0) (dep 0))
      (when (< i n)
        (let ((spec (vector-ref specs i)))
          (bytevector-u32-native-set! bv (+ at-kinds (* 4 i))
                                      (kind->number (goal-spec-kind spec)
                                                    origin))
          (bytevector-u32-native-set! bv (+ at-modes (* 4 i))
                                      (goal-spec-mode spec))
          (bytevector-u64-native-set! bv (+ at-tags (* 8 i)) (+ base-tag i))
          (unless (zero? n-outputs)
            (bytevector-u32-native-set! bv (+ at-outoff (* 4 i)) out))
          (unless (zero? n-deps)
            (bytevector-u32-native-set! bv (+ at-depoff (* 4 i)) dep))
          (let deps ((rest (goal-spec-dependencies spec)) (dep dep))
            (match rest
              (()
               (fill (+ i 1)
                     (if (zero? n-outputs)
                         out
                         (+ out (length (goal-spec-outputs spec))))
                     dep))
              ((dependency . rest)
               (if (exact-integer? dependency)
                   (write-batch-reference! bv (+ at-deps (* 8 dep)) dependency)
                   (bytevector-u64-native-set! bv (+ at-deps (* 8 dep))
                                               (goal-id dependency)))
               (deps rest (+ dep 1))))))))
    (unless (zero? n-outputs)
      (bytevector-u32-native-set! bv (+ at-outoff (* 4 n)) n-outputs))
    (unless (zero? n-deps)
      (bytevector-u32-native-set! bv (+ at-depoff (* 4 n)) n-deps))
    (bytevector-copy! packed 0 bv at-packed (bytevector-length packed))
    (write-gk-goal-batch! bv 0 %batch-size n
                          (pointer-at at-kinds) (pointer-at at-modes)
                          (pointer-at at-tags)
                          (if (zero? n-outputs) %null-pointer
                              (pointer-at at-outoff))
                          %null-pointer
                          (if (zero? n-outputs) %null-pointer
                              (pointer-at at-packed))
                          (bytevector-length packed)
                          (if (zero? n-deps) %null-pointer
                              (pointer-at at-depoff))
                          (if (zero? n-deps) %null-pointer
                              (pointer-at at-deps)))
    (let ((status (%gk-worker-add-goals handle (pointer-at 0)
                                        (pointer-at at-ids)
                                        (pointer-at at-err))))
      (unless (= status %gk-ok)
        (give-back-batch-memory! memory)
        (status-error status origin))
      ;; New goals have the next indices of the worker, in order (the low
      ;; 32 bits of a goal id are its index); an entry with another id
      ;; names a goal known already (S9): one of this batch, found among
      ;; the earlier entries, or one of the worker, found by its tag.
      (ensure-objects! worker (+ base-tag n))
      (let ((objects (worker-objects worker))
            (old     (worker-goal-count worker))
            (goals   (make-vector n #f)))
        (define (id-at i)
          (bytevector-u64-native-ref bv (+ at-ids (* 8 i))))
        (let loop ((i 0) (next old))
          (if (< i n)
              (let* ((id    (id-at i))
                     (index (logand id #xffffffff)))
                (cond ((= index next)
                       (let* ((spec (vector-ref specs i))
                              (goal (make-goal worker id
                                               (goal-spec-kind spec)
                                               (goal-spec-outputs spec)
                                               (goal-spec-data spec))))
                         (vector-set! objects (+ base-tag i) goal)
                         (vector-set! goals i goal)
                         (loop (+ i 1) (+ next 1))))
                      ((and (>= index old) (< index next))
                       (vector-set! goals i
                                    (let find ((j 0))
                                      (if (= (id-at j) id)
                                          (vector-ref goals j)
                                          (find (+ j 1)))))
                       (loop (+ i 1) next))
                      (else
                       (vector-set! goals i
                                    (or (id->goal worker id)
                                        (begin
                                          (give-back-batch-memory! memory)
                                          (raise-goalkeeper-error
                                           'invariant-violation
                                           (format #f "the worker returned \
unknown goal ~a" id)
                                           origin))))
                       (loop (+ i 1) next))))
              (begin
                (give-back-batch-memory! memory)
                (set-worker-tag-count! worker (+ base-tag n))
                (set-worker-goal-count! worker next))))
        goals))))

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
  (let ((objects (worker-objects worker)))
    (let loop ((i (- (worker-tag-count worker) 1)) (goals '()))
      (if (< i 0)
          goals
          (loop (- i 1)
                (match (vector-ref objects i)
                  (#f goals)
                  (goal (cons goal goals))))))))


;;;
;;; Events.
;;;

(define %event-size (c-struct-size %gk-event))
(define %event-kind (c-struct-field-offset %gk-event 'kind))
(define %event-goal (c-struct-field-offset %gk-event 'goal))
(define %event-tag (c-struct-field-offset %gk-event 'tag))
(define %event-outcome (c-struct-field-offset %gk-event 'outcome))
(define %event-fd (c-struct-field-offset %gk-event 'fd))
(define %event-timeout (c-struct-field-offset %gk-event 'timeout-ms))

(define %run (c-enum-value %gk-event-kind 'run))
(define %finished (c-enum-value %gk-event-kind 'finished))
(define %wait (c-enum-value %gk-event-kind 'wait))
(define %done (c-enum-value %gk-event-kind 'done))

(define %outcome-symbols
  ;; gk_outcome number -> symbol.
  (let ((table (make-vector 16 #f)))
    (for-each (match-lambda
                ((symbol value _) (vector-set! table value symbol)))
              (c-enum-entries %gk-outcome))
    table))

(define-inlinable (number->outcome outcome)
  (or (and (< outcome (vector-length %outcome-symbols))
           (vector-ref %outcome-symbols outcome))
      (outcome->symbol outcome)))

(define (unknown-goal id origin)
  (raise-goalkeeper-error 'invariant-violation
                          (format #f "the worker returned unknown goal ~a" id)
                          origin))

(define-inlinable (event-goal worker bv offset origin)
  "The goal of the event at OFFSET in BV: from its tag, checked against
its id."
  (let* ((id      (bytevector-u64-native-ref bv (+ offset %event-goal)))
         (tag     (bytevector-u64-native-ref bv (+ offset %event-tag)))
         (objects (worker-objects worker))
         (goal    (and (< tag (vector-length objects))
                       (vector-ref objects tag))))
    (if (and goal (= (goal-id goal) id))
        goal
        (unknown-goal id origin))))

(define (event-at worker bv offset origin)
  "The event stored at OFFSET in BV, as a list: (run GOAL), (finished GOAL
OUTCOME), (wait FD TIMEOUT) or (done)."
  (let ((kind (bytevector-u32-native-ref bv (+ offset %event-kind))))
    (cond ((= kind %run)
           (list 'run (event-goal worker bv offset origin)))
          ((= kind %finished)
           (list 'finished (event-goal worker bv offset origin)
                 (number->outcome
                  (bytevector-u32-native-ref bv (+ offset %event-outcome)))))
          ((= kind %wait)
           (let ((timeout-ms (bytevector-s64-native-ref
                              bv (+ offset %event-timeout))))
             (list 'wait (bytevector-s32-native-ref bv (+ offset %event-fd))
                   (and (>= timeout-ms 0) (/ timeout-ms 1000.)))))
          ((= kind %done)
           '(done))
          (else
           (raise-goalkeeper-error 'invalid-state
                                   (format #f "unknown event kind ~a" kind)
                                   origin)))))

(define (worker-next-event worker)
  "Return the next event of WORKER, without blocking: (run GOAL),
(finished GOAL OUTCOME), (wait FD TIMEOUT) or (done); see the commentary of
this module.  OUTCOME is a symbol such as 'already-valid or
'dependency-failed; TIMEOUT is a number of seconds or #f.

Raise a &goalkeeper-error with status 'scheduler-deadlock if goals remain
but none can progress (the message names them)."
  (let* ((handle  (live-worker worker 'worker-next-event))
         (scratch (take-scratch))
         (status  (%gk-worker-next-event handle (scratch-out-pointer scratch))))
    (if (= status %gk-ok)
        (let ((event (event-at worker (scratch-out scratch) 0
                               'worker-next-event)))
          (give-back-scratch! scratch)
          event)
        (begin
          (give-back-scratch! scratch)
          (status-error status 'worker-next-event)))))

(define (fill-events! handle memory cap origin)
  "Fill the events area of MEMORY, a pair (BYTEVECTOR . ADDRESS) with room
for CAP events and a size_t after them, from gk_worker_next_events; return
how many."
  (let* ((bv (car memory))
         (at-n (* cap %event-size))
         (status (%gk-worker-next-events handle (make-pointer (cdr memory)) cap
                                         (make-pointer (+ (cdr memory) at-n)))))
    (unless (= status %gk-ok)
      (status-error status origin))
    (size-t-ref bv at-n)))

(define* (worker-next-events worker #:optional (max 64))
  "Return the next events of WORKER, at most MAX of them (a positive
integer), as a list, in one call into the library, without blocking: the
events 'worker-next-event' would return one by one.  A (wait FD TIMEOUT)
event comes only alone (when there are other events, they come first and
the wait is left for the next call), and a (done) event is last."
  (unless (and (exact-integer? max) (positive? max))
    (raise-goalkeeper-error 'invalid-argument
                            (format #f "max ~s is not a positive integer" max)
                            'worker-next-events))
  ;; An error leaves the batch memory with this call (the next call makes
  ;; a fresh one), which spares every call an exception handler.
  (let* ((handle (live-worker worker 'worker-next-events))
         (memory (take-batch-memory (+ (* max %event-size) 8))))
    (let loop ((i (- (fill-events! handle memory max 'worker-next-events) 1))
               (events '()))
      (if (< i 0)
          (begin
            (give-back-batch-memory! memory)
            events)
          (loop (- i 1)
                (cons (event-at worker (car memory) (* i %event-size)
                                'worker-next-events)
                      events))))))

(define %report-size (c-struct-size %gk-report))
(define %report-goal (c-struct-field-offset %gk-report 'goal))
(define %report-outcome (c-struct-field-offset %gk-report 'outcome))
(define %report-recorded (c-struct-field-offset %gk-report 'recorded))

(define %reportable
  ;; The outcomes a host reports, and their numbers.
  (map (lambda (symbol) (cons symbol (c-enum-value %gk-outcome symbol)))
       '(built substituted failed timed-out)))

(define %outcome-built (c-enum-value %gk-outcome 'built))

(define-inlinable (reportable-outcome outcome origin)
  "The number of OUTCOME, an outcome a host reports; raise otherwise."
  (if (eq? outcome 'built)
      %outcome-built
      (other-reportable-outcome outcome origin)))

(define (other-reportable-outcome outcome origin)
  (or (assq-ref %reportable outcome)
      (raise-goalkeeper-error
       'invalid-argument
       (format #f "~s is not an outcome to report; expected one of ~s"
               outcome (map car %reportable))
       origin)))

(define (send-reports! handle memory n origin)
  "Report the N reports stored at the start of MEMORY with
gk_worker_report_many; raise on an error (nothing is then reported)."
  (unless (zero? n)
    (let ((status (%gk-worker-report-many
                   handle (make-pointer (cdr memory)) n
                   (make-pointer (+ (cdr memory) (* n %report-size))))))
      (unless (= status %gk-ok)
        (status-error status origin)))))

(define (worker-report-many! worker reports)
  "Report many goals of WORKER that it said to run, in one call, all or
nothing: REPORTS is a list of (GOAL . OUTCOME) pairs, each as for
'worker-report!'.  Return the list of the outcomes recorded, in order (a
success whose outputs are not valid is recorded 'failed)."
  (let* ((handle (live-worker worker 'worker-report-many!))
         (n      (length reports))
         (memory (take-batch-memory (+ (* n %report-size) %batch-error-size)))
         (bv     (car memory)))
    ;; An error leaves the batch memory with this call, as in
    ;; 'worker-next-events'.
    (let loop ((reports reports) (i 0))
      (match reports
        (() #t)
        (((goal . outcome) . rest)
         (let ((at (* i %report-size)))
           (bytevector-u64-native-set!
            bv (+ at %report-goal)
            (worker-goal worker goal 'worker-report-many!))
           (bytevector-u32-native-set!
            bv (+ at %report-outcome)
            (reportable-outcome outcome 'worker-report-many!)))
         (loop rest (+ i 1)))
        (_
         (raise-goalkeeper-error
          'invalid-argument
          (format #f "~s is not a (GOAL . OUTCOME) pair" (car reports))
          'worker-report-many!))))
    (send-reports! handle memory n 'worker-report-many!)
    (let loop ((i (- n 1)) (recorded '()))
      (if (< i 0)
          (begin
            (give-back-batch-memory! memory)
            recorded)
          (loop (- i 1)
                (cons (number->outcome
                       (bytevector-u32-native-ref
                        bv (+ (* i %report-size) %report-recorded)))
                      recorded))))))

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
    (id->goal worker id))
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


;;; scheduler.scm ends here
