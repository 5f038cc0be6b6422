;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

;;; Usage: guile build-host.scm SCRIPT OUTPUT... [raise-on-sigint]
;;;
;;; A host for tests/scheme/supervisor.scm: for each OUTPUT (in a thread of
;;; its own when there are several), a worker with one build goal producing OUTPUT, run by
;;; 'run-worker', whose builder is /bin/sh running SCRIPT with OUTPUT as $1,
;;; started with 'spawn-builder' and writing to this process's standard
;;; output.  It prints (running PID) once a builder is started, and
;;; (finished OUTCOME) or (raised KEY HELD) when a 'run-worker' returns or
;;; raises, HELD being the number of paths this process still holds.  With
;;; raise-on-sigint, its own SIGINT handler raises an exception, as the
;;; REPL's does.

(use-modules (goalkeeper)
             (ice-9 match)
             (ice-9 threads))

(define (say . datum)
  (write datum)
  (newline)
  (force-output))

(define (build output script)
  (let ((worker (make-worker)))
    (worker-add-goal! worker (list output))
    (catch #t
      (lambda ()
        (match (run-worker worker
                           (lambda (goal)
                             (let ((pid (spawn-builder
                                         (list "/bin/sh" "-c" script
                                               "builder" output))))
                               (say 'running pid)
                               pid)))
          (((_ . outcome)) (say 'finished outcome))))
      (lambda (key . args)
        (say 'raised key (held-path-count))))))

(match (command-line)
  ((_ script . arguments)
   (when (member "raise-on-sigint" arguments)
     (sigaction SIGINT (lambda (signal) (throw 'user-interrupt signal))))
   (match (delete "raise-on-sigint" arguments)
     ((output) (build output script))             ;in the main thread
     (outputs
      (for-each join-thread
                (map (lambda (output)
                       (call-with-new-thread (lambda () (build output script))))
                     outputs))))))
