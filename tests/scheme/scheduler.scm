;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

(define-module (test-scheduler)
  #:use-module (goalkeeper)
  #:use-module (gk-test)
  #:use-module (ice-9 exceptions)
  #:use-module (ice-9 match)
  #:use-module (ice-9 rdelim)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-64))

;;; The scheduler through the Guile API: a DAG run by 'run-worker' with
;;; real child processes, failures with and without keep-going, "already
;;; valid", cancellation, waits on another process's lock, and the audit
;;; counts after every step.

(define %store #f)

(define (path name)
  (store-path %store name))

(define (audit worker . fields)
  "The values of FIELDS in WORKER's audit, as a list."
  (let ((counts (worker-audit worker)))
    (map (lambda (field) (assq-ref counts field)) fields)))

(define (read-file file)
  (call-with-input-file file read-string))

(define (builder goal)
  "A 'run-worker' procedure: a child process that checks the inputs of GOAL
exist and writes its outputs, naming the inputs it saw."
  (let ((inputs (goal-inputs goal)))
    (fork-builder
     (lambda ()
       (and (every file-exists? inputs)
            (every (lambda (output)
                     (write-output output (string-join inputs)))
                   (goal-outputs goal)))))))

(define %inputs (make-hash-table))

(define (goal-inputs goal)
  (hashq-ref %inputs goal '()))

(define* (add-goal! worker name #:key (deps '()) (kind 'build))
  (let ((goal (worker-add-goal! worker (list (path name))
                                #:kind kind #:dependencies deps)))
    (hashq-set! %inputs goal (append-map goal-outputs deps))
    goal))

(test-begin "scheduler")

(call-with-temporary-store
 (lambda (store)
   (set! %store store)

   ;;
   ;; A diamond DAG plus an independent goal, built by child processes.
   ;;

   (let* ((worker (make-worker #:max-jobs 2))
          (base   (add-goal! worker "base"))
          (left   (add-goal! worker "left" #:deps (list base)))
          (right  (add-goal! worker "right" #:deps (list base)))
          (top    (add-goal! worker "top" #:deps (list left right)))
          (alone  (add-goal! worker "alone"))
          (run-checks '())
          (finish-checks '())
          (results
           (run-worker worker
                       (lambda (goal)
                         ;; When told to run, the goal holds its output lock
                         ;; and a slot, within max-jobs.
                         (set! run-checks
                           (cons (and (every path-locked-by-me?
                                             (goal-outputs goal))
                                      (match (audit worker 'slots-used
                                                    'running 'max-jobs)
                                        ((slots running max)
                                         (and (<= 1 slots max)
                                              (= slots running)))))
                                 run-checks))
                         (builder goal))
                       #:on-finished
                       (lambda (goal outcome)
                         ;; G1: a finished goal holds nothing, at once.
                         (set! finish-checks
                           (cons (and (not (any path-locked-by-me?
                                                (goal-outputs goal)))
                                      (equal? '(0 0)
                                              (audit worker
                                                     'locks-held-by-finished
                                                     'violations)))
                                 finish-checks))))))
     (test-equal "the same output set again gives the same goal (S9)"
       base
       (worker-add-goal! worker (list (path "base"))))

     (test-equal "every goal was built"
       '(built built built built built)
       (map (lambda (goal) (assq-ref results goal))
            (list base left right top alone)))

     (test-equal "run-worker returns each goal once"
       5 (length results))

     (test-assert "dependencies finished before their dependents"
       (let ((position (lambda (goal) (list-index (lambda (r) (eq? (car r) goal))
                                                  results))))
         (and (< (position base) (position left) (position top))
              (< (position base) (position right) (position top)))))

     (test-assert "each run held its output lock and a slot within max-jobs"
       (and (= 5 (length run-checks)) (every identity run-checks)))

     (test-assert "each goal released its locks the moment it finished (G1)"
       (and (= 5 (length finish-checks)) (every identity finish-checks)))

     (test-equal "the builders saw their inputs and wrote their outputs"
       (string-append (path "left") " " (path "right"))
       (read-file (path "top")))

     (test-assert "lock files are deleted once the outputs are valid"
       (not (any (lambda (name) (file-exists? (lock-file (path name))))
                 '("base" "left" "right" "top" "alone"))))

     (test-equal "the final audit: all finished and succeeded, nothing held"
       '(5 5 5 0 0 0 0)
       (audit worker 'goals 'finished 'succeeded 'failed 'locks-held
              'slots-used 'violations))

     (test-equal "goal-state and goal-outcome agree"
       '(finished built #t)
       (list (goal-state top) (goal-outcome top) (goal-finished? top)))

     (test-equal "nothing is held in the process after the run"
       0 (held-path-count))
     (worker-close! worker))

   ;;
   ;; Failures, with and without keep-going (S2, S8).
   ;;

   (define (failure-dag keep-going?)
     (let* ((prefix (if keep-going? "kg-" "nokg-"))
            (worker (make-worker #:max-jobs 1 #:keep-going? keep-going?))
            (bad    (add-goal! worker (string-append prefix "bad")))
            (after  (add-goal! worker (string-append prefix "after")
                               #:deps (list bad)))
            (other  (add-goal! worker (string-append prefix "other")))
            (liar   (add-goal! worker (string-append prefix "liar")))
            (results
             (run-worker worker
                         (lambda (goal)
                           (cond ((eq? goal bad)
                                  (fork-builder (const #f))) ;exits 1
                                 ((eq? goal liar)
                                  (fork-builder (const #t))) ;writes nothing
                                 (else (builder goal)))))))
       (let ((outcomes (map (lambda (goal) (assq-ref results goal))
                            (list bad after other liar)))
             (final    (audit worker 'finished 'locks-held
                              'locks-held-by-finished 'slots-used
                              'violations)))
         (worker-close! worker)
         (list outcomes final))))

   (match (failure-dag #f)
     ((outcomes final)
      (test-equal "without keep-going, a failure cancels the rest"
        '(failed dependency-failed cancelled cancelled)
        outcomes)
      (test-equal "…and releases everything (S8)"
        '(4 0 0 0 0)
        final)))

   (match (failure-dag #t)
     ((outcomes final)
      (test-equal "with keep-going, independent goals go on"
        '(failed dependency-failed built failed)
        outcomes)
      (test-equal "…a builder that exits 0 without writing its output failed"
        'failed
        (fourth outcomes))
      (test-equal "…and everything is released"
        '(4 0 0 0 0)
        final)))

   (test-equal "nothing is held in the process after the failures"
     0 (held-path-count))

   ;;
   ;; Already valid.
   ;;

   (write-output (path "present") "made elsewhere")
   (let* ((worker  (make-worker))
          (present (add-goal! worker "present"))
          (needs   (add-goal! worker "needs-present" #:deps (list present)))
          (ran     '())
          (results (run-worker worker
                               (lambda (goal)
                                 (set! ran (cons goal ran))
                                 (builder goal)))))
     (test-equal "a goal whose output exists finishes already-valid"
       'already-valid
       (assq-ref results present))
     (test-equal "…without running; its dependent runs"
       (list needs)
       ran)
     (test-equal "…and the dependent is built"
       'built
       (assq-ref results needs))
     (test-equal "the output made elsewhere is left alone"
       "made elsewhere"
       (read-file (path "present")))
     (worker-close! worker))

   (let* ((claimed (list (path "virtual")))
          (worker  (make-worker #:valid-path? (lambda (file)
                                                (member file claimed))))
          (goal    (add-goal! worker "virtual")))
     (test-equal "the valid-path? predicate decides validity"
       `((,goal . already-valid))
       (run-worker worker (lambda (goal) 'failed)))
     (worker-close! worker))

   (let* ((worker (make-worker #:valid-path? (lambda (file)
                                               (error "predicate broke"))))
          (goal   (add-goal! worker "predicate-raises"))
          (results #f)
          (warnings
           (with-error-to-string
             (lambda ()
               (set! results
                 (run-worker worker
                             (lambda (goal) (fork-builder (const #t)))))))))
     (test-equal "a predicate that raises is taken as #f: the goal runs and fails"
       `((,goal . failed))
       results)
     (test-assert "…and the exception is reported"
       (string-contains warnings "valid-path? predicate raised"))
     (test-equal "…and nothing is left held or broken"
       '(0 0)
       (audit worker 'locks-held 'violations))
     (worker-close! worker))

   ;;
   ;; run-worker cleans up when the host's procedure raises.
   ;;

   (let* ((worker  (make-worker #:max-jobs 2))
          (slow    (add-goal! worker "slow"))
          (broken  (add-goal! worker "broken"))
          (blocker (pipe))                        ;never written: the
          (slow-pid #f)                           ;slow builder blocks
          (status
           (error-status
            (lambda ()
              (run-worker worker
                          (lambda (goal)
                            (if (eq? goal slow)
                                (begin
                                  (set! slow-pid
                                    (fork-builder
                                     (lambda ()
                                       (close-port (cdr blocker))
                                       (read-char (car blocker)))))
                                  slow-pid)
                                (raise-exception
                                 (make-exception-with-message "host bug")))))))))
     (close-port (car blocker))
     (close-port (cdr blocker))
     (test-equal "an exception from the host's procedure goes through run-worker"
       '(other . #t)
       (match status
         (('other . e) (cons 'other (string=? "host bug" (exception-message e))))
         (_ status)))
     (test-equal "…the goal it was starting and the running one are cancelled"
       '(cancelled cancelled)
       (list (goal-outcome broken) (goal-outcome slow)))
     (test-assert "…the running builder was killed and reaped"
       (and slow-pid
            (not (false-if-exception (waitpid slow-pid WNOHANG)))))
     (test-equal "…and their locks are released"
       '(0 0 0)
       (list (held-path-count)
             (assq-ref (worker-audit worker) 'locks-held)
             (assq-ref (worker-audit worker) 'slots-used)))
     (worker-close! worker))

   (let* ((worker (make-worker))
          (goal   (add-goal! worker "bad-outcome"))
          (status (error-status
                   (lambda () (run-worker worker (lambda (goal) 'sideways))))))
     (test-equal "an outcome the host may not report raises, and the goal is cancelled"
       '(invalid-argument cancelled 0)
       (list status (goal-outcome goal) (held-path-count)))
     (worker-close! worker))

   (let* ((worker (make-worker))
          (goal   (add-goal! worker "not-a-child"))
          (status (error-status
                   (lambda () (run-worker worker (lambda (goal) 1))))))
     (test-equal "a PID that is not a child is refused, never signalled; the goal fails"
       '(invalid-argument failed 0)
       (list status (goal-outcome goal) (held-path-count)))
     (worker-close! worker))

   ;;
   ;; Cancellation and the audit after every step, driving the loop by hand.
   ;;

   (let* ((worker (make-worker #:max-jobs 1))
          (first  (add-goal! worker "c-first"))
          (second (add-goal! worker "c-second" #:deps (list first)))
          (third  (add-goal! worker "c-third")))
     (test-equal "after adding: three goals, one waiting for its dependency"
       '(3 1 0 0 0)
       (audit worker 'goals 'waiting-deps 'running 'locks-held 'slots-used))

     (test-equal "the first event runs the first goal"
       `(run ,first)
       (worker-next-event worker))

     (test-equal "while it runs: its lock and the only slot are taken"
       '(1 1 1 0)
       (audit worker 'running 'locks-held 'slots-used 'finished))

     (test-assert "…and this process holds its output lock"
       (path-locked-by-me? (path "c-first")))

     (match (worker-next-event worker)
       (('wait fd timeout)
        (test-assert "the only slot is busy, so the next event is a wait"
          (integer? fd))
        (test-equal "…whose descriptor is the worker's"
          (worker-fd worker)
          fd)
        (test-equal "…and the third goal waits for a slot holding no lock (S4)"
          '(waiting-slot 1)
          (list (goal-state third) (assq-ref (worker-audit worker) 'locks-held))))
       (event
        (test-assert (format #f "unexpected event ~s" event) #f)))

     (worker-cancel! worker first)
     (test-equal "cancelling the running goal releases its lock and slot"
       '(cancelled #f 0 0)
       (list (goal-outcome first)
             (path-locked-by-me? (path "c-first"))
             (assq-ref (worker-audit worker) 'locks-held)
             (assq-ref (worker-audit worker) 'slots-used)))

     (test-equal "its dependent then finishes dependency-failed"
       `(finished ,second dependency-failed)
       (worker-next-event worker))

     (test-equal "the freed slot goes to the third goal"
       `(run ,third)
       (worker-next-event worker))

     (test-equal "while the third runs"
       '(1 1 1 2)
       (audit worker 'running 'locks-held 'slots-used 'finished))

     (write-output (path "c-third") "done")
     (worker-report! worker third 'built)
     (test-equal "after its report: all finished, nothing held"
       '(0 0 0 3 1 2 0)
       (audit worker 'running 'locks-held 'slots-used 'finished
              'succeeded 'failed 'locks-held-by-finished))

     (test-equal "then the worker is done"
       '(done)
       (worker-next-event worker))

     (test-equal "cancelling a finished goal is an invalid state"
       'invalid-state
       (error-status (lambda () (worker-cancel! worker first))))

     (test-equal "reporting an outcome the host cannot report is refused"
       'invalid-argument
       (error-status (lambda () (worker-report! worker third 'sideways))))

     (worker-close! worker)
     (test-equal "a closed worker is a stale handle"
       'stale-handle
       (error-status (lambda () (worker-next-event worker))))
     (test-equal "closing twice does nothing"
       'no-error
       (error-status (lambda () (worker-close! worker)))))

   ;;
   ;; Bad inputs.
   ;;

   (call-with-worker
    (lambda (worker)
      (add-goal! worker "p-ab")
      (test-equal "a partial overlap with another goal's outputs is refused"
        'invalid-argument
        (error-status (lambda ()
                        (worker-add-goal! worker (list (path "p-ab")
                                                       (path "p-c"))))))
      (test-equal "a substitution has exactly one output"
        'invalid-argument
        (error-status (lambda ()
                        (worker-add-goal! worker (list (path "s1") (path "s2"))
                                          #:kind 'substitute))))
      (test-equal "an unknown goal kind is refused"
        'invalid-argument
        (error-status (lambda ()
                        (worker-add-goal! worker (list (path "k"))
                                          #:kind 'compile))))
      (test-equal "a relative output is an invalid path"
        'invalid-path
        (error-status (lambda () (worker-add-goal! worker (list "out")))))
      (call-with-worker
       (lambda (other)
         (let ((foreign (add-goal! other "foreign")))
           (test-equal "a goal of another worker is refused"
             'invalid-argument
             (error-status (lambda () (worker-cancel! worker foreign)))))))
      (test-equal "max-jobs must be a non-negative integer"
        'invalid-argument
        (error-status (lambda () (make-worker #:max-jobs -1))))))

   ;;
   ;; Waiting on another process's lock.
   ;;

   (let ((holder (fork-child
                  (lambda (in out)
                    (let ((lockset (lock-paths (list (path "foreign")))))
                      (child-reply out 'locked)
                      (match (child-read-command in)
                        ('release (lockset-release! lockset))
                        (_ #t)))))))
     (child-receive holder)
     (let* ((worker (make-worker))
            (goal   (add-goal! worker "foreign")))
       (match (worker-next-event worker)
         (('wait fd timeout)
          (test-equal "a goal whose lock another process holds waits, holding nothing (G2)"
            '(1 1 0)
            (audit worker 'waiting-lock 'foreign-waits 'locks-held))
          (child-send holder 'release)
          (test-assert "the worker's descriptor becomes readable when the holder releases (G4)"
            (match (select (list fd) '() '() 10)
              (((_) _ _) #t)
              (_ #f)))
          (test-equal "then the goal runs, with the lock"
            `((run ,goal) #t)
            (list (worker-next-event worker)
                  (path-locked-by-me? (path "foreign")))))
         (event
          (test-assert (format #f "unexpected event ~s" event) #f)))
       (write-output (path "foreign") "built here")
       (worker-report! worker goal 'built)
       (test-equal "…and is built"
         'built (goal-outcome goal))
       (worker-close! worker))
     (child-wait holder))

   (let ((holder (fork-child
                  (lambda (in out)
                    (let ((lockset (lock-paths (list (path "leaked")))))
                      (child-reply out 'locked)
                      (match (child-read-command in)
                        (('make-valid file)
                         (write-output file "made by the holder")
                         (child-reply out 'valid)
                         ;; Keep the lock, like a leaked lock in an old
                         ;; daemon, until told to exit.
                         (child-read-command in))))))))
     (child-receive holder)
     (let* ((worker (make-worker #:recheck-interval 0.05))
            (goal   (add-goal! worker "leaked")))
       (match (worker-next-event worker)
         (('wait fd timeout)
          (test-assert "a goal waiting on a foreign lock gets a re-check timeout"
            (and timeout (<= timeout 0.05)))
          ;; Only now does the path become valid, the lock still held.
          (child-send holder `(make-valid ,(path "leaked")))
          (child-receive holder)
          (let* ((start   (get-internal-real-time))
                 (results (run-worker worker (lambda (goal) 'failed))))
            (test-equal "a path that became valid under a lock still held elsewhere is noticed (S3)"
              `((,goal . already-valid))
              results)
            (test-assert "…within a bounded time"
              (< (seconds-since start) 10))
            (test-assert "…by re-checking, without ever taking the lock"
              (match (audit worker 'validity-rechecks 'locks-held 'handoffs)
                ((rechecks 0 0) (>= rechecks 1))
                (_ #f)))))
         (event
          (test-assert (format #f "unexpected event ~s" event) #f)))
       (worker-close! worker))
     (child-send holder 'exit)
     (child-wait holder))


   ;;
   ;; Batches of goals, events and reports; the host's data per goal.
   ;;

   (let* ((worker (make-worker #:max-jobs 2))
          (data   (list 'base (vector "top") (lambda () 'left)))
          (goals  (worker-add-goals!
                   worker
                   (list (goal-spec (list (path "bt-base")) #:data (first data))
                         ;; index 1 depends on 2, later in the batch, and 0
                         (goal-spec '() #:kind 'plain #:data (second data)
                                    #:dependencies '(2 0))
                         (goal-spec (list (path "bt-left")) #:data (third data)
                                    #:dependencies '(0))
                         ;; the same outputs as index 0: the same goal (S9)
                         (goal-spec (list (path "bt-base")) #:data 'other)))))
     (test-equal "worker-add-goals! returns the goals in order, shared ones repeated"
       '(4 #t #t)
       (list (length goals) (eq? (first goals) (fourth goals))
             (every goal? goals)))
     (test-assert "goal-data gives the host's object back; S9 keeps the first"
       (and (eq? (goal-data (first goals)) 'base)
            (eq? (goal-data (second goals)) (second data))
            (eq? (goal-data (third goals)) (third data))))
     (test-equal "worker-goals lists each goal once"
       (list (first goals) (second goals) (third goals))
       (worker-goals worker))

     (let ((before  (alist-delete 'checks (worker-audit worker)))
           (goals*  (worker-goals worker))
           (message (error-message
                     (lambda ()
                       (worker-add-goals!
                        worker
                        (list (goal-spec '() #:kind 'plain)
                              (goal-spec (list (path "bt-new") (path "bt-left")))
                              (goal-spec '() #:kind 'plain
                                         #:dependencies '(0))))))))
       (test-assert "a batch with a bad element in the middle is refused, naming it"
         (and message (string-prefix? "goals[1].outputs[1]" message)))
       (test-equal "…and changes nothing: the audit"
         before (alist-delete 'checks (worker-audit worker)))
       (test-equal "…the goals"
         goals* (worker-goals worker))
       (test-equal "…the locks"
         0 (held-path-count)))

     (test-equal "a reference beyond the batch is refused"
       'invalid-argument
       (error-status (lambda ()
                       (worker-add-goals!
                        worker (list (goal-spec '() #:kind 'plain
                                                #:dependencies '(3)))))))
     (test-equal "a goal spec checks its arguments"
       '(invalid-argument invalid-path invalid-argument invalid-argument)
       (map error-status
            (list (lambda () (goal-spec "not a list"))
                  (lambda () (goal-spec (list "/gk/a\x00b")))
                  (lambda () (goal-spec '() #:kind 'compile))
                  (lambda () (goal-spec '() #:dependencies '(x))))))
     (call-with-worker
      (lambda (other)
        (let ((foreign (worker-add-goal! other '() #:kind 'plain)))
          (test-equal "a dependency on another worker's goal is refused"
            'invalid-argument
            (error-status (lambda ()
                            (worker-add-goal! worker '() #:kind 'plain
                                              #:dependencies
                                              (list foreign))))))))

     (test-equal "worker-next-events: base runs first, alone"
       `((run ,(first goals)))
       (worker-next-events worker 8))
     (test-equal "…then a wait, alone"
       'wait
       (car (first (worker-next-events worker 8))))
     (test-equal "max must be positive"
       'invalid-argument
       (error-status (lambda () (worker-next-events worker 0))))
     (test-equal "worker-report-many! refuses a goal that is not running, whole"
       '(invalid-state #t)
       (list (error-status
              (lambda ()
                (worker-report-many! worker
                                     (list (cons (first goals) 'built)
                                           (cons (second goals) 'built)))))
             (path-locked-by-me? (path "bt-base"))))
     (test-equal "worker-report-many! returns the outcomes recorded"
       '(failed)                               ;its output was not written
       (worker-report-many! worker (list (cons (first goals) 'built))))
     (let ((events (worker-next-events worker 8)))
       (test-assert "…its lock is released, its dependents end dependency-failed"
         (and (not (path-locked-by-me? (path "bt-base")))
              (= 3 (length events))
              (lset= equal? (list-head events 2)
                     `((finished ,(second goals) dependency-failed)
                       (finished ,(third goals) dependency-failed)))))
       (test-equal "…and done comes last"
         '(done) (last events)))
     (worker-close! worker))

   ;; run-worker over many goals, in batches.
   (let* ((n      1000)
          (worker (make-worker))
          (specs  (map (lambda (i)
                         (goal-spec '() #:kind 'plain #:data i
                                    #:dependencies
                                    (if (zero? i) '() (list (quotient i 2)))))
                       (iota n)))
          (goals  (worker-add-goals! worker specs))
          (ran    (make-vector n #f))
          (order  '())
          (results (run-worker worker
                               (lambda (goal)
                                 (vector-set! ran (goal-data goal) #t)
                                 'built)
                               #:on-finished
                               (lambda (goal outcome)
                                 (set! order (cons (goal-data goal) order))))))
     (test-equal "run-worker runs a thousand goals, each once"
       (list n n #t)
       (list (length results) (length order)
             (every (lambda (i) (vector-ref ran i)) (iota n))))
     (test-assert "…each after its dependency"
       (let ((position (make-vector n 0)))
         (for-each (lambda (i k) (vector-set! position i k))
                   (reverse order) (iota n))
         (every (lambda (i)
                  (< (vector-ref position (quotient i 2))
                     (vector-ref position i)))
                (cdr (iota n)))))
     (test-equal "…and all were built"
       (list n 0)
       (list (count (lambda (r) (eq? (cdr r) 'built)) results)
             (assq-ref (worker-audit worker) 'violations)))
     (worker-close! worker))

   ;; An exception in the middle of a batch: the outcomes already returned
   ;; are reported, the goal being started and those not started yet are
   ;; cancelled, and every lock is released.
   (let* ((worker (make-worker #:max-jobs 3))
          (goals  (worker-add-goals!
                   worker
                   (map (lambda (name) (goal-spec (list (path name))))
                        '("ex-a" "ex-b" "ex-c"))))
          (seen   '())
          (status (error-status
                   (lambda ()
                     (run-worker worker
                                 (lambda (goal)
                                   (set! seen (cons goal seen))
                                   (if (eq? goal (first goals))
                                       (begin
                                         (write-output (path "ex-a") "a")
                                         'built)
                                       (raise-exception
                                        (make-exception-with-message
                                         "host bug")))))))))
     (test-equal "an exception in a batch: the reported goal is built, the rest cancelled"
       '(built cancelled cancelled)
       (map goal-outcome goals))
     (test-equal "…the exception went through, after two goals were started"
       '(other 2)
       (list (and (pair? status) (car status)) (length seen)))
     (test-equal "…and nothing is held"
       '(0 0)
       (list (held-path-count) (assq-ref (worker-audit worker) 'slots-used)))
     (worker-close! worker))

   (test-equal "nothing is held at the end"
     0 (held-path-count))))

(test-end "scheduler")
