;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

(define-module (test-log)
  #:use-module (goalkeeper)
  #:use-module (gk-test)
  #:use-module (ice-9 binary-ports)
  #:use-module (ice-9 exceptions)
  #:use-module (ice-9 match)
  #:use-module (ice-9 rdelim)
  #:use-module (rnrs bytevectors)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-64))

;;; The worker's diagnostics log as records ('worker-log-records'), and the
;;; hooks of 'run-worker': #:on-log, #:on-exit and #:watch, with a real
;;; foreign holder process, real builder processes and real pipes.

(define %store #f)

(define (path name)
  (store-path %store name))

(define (kinds records)
  (map log-record-kind records))

(define (holder-of file)
  "Fork a child that locks FILE through (goalkeeper) and holds it until
told 'release (then it makes FILE valid first if told (release valid))."
  (let ((child (fork-child
                (lambda (in out)
                  (let ((lockset (lock-paths (list file))))
                    (child-reply out 'locked)
                    (match (child-read-command in)
                      ('(release valid)
                       (write-output file "made by the holder")
                       (lockset-release! lockset))
                      (_ (lockset-release! lockset))))))))
    (child-receive child)                         ;'locked
    child))

(define (wait-for-event worker)
  "Call 'worker-next-event' until it returns something other than a wait,
waiting on the worker's descriptor in between (at most 10 s each time)."
  (let loop ((n 0))
    (match (worker-next-event worker)
      (('wait fd timeout)
       (if (< n 50)
           (begin (select (list fd) '() '() (if timeout (min timeout 10) 10))
                  (loop (+ n 1)))
           'still-waiting))
      (event event))))

(test-begin "log")

(call-with-temporary-store
 (lambda (store)
   (set! %store store)

   ;;
   ;; worker-log-records, with a foreign holder process.
   ;;

   (let* ((out    (path "glibc"))
          (holder (holder-of out))
          (worker (make-worker #:recheck-interval 30))
          (goal   (worker-add-goal! worker (list out))))
     (test-equal "a goal whose lock another process holds waits"
       'wait
       (car (worker-next-event worker)))
     (match (worker-log-records worker)
       ((record)
        (test-equal "one record: the wait, its goal and path"
          (list 'waits-foreign goal out)
          (list (log-record-kind record) (log-record-goal record)
                (log-record-path record)))
        (test-equal "…naming the holder's pid, as the kernel tells"
          (child-pid holder)
          (log-record-holder-pid record))
        (test-equal "…no holder goal and no duration"
          '(#f #f)
          (list (log-record-holder-goal record) (log-record-duration record)))
        (test-assert "…a monotonic time in nanoseconds and the text line"
          (and (exact-integer? (log-record-time record))
               (positive? (log-record-time record))
               (string-contains (log-record-message record)
                                (format #f "pid ~a" (child-pid holder)))))
        (test-assert "a log record prints with its kind"
          (string-contains (object->string record) "waits-foreign")))
       (records
        (test-assert (format #f "unexpected records ~s" records) #f)))
     (test-equal "the records were taken: the log is empty"
       '(() ())
       (list (worker-log-records worker) (worker-log worker)))

     (child-send holder '(release valid))
     (test-equal "the holder made the path valid and released: already valid"
       `(finished ,goal already-valid)
       (wait-for-event worker))
     (match (worker-log-records worker)
       ((record)
        (test-equal "one record: it became valid, after waiting"
          '(became-valid #t)
          (list (log-record-kind record)
                (and (real? (log-record-duration record))
                     (> (log-record-duration record) 0)))))
       (records
        (test-assert (format #f "unexpected records ~s" records) #f)))
     (test-equal "the holder exited normally"
       0 (child-wait holder))
     (worker-close! worker)
     (test-equal "records of a closed worker: a stale handle"
       'stale-handle
       (error-status (lambda () (worker-log-records worker)))))

   (let* ((out    (path "handed"))
          (holder (holder-of out))
          (worker (make-worker #:recheck-interval 30))
          (goal   (worker-add-goal! worker (list out))))
     (worker-next-event worker)
     (child-send holder 'release)
     (test-equal "a lock handed over: the goal runs"
       `(run ,goal)
       (wait-for-event worker))
     (test-equal "the log has the wait and the hand-off"
       '(waits-foreign handed-over)
       (kinds (worker-log-records worker)))
     (child-wait holder)
     (worker-cancel! worker goal)
     (worker-close! worker))

   (let* ((worker (make-worker))
          (out    (path "modes"))
          (goal   (worker-add-goal! worker (list out) #:mode 'check)))
     (worker-add-goal! worker (list out))
     (test-equal "worker-log and worker-log-records drain one log"
       '(1 ())
       (list (length (worker-log worker)) (worker-log-records worker)))
     (worker-add-goal! worker (list out))
     (test-equal "…whose records name the goal"
       (list 'mode-kept goal)
       (match (worker-log-records worker)
         ((record) (list (log-record-kind record) (log-record-goal record)))
         (other other)))
     (worker-close! worker))

   ;;
   ;; run-worker #:on-log and #:on-exit.
   ;;

   (let* ((worker   (make-worker #:max-jobs 1))
          (liar     (worker-add-goal! worker (list (path "liar"))))
          (after    (worker-add-goal! worker (list (path "after"))))
          (logged   '())
          (held     '())
          (results
           (run-worker worker
                       (lambda (goal) (fork-builder (const #t))) ;writes nothing
                       #:on-exit
                       (lambda (goal status)
                         (set! held (cons (path-locked-by-me? (path "liar"))
                                          held))
                         'built)
                       #:on-log
                       (lambda (record)
                         (set! logged (cons record logged))))))
     (test-equal "#:on-exit runs before the report, the locks still held"
       '(#t) held)
     (test-equal "#:on-log gets the records as they are made"
       '(not-valid-after-success cancelled-by-failure)
       (kinds (reverse logged)))
     (test-equal "…about the goals concerned"
       (list liar liar)
       (map log-record-goal (reverse logged)))
     (test-equal "…and the outcomes follow"
       `((,liar . failed) (,after . cancelled))
       results)
     (test-equal "…and nothing is left in the log"
       '() (worker-log-records worker))
     (worker-close! worker))

   (let* ((worker  (make-worker))
          (goal    (worker-add-goal! worker (list (path "exit-decides"))))
          (results (run-worker worker
                               (lambda (goal)
                                 (fork-builder
                                  (lambda ()
                                    (write-output (path "exit-decides") "x"))))
                               #:on-exit (lambda (goal status) 'timed-out))))
     (test-equal "#:on-exit returns the outcome reported"
       `((,goal . timed-out))
       results)
     (worker-close! worker))

   ;;
   ;; run-worker #:watch.
   ;;

   (match (list (pipe) (pipe))
     (((go-in . go-out) (ping-in . ping-out))
      ;; The builder waits (at most 10 s) for a byte on GO; PROC writes a
      ;; byte to PING, which run-worker watches; the watch procedure lets
      ;; the builder go.  Without the watch, the builder gives up and fails.
      (let* ((worker  (make-worker))
             (goal    (worker-add-goal! worker (list (path "watched"))))
             (pings   0)
             (results
              (run-worker
               worker
               (lambda (goal)
                 (let ((pid (fork-builder
                             (lambda ()
                               (close-port go-out)
                               (and (match (select (list go-in) '() '() 10)
                                      (((_) _ _) #t)
                                      (_ #f))
                                    (write-output (path "watched") "x"))))))
                   (display "p" ping-out)
                   (force-output ping-out)
                   pid))
               #:watch
               (list (cons ping-in
                           (lambda (port)
                             (get-u8 port)
                             (set! pings (+ pings 1))
                             (display "g" go-out)
                             (force-output go-out)))))))
        (test-equal "#:watch: the procedure of a readable port is called"
          `(1 ((,goal . built)))
          (list pings results))
        (worker-close! worker)
        (for-each close-port (list go-in go-out ping-in ping-out)))))

   ;; A thunk: watch each builder's output pipe while it runs.  Each builder
   ;; says what it builds, then waits (at most 10 s) for the host to answer
   ;; on a second pipe, which the watch procedure does when it reads the
   ;; line; so the builders finish only if their pipes are watched.
   (let* ((worker  (make-worker #:max-jobs 2))
          (goals   (map (lambda (name)
                          (worker-add-goal! worker (list (path name))))
                        '("piped-a" "piped-b")))
          (pipes   '())                           ;goal -> (IN . GO)
          (lines   '())
          (asked   0)
          (results
           (run-worker
            worker
            (lambda (goal)
              (match (list (pipe) (pipe))
                (((in . out) (go-in . go-out))
                 (let ((pid (fork-builder
                             (lambda ()
                               (close-port in)
                               (close-port go-out)
                               (format out "building ~a~%"
                                       (basename (car (goal-outputs goal))))
                               (force-output out)
                               (and (match (select (list go-in) '() '() 10)
                                      (((_) _ _) #t)
                                      (_ #f))
                                    (write-output (car (goal-outputs goal))
                                                  "x"))))))
                   (close-port out)
                   (close-port go-in)
                   (set! pipes (acons goal (cons in go-out) pipes))
                   pid))))
            #:watch
            (lambda ()
              (set! asked (+ asked 1))
              (map (match-lambda
                     ((goal . (in . go))
                      (cons in
                            (lambda (port)
                              (let ((line (read-line port)))
                                (if (eof-object? line)
                                    (begin
                                      (close-port port)
                                      (close-port go)
                                      (set! pipes (alist-delete goal pipes)))
                                    (begin
                                      (set! lines (cons line lines))
                                      (display "go" go)
                                      (force-output go))))))))
                   pipes))
            #:on-exit
            (lambda (goal status)
              (match (assq-ref pipes goal)
                (#f #t)
                ((in . go)
                 (close-port in)
                 (close-port go)
                 (set! pipes (alist-delete goal pipes))))
              (if (zero? (status:exit-val status)) 'built 'failed)))))
     (test-equal "#:watch as a thunk: descriptors that come and go"
       '("building piped-a" "building piped-b")
       (sort lines string<?))
     (test-assert "…asked before each wait"
       (positive? asked))
     (test-equal "…and the goals were built"
       '(built built)
       (map (lambda (goal) (assq-ref results goal)) goals))
     (worker-close! worker))

   (let* ((worker (make-worker))
          (goal   (worker-add-goal! worker (list (path "bad-watch")))))
     (test-equal "a #:watch that is not a list of pairs is refused"
       '(invalid-argument invalid-argument)
       (list (error-status
              (lambda () (run-worker worker (const 'built) #:watch 'nope)))
             (error-status
              (lambda () (run-worker worker (const 'built)
                                     #:watch (list (cons "x" display)))))))
     (test-equal "…before any goal ran"
       #f (goal-outcome goal))
     (worker-close! worker))

   (match (pipe)
     ((in . out)
      (let* ((worker  (make-worker))
             (goal    (worker-add-goal! worker (list (path "watch-raises"))))
             (blocker (pipe))
             (pid     #f)
             (status
              (error-status
               (lambda ()
                 (run-worker worker
                             (lambda (goal)
                               (set! pid (fork-builder
                                          (lambda ()
                                            (close-port (cdr blocker))
                                            (read-char (car blocker)))))
                               (display "x" out)
                               (force-output out)
                               pid)
                             #:watch
                             (list (cons in (lambda (port)
                                              (raise-exception
                                               (make-exception-with-message
                                                "watch broke"))))))))))
        (test-equal "an exception from a watch procedure goes through run-worker"
          'other (if (pair? status) (car status) status))
        (test-equal "…the running goal is cancelled and its builder reaped"
          '(cancelled #f)
          (list (goal-outcome goal)
                (false-if-exception (waitpid pid WNOHANG))))
        (test-equal "…and its lock released"
          0 (held-path-count))
        (for-each close-port (list in out (car blocker) (cdr blocker)))
        (worker-close! worker))))

   (test-equal "nothing is held at the end"
     0 (held-path-count))))

(test-end "log")
