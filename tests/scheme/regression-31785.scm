;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

(define-module (test-regression-31785)
  #:use-module (goalkeeper)
  #:use-module (gk-test)
  #:use-module (ice-9 format)
  #:use-module (ice-9 match)
  #:use-module (ice-9 rdelim)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-26)
  #:use-module (srfi srfi-64))

;;; Guix bug #31785: in the C++ daemon a goal's locks live as long as the
;;; goal object, which outlives the goal's work, so a finished goal keeps
;;; its output locks while its worker goes on; three clients building
;;; overlapping graphs with --max-jobs=1 then wait on each other for ever.
;;;
;;; Here three Guile processes, each with its own worker (max-jobs 1), build
;;; overlapping DAGs with real builder processes, started one after the
;;; other: client K starts once client K-1 is building.  They must all
;;; finish within a bound, every output must be built exactly once, and no
;;; client may ever see a lock held by a finished goal.

(define %clients 3)

(define %deadline
  ;; Seconds for the whole scenario; it takes well under one.
  60)

(define %store #f)

(define (path name)
  (store-path %store name))

(define (mid k)
  (path (format #f "mid-~a" (modulo k %clients))))

(define (top k)
  (path (format #f "top-~a" k)))

(define (all-outputs)
  (append (list (path "base"))
          (map mid (iota %clients))
          (map top (iota %clients))))

(define (builds-log)
  (path "builds.log"))

(define (build! outputs inputs)
  "The work of a builder process: check INPUTS exist, log the build, write
OUTPUTS."
  ;; Simulated build time: the builder's workload, not synchronisation.
  (usleep 20000)
  (and (every file-exists? inputs)
       (let ((log (open-file (builds-log) "a")))
         ;; One short write on an O_APPEND descriptor: lines do not mix.
         (for-each (lambda (output)
                     (display (string-append output "\n") log))
                   outputs)
         (close-port log)
         (every (lambda (output) (write-output output "built")) outputs))))

(define (client k out)
  "Client K: build base -> mid K, mid K+1 -> top K with its own worker, and
report to the parent through OUT."
  (let* ((worker  (make-worker #:max-jobs 1))
         (base    (worker-add-goal! worker (list (path "base"))))
         (mid-a   (worker-add-goal! worker (list (mid k))
                                    #:dependencies (list base)))
         (mid-b   (worker-add-goal! worker (list (mid (+ k 1)))
                                    #:dependencies (list base)))
         (top-k   (worker-add-goal! worker (list (top k))
                                    #:dependencies (list mid-a mid-b)))
         (inputs  `((,base) (,mid-a ,(path "base")) (,mid-b ,(path "base"))
                    (,top-k ,(mid k) ,(mid (+ k 1)))))
         (started? #f)
         (worst    0)                             ;max locks-held-by-finished
         (stale    '()))                          ;finished goals holding locks
    (define (run goal)
      (unless started?
        (set! started? #t)
        (child-reply out `(building ,k)))
      (let ((goal-inputs (assq-ref inputs goal))
            (outputs     (goal-outputs goal)))
        (fork-builder (lambda () (build! outputs goal-inputs)))))
    (define (finished goal outcome)
      (let ((counts (worker-audit worker)))
        (set! worst (max worst (assq-ref counts 'locks-held-by-finished)))
        (when (any path-locked-by-me? (goal-outputs goal))
          (set! stale (cons (goal-outputs goal) stale)))))
    (let ((results (run-worker worker run #:on-finished finished)))
      (child-reply out
                   `(result ,k
                            ,(map cdr results)
                            ,worst
                            ,stale
                            ,(assq-ref (worker-audit worker) 'violations)
                            ,(held-path-count)
                            ,(map (lambda (field)
                                    (assq-ref (worker-audit worker) field))
                                  '(foreign-waits handoffs
                                    validity-rechecks))))
      (worker-close! worker))))

(define (receive-result child deadline)
  "Return the (result …) datum of CHILD, skipping progress messages, or
'timeout once DEADLINE (a get-internal-real-time value) has passed."
  (let loop ()
    (let ((left (/ (- deadline (get-internal-real-time))
                   internal-time-units-per-second 1.)))
      (if (<= left 0)
          'timeout
          (match (child-receive child left)
            (('result . rest) (cons 'result rest))
            (('building _) (loop))
            (other other))))))

(define (receive-start child deadline)
  "Wait until CHILD says it is building, or has finished: the staggered
start of the next client."
  (match (child-receive child (/ (- deadline (get-internal-real-time))
                                 internal-time-units-per-second 1.))
    (('building _) 'started)
    (other other)))

(test-begin "regression-31785")

(call-with-temporary-store
 (lambda (store)
   (set! %store store)

   (let* ((start    (get-internal-real-time))
          (deadline (+ start (* %deadline internal-time-units-per-second)))
          (children+starts
           (let loop ((k 0) (acc '()))
             (if (= k %clients)
                 (reverse acc)
                 (let* ((child (fork-child (lambda (in out) (client k out))))
                        ;; Staggered starts: the next client starts once this
                        ;; one is building.
                        (start (receive-start child deadline)))
                   (loop (+ k 1) (cons (cons child start) acc))))))
          (children (map car children+starts))
          (results  (map (lambda (child)
                           (match (receive-result child deadline)
                             (('result k outcomes worst stale violations held
                                        waits)
                              (list outcomes worst stale violations held
                                    waits))
                             (other other)))
                         children))
          (statuses (map child-wait children))
          (elapsed  (seconds-since start)))

     (test-equal "the first client started building before the next began"
       'started
       (cdr (first children+starts)))

     (for-each
      (lambda (k result status)
        (match result
          ((outcomes worst stale violations held waits)
           (test-assert (format #f "client ~a: every goal built or already valid" k)
             (and (= 4 (length outcomes))
                  (every (lambda (o) (memq o '(built already-valid)))
                         outcomes)))
           (test-equal (format #f "client ~a: never a lock held by a finished goal (audit)" k)
             0 worst)
           (test-equal (format #f "client ~a: no finished goal's output locked by the process" k)
             '() stale)
           (test-equal (format #f "client ~a: no ledger violation" k)
             0 violations)
           (test-equal (format #f "client ~a: nothing held at the end" k)
             0 held))
          (other
           (test-assert (format #f "client ~a finished and reported (got ~s)"
                                k other)
             #f)))
        (test-equal (format #f "client ~a exited cleanly" k)
          0 status))
      (iota %clients) results statuses)

     (test-assert (format #f "all clients finished within ~a s (took ~,2f s)"
                          %deadline elapsed)
       (< elapsed %deadline))

     (let ((outcomes (append-map (match-lambda
                                   ((outcomes . _) outcomes)
                                   (_ '()))
                                 results)))
       (test-equal "7 distinct outputs: 7 goals built, the other 5 found them valid"
         '(7 5)
         (list (count (cut eq? 'built <>) outcomes)
               (count (cut eq? 'already-valid <>) outcomes))))

     ;; For the record (tests/scheme.rs echoes NOTE lines).
     (format #t "NOTE #31785: ~a clients finished in ~,2f s; foreign lock \
waits, hand-offs, validity re-checks per client: ~s~%"
             %clients elapsed
             (map (match-lambda ((_ _ _ _ _ waits) waits) (_ #f)) results))

     (test-assert "every output exists"
       (every file-exists? (all-outputs)))

     (test-equal "every output was built exactly once across the clients"
       (sort (all-outputs) string<?)
       (sort (string-split (string-trim-right (call-with-input-file
                                                  (builds-log) read-string))
                           #\newline)
             string<?))

     (test-assert "no lock is left held by anyone"
       (let ((lockset (lock-paths (all-outputs) #:wait? #f)))
         (and lockset (begin (lockset-release! lockset) #t)))))

   ;; The control: with the C++ daemon's lock lifetime, the same audit
   ;; sees the bug, so the assertions above would catch a regression.
   (let* ((worker (make-worker #:legacy-hold? #t))
          (goal   (worker-add-goal! worker (list (path "legacy")))))
     (test-equal "control: a legacy-hold worker runs the goal"
       `(run ,goal)
       (worker-next-event worker))
     (write-output (path "legacy") "built")
     (let ((status (error-status (lambda () (worker-report! worker goal 'built)))))
       (test-assert "control: its finished goal keeps its lock, and the ledger says so"
         (or (eq? status 'invariant-violation)
             (positive? (assq-ref (worker-audit worker)
                                  'locks-held-by-finished)))))
     (worker-close! worker)
     (test-equal "control: closing the worker releases it"
       0 (held-path-count)))))

(test-end "regression-31785")
